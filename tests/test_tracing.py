"""OpenTelemetry traces, end to end: a server configured by OTEL_* variables alone exports to a
real OTLP receiver on loopback (support/otlp.py, both protocols), and every inference API's span
is the caller's child, names the model and has the spans that break its time down."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from support.otlp import Receiver
from support.server import BIN_DIR, HALF_PLUS_TWO, ServerProcess, wait_for
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

SERVER, INTERNAL = 2, 1  # trace.proto's SpanKind
UNSET, ERROR = 0, 2


def _parent() -> tuple[str, str, str]:
    """A caller's trace: its trace id, its span id and the traceparent header naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(receiver, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("traced")
    env = receiver.env("grpc", OTEL_SERVICE_NAME="hpt-service", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")
    s = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}", "--access_log", "--log_format=json",
                      log_path=log_dir / "server.log", env=env).wait_ready()
    yield s
    s.stop()


def _server_span(receiver: Receiver, trace_id: str, name: str):
    spans = receiver.trace(trace_id, 2)
    found = [s for s in spans if s.kind == SERVER]
    assert len(found) == 1, spans
    span = found[0]
    assert span.name == name
    return span, [s for s in spans if s.parent_id == span.span_id]


def _check_model_span(receiver, trace_id, parent_id, name):
    span, children = _server_span(receiver, trace_id, name)
    assert span.parent_id == parent_id
    assert span.attributes["pyserving.model.name"] == "hpt"
    assert span.attributes["pyserving.model.version"] == 123
    assert span.attributes["pyserving.outcome"] == "OK"
    assert span.status == UNSET
    assert span.flags & 0x300 == 0x300, "the parent is remote"
    assert "pyserving.run" in {c.name for c in children}
    for child in children:
        assert span.start <= child.start <= child.end <= span.end, (span, child)
    assert span.resource["service.name"] == "hpt-service"
    assert span.resource["deployment.environment"] == "test"
    return span, children


def test_a_rest_predict_is_a_child_of_the_callers_span(server, receiver):
    trace_id, parent, header = _parent()
    answer = server.post("/v1/models/hpt:predict", json={"instances": [1.0, 2.0]}, headers={"traceparent": header})
    assert answer.json() == {"predictions": [2.5, 3.0]}
    span, _ = _check_model_span(receiver, trace_id, parent, "POST /v1/models/{model_name}:predict")
    assert span.attributes["http.route"] == "/v1/models/{model_name}:predict"
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.path"] == "/v1/models/hpt:predict"
    # The access log's line for this request names the trace and the server span.
    wait_for(lambda: trace_id in server.log(), 10, "the access line")
    line = next(json.loads(x) for x in server.log().splitlines() if trace_id in x and '"pyserving.access"' in x)
    assert (line["trace_id"], line["span_id"]) == (trace_id, span.span_id)


def test_a_grpc_predict_and_metadata_call_are_children_of_the_callers_span(server, receiver):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    trace_id, parent, header = _parent()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    request.inputs["x"].CopyFrom(__import__("tensorflow").make_tensor_proto([1.0], shape=[1]))
    stub.Predict(request, timeout=30, metadata=(("traceparent", header),))
    span, _ = _check_model_span(receiver, trace_id, parent, "tensorflow.serving.PredictionService/Predict")
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.method"] == "Predict"
    assert span.attributes["rpc.grpc.status_code"] == 0

    trace_id, parent, header = _parent()
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "hpt"
    stub.GetModelMetadata(metadata, timeout=30, metadata=(("traceparent", header),))
    wait_for(lambda: receiver.of(trace_id), 20, "the metadata call's span")
    (span,) = receiver.of(trace_id)
    assert span.name == "tensorflow.serving.PredictionService/GetModelMetadata"
    assert span.parent_id == parent and span.attributes["pyserving.model.name"] == "hpt"


def test_open_inference_calls_over_rest_and_grpc_are_traced(server, receiver):
    data = np.array([[1.0], [2.0]], dtype=np.float32)
    trace_id, parent, header = _parent()
    http = triton_http.InferenceServerClient(server.rest_url[len("http://"):])
    tensor = triton_http.InferInput("x", [2, 1], "FP32")
    tensor.set_data_from_numpy(data)
    assert http.infer("hpt", [tensor], headers={"traceparent": header}).as_numpy("y").ravel().tolist() == [2.5, 3.0]
    span, _ = _check_model_span(receiver, trace_id, parent, "POST /v2/models/{name}/infer")
    assert span.attributes["pyserving.api"] == "infer"

    trace_id, parent, header = _parent()
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    tensor = triton_grpc.InferInput("x", [2, 1], "FP32")
    tensor.set_data_from_numpy(data)
    client.infer("hpt", [tensor], headers={"traceparent": header})
    _check_model_span(receiver, trace_id, parent, "inference.GRPCInferenceService/ModelInfer")


def test_an_untraced_request_starts_its_own_trace_and_health_checks_make_none(server, receiver):
    for path in ("/healthz", "/readyz", "/v2/health/ready", "/v1/models/hpt", "/"):
        server.get(path)
    marker = "/v1/models/hpt/versions/123:predict"
    assert server.post(marker, json={"instances": [1.0]}).ok
    wait_for(lambda: receiver.where(lambda s: s.attributes.get("url.path") == marker), 20, "the untraced span")
    (span,) = receiver.where(lambda s: s.attributes.get("url.path") == marker)
    assert span.parent_id == "" and span.flags & 0x100 and not span.flags & 0x200
    assert span.name == "POST /v1/models/{model_name}/versions/{version}:predict"
    # Exports arrive in the order requests ended: the checks before it would be here by now.
    paths = {s.attributes.get("url.path") for s in receiver.spans}
    assert not paths & {"/healthz", "/readyz", "/v2/health/ready", "/v1/models/hpt", "/"}


