"""Prometheus metrics with TF Serving's names, scraped and parsed with prometheus_client."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from support import models
from support.server import ServerProcess, serve_models
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitored")
    (root / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true, path: "{PATH}" }}')
    server = serve_models(root, {"tf1": models.export_tf1_half_plus_two, "ex": models.export_tf1_examples},
                          f"--monitoring_config_file={root / 'monitoring.config'}")
    yield server, root
    assert server.stop() == 0


def scrape(server) -> dict[str, list]:
    r = server.get(PATH)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(r.text):
        families[family.name] = family.samples
    return families


def value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_request_counts_and_latency_by_entrypoint(server):
    server, _ = server
    before = scrape(server)
    ok_before = value(before.get(":tensorflow:serving:request_count", []),
                      ":tensorflow:serving:request_count_total", model_name="tf1", status="OK")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(3):
            stub.Predict(request, 10)
        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = "tf1"
        bad.inputs["nope"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
        with pytest.raises(grpc.RpcError):
            stub.Predict(bad, 10)
    for _ in range(2):
        assert server.post("/v1/models/tf1:predict", json={"instances": [[1.0]]}).status_code == 200

    after = scrape(server)
    counts = after[":tensorflow:serving:request_count"]
    assert value(counts, ":tensorflow:serving:request_count_total", model_name="tf1", status="OK") == ok_before + 5
    assert value(counts, ":tensorflow:serving:request_count_total", model_name="tf1",
                 status="INVALID_ARGUMENT") >= 1
    latency = after[":tensorflow:serving:request_latency"]
    grpc_count = value(latency, ":tensorflow:serving:request_latency_count",
                       model_name="tf1", API="predict", entrypoint="GRPC")
    rest_count = value(latency, ":tensorflow:serving:request_latency_count",
                       model_name="tf1", API="predict", entrypoint="REST")
    assert grpc_count >= 4 and rest_count >= 2
    assert value(latency, ":tensorflow:serving:request_latency_sum", model_name="tf1", entrypoint="GRPC") > 0
    runtime = after[":tensorflow:serving:runtime_latency"]
    assert value(runtime, ":tensorflow:serving:runtime_latency_count", model_name="tf1", API="predict") >= 5


def test_example_counts_and_per_version_metrics(server):
    server, _ = server
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "regress"
    for x in (1.0, 2.0, 3.0):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    with server.channel() as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(request, 10)
    metrics = scrape(server)
    assert value(metrics[":tensorflow:serving:request_example_counts"],
                 ":tensorflow:serving:request_example_counts_sum", model="ex") >= 3
    # exposed as :tensorflow:serving:request_example_count_total, TF Serving's name
    assert value(metrics[":tensorflow:serving:request_example_count"],
                 ":tensorflow:serving:request_example_count_total", model="ex") >= 3
    assert value(metrics[":pyserving:version_request_count"], ":pyserving:version_request_count_total",
                 model_name="ex", version="1", API="regress") >= 1
    assert value(metrics[":pyserving:model_version_available"], ":pyserving:model_version_available",
                 model_name="tf1", version="1", state="AVAILABLE") == 1


def test_model_load_metrics(server):
    server, root = server
    metrics = scrape(server)
    attempts = metrics[":tensorflow:cc:saved_model:load_attempt_count"]
    assert value(attempts, ":tensorflow:cc:saved_model:load_attempt_count_total",
                 model_path=str(root / "tf1" / "1"), status="success") == 1
    assert value(metrics[":tensorflow:cc:saved_model:load_latency"],
                 ":tensorflow:cc:saved_model:load_latency_total", model_path=str(root / "ex" / "1")) > 0


def test_exposition_uses_tf_serving_counter_names(server):
    server, _ = server
    text = server.get(PATH).text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ":tensorflow:serving:request_count{" in text
    assert "_created" not in text and "request_count_total" not in text
    assert "# TYPE :tensorflow:serving:request_example_count_total counter" in text
    # Bucket bounds as TF Serving prints them (absl::StrCat of the double: six significant digits).
    assert 'le="32.4"' in text and 'le="1.47476e+09"' in text and 'le="+Inf"' in text
    assert "32.400000000000006" not in text


def test_metrics_off_without_config(tmp_path):
    models.export_tf1_half_plus_two(str(tmp_path / "tf1" / "1"))
    server = ServerProcess("--model_name=tf1", f"--model_base_path={tmp_path / 'tf1'}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        r = server.get(PATH)
        assert r.status_code == 404 and "--monitoring_config_file" in r.json()["error"], r.text
    finally:
        assert server.stop() == 0


def test_malformed_monitoring_config_exits(tmp_path):
    import subprocess

    from support.server import BIN_DIR
    bad = tmp_path / "monitoring.config"
    bad.write_text("prometheus_config { enable: maybe }")
    out = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), "--model_base_path=/m",
                          f"--monitoring_config_file={bad}"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Error parsing text-format tensorflow.serving.MonitoringConfig" in out.stderr


def test_process_build_and_signature_metrics(server):
    """The metrics every Python service has (the process's CPU, memory and fds, labelled with its
    worker), the build, and requests per signature beside TF Serving's per-model counts."""
    server, _ = server
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    before = scrape(server)
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(request, 10)
        request.model_spec.signature_name = "no-such-signature"
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, 10)
    after = scrape(server)
    assert value(after["process_cpu_seconds"], "process_cpu_seconds_total", worker="0") > 0
    assert value(after["process_resident_memory_bytes"], "process_resident_memory_bytes", worker="0") > 100e6
    assert value(after["process_open_fds"], "process_open_fds", worker="0") > 5
    (build,) = after[":pyserving:build_info"]
    assert build.value == 1 and build.labels["tensorflow"] == tf.__version__ and build.labels["version"]
    counts = ":pyserving:signature_request_count"

    def signature_count(families, **labels) -> float:
        return value(families.get(counts, []), counts + "_total", model_name="tf1", API="predict", **labels)
    assert signature_count(after, signature_name="serving_default", status="OK") == \
        signature_count(before, signature_name="serving_default", status="OK") + 1
    # A client's made-up signature is never a label: it counts as "(unknown)".
    assert signature_count(after, signature_name="(unknown)", status="FAILED_PRECONDITION") >= 1
    assert not [s for s in after[counts] if s.labels["signature_name"] == "no-such-signature"]
    latency = after[":pyserving:signature_request_latency"]
    assert value(latency, ":pyserving:signature_request_latency_count", model_name="tf1",
                 signature_name="serving_default") >= 1