def test_a_refused_request_says_why_without_an_error_status(server, receiver):
    """A client's mistake is the outcome (INVALID_ARGUMENT, 400), not the server's error."""
    trace_id, _, header = _parent()
    answer = server.post("/v1/models/hpt:predict", json={"instances": ["one"]}, headers={"traceparent": header})
    assert answer.status_code == 400
    wait_for(lambda: receiver.of(trace_id), 20, "the refused request's span")
    span = next(s for s in receiver.of(trace_id) if s.kind == SERVER)
    assert span.attributes["http.response.status_code"] == 400
    assert span.attributes["pyserving.outcome"] == "INVALID_ARGUMENT"
    assert span.status == UNSET

    trace_id, _, header = _parent()
    assert server.post("/v1/models/nope:predict", json={"instances": [1.0]},
                       headers={"traceparent": header}).status_code == 404
    wait_for(lambda: receiver.of(trace_id), 20, "the unknown model's span")
    span = next(s for s in receiver.of(trace_id) if s.kind == SERVER)
    assert span.attributes["pyserving.model.name"] == "(unknown)"  # a client's string is never a label


def test_http_protobuf_sampling_batches_and_workers(receiver, tmp_path):
    """OTLP over HTTP; a ratio of 0 samples only what the caller sampled (parent-based); every
    worker of --num_workers exports as its own instance; a batched run shows its batch."""
    env = receiver.env("http/protobuf", OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
    before = receiver.exports["http/protobuf"]
    server = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}", "--num_workers=2",
                           "--enable_batching", log_path=tmp_path / "server.log", env=env).wait_ready()
    try:
        traces = []

        def both_workers() -> bool:
            trace_id, _, header = _parent()
            traces.append(trace_id)
            server.post("/v1/models/hpt:predict", json={"instances": [1.0]}, headers={"traceparent": header})
            server.post("/v1/models/hpt:predict", json={"instances": [1.0]})  # sampled out: ratio 0
            ids = {s.resource["service.instance.id"] for s in receiver.where(lambda s: s.trace_id in traces)}
            return len(ids) == 2
        wait_for(both_workers, 60, "spans from both workers", interval=0.2)
        spans = receiver.where(lambda s: s.trace_id in traces)
        assert {s.resource["pyserving.worker"] for s in spans} == {0, 1}
        assert receiver.exports["http/protobuf"] > before
        batch = [s for s in spans if s.name == "pyserving.batch_wait"]
        assert batch and all(s.attributes["pyserving.batch.size"] >= 1 for s in batch)
        assert not receiver.where(lambda s: s.kind == SERVER and s.parent_id == "" and s.trace_id not in traces
                                  and s.attributes.get("url.path") == "/v1/models/hpt:predict"), "ratio 0 sampled"
    finally:
        server.stop()


def test_without_otel_variables_nothing_of_the_sdk_is_imported(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    server = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}", log_path=tmp_path / "server.log",
                           env=env).wait_ready()
    try:
        assert server.post("/v1/models/hpt:predict", json={"instances": [1.0]}).ok
    finally:
        server.stop()
    log = server.log()
    assert "import time:" in log and "pyserving.observability.tracing" in log
    assert "opentelemetry" not in log


@pytest.mark.parametrize("env, message", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: pyserving exports traces over OTLP only"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_PROTOCOL=http/json: pyserving's OTLP exporter speaks grpc or http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "SHADOW": "1"},
     "the OpenTelemetry SDK is not installed (opentelemetry.sdk): pip install 'pyserving[otel]'"),
])
def test_tracing_it_cannot_do_ends_the_start_in_one_line(env, message, tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if env.pop("SHADOW", None):  # a regular package named opentelemetry hides the installed SDK
        (tmp_path / "opentelemetry").mkdir()
        (tmp_path / "opentelemetry" / "__init__.py").write_text("")
        environ["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), "--model_name=hpt",
                             f"--model_base_path={HALF_PLUS_TWO}", "--port=1"], env={**environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "pyserving" in line or "OTEL" in line]
    assert any(message in line for line in lines), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_regress_is_traced_and_a_clients_signature_name_is_no_attribute(server, receiver):
    from tensorflow_serving.apis import regression_pb2

    trace_id, parent, header = _parent()
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "hpt", "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(3.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    assert stub.Regress(request, timeout=30, metadata=(("traceparent", header),)).result.regressions[0].value == 3.5
    span, children = _check_model_span(receiver, trace_id, parent, "tensorflow.serving.PredictionService/Regress")
    assert span.attributes["pyserving.api"] == "regress"
    assert span.attributes["pyserving.model.signature"] == "regress_x_to_y"

    trace_id, _, header = _parent()
    made_up = "sig" * 2000
    answer = server.post("/v1/models/hpt:predict", json={"signature_name": made_up, "instances": [1.0]},
                         headers={"traceparent": header})
    assert answer.status_code == 400
    wait_for(lambda: receiver.of(trace_id), 20, "the made-up signature's span")
    span = next(s for s in receiver.of(trace_id) if s.kind == SERVER)
    assert span.attributes["pyserving.model.signature"] == "(unknown)"
    assert span.attributes["pyserving.outcome"] == "FAILED_PRECONDITION"
