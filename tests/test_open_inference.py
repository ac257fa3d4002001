"""The Open Inference Protocol (KServe V2) beside TF Serving's API, on the same two ports, driven
by Triton's clients (tritonclient: HTTP with JSON and with binary tensors, and gRPC) against TF
Serving's half_plus_two (version 123) and the tutorial's MNIST export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
import requests
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families
from support import models
from support.server import HALF_PLUS_TWO, ServerProcess, model_config
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist

KSERVE_PYTHON = Path(__file__).resolve().parents[1] / ".tools" / "kserve-venv" / "bin" / "python"
X = np.array([[1.0], [2.0], [5.0]], np.float32)
BINARY_HEADER = json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                                        "parameters": {"binary_data_size": 12}}]})
Y = [[2.5], [3.0], [4.5]]


@pytest.fixture(scope="module")
def images(mnist_dir):
    data = load_mnist(mnist_dir)
    return data, data.test_images[:16].reshape(16, 784).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("v2")
    export_mnist(str(root / "mnist"), 1, images[0], training_iteration=100)
    models.export_dtypes(str(root / "dtypes" / "1"))
    config = root / "models.config"
    config.write_text(model_config({"hpt": str(HALF_PLUS_TWO), "mnist": str(root / "mnist"),
                                    "dtypes": str(root / "dtypes")}))
    (root / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }')
    server = ServerProcess(f"--model_config_file={config}", "--access_log", "--rest_api_enable_model_control",
                           f"--monitoring_config_file={root / 'monitoring.config'}",
                           log_path=root / "server.log").wait_ready()
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


@pytest.fixture(scope="module")
def http(server):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def _http_input(name: str, array: np.ndarray, binary: bool, datatype: str = "FP32"):
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _grpc_input(name: str, array: np.ndarray, datatype: str = "FP32"):
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


# ---- health and metadata ---------------------------------------------------------------------

def test_health_over_both_protocols(server, http, grpc_client):
    assert http.is_server_live() and http.is_server_ready()
    assert http.get_model_repository_index()  # (an index listing: open, like model status)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    for client in (http, grpc_client):
        assert client.is_model_ready("hpt") and client.is_model_ready("hpt", "123")
        assert not client.is_model_ready("hpt", "7")  # a version that isn't served
    # KServe's REST client reads a JSON body from the health endpoints.
    assert requests.get(f"{server.rest_url}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{server.rest_url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{server.rest_url}/v2/models/hpt/ready", timeout=10).json() == {"name": "hpt", "ready": True}


def test_server_and_model_metadata(http, grpc_client):
    server = http.get_server_metadata()
    assert server["name"] == "pyserving" and "binary_tensor_data" in server["extensions"]
    assert grpc_client.get_server_metadata(as_json=True)["extensions"] == server["extensions"]
    expected = {"name": "hpt", "versions": ["123"], "platform": "tensorflow_savedmodel",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}
    assert http.get_model_metadata("hpt") == expected
    assert http.get_model_metadata("hpt", "123") == expected
    over_grpc = grpc_client.get_model_metadata("hpt", as_json=True)
    assert over_grpc["versions"] == ["123"] and over_grpc["inputs"][0] == {
        "name": "x", "datatype": "FP32", "shape": ["-1", "1"]}  # int64 as JSON strings, protobuf's way


# ---- inference -----------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_half_plus_two_over_http(http, binary):
    output = triton_http.InferRequestedOutput("y", binary_data=binary)
    result = http.infer("hpt", [_http_input("x", X, binary)], outputs=[output])
    assert result.as_numpy("y").tolist() == Y
    response = result.get_response()
    assert response["model_name"] == "hpt" and response["model_version"] == "123"
    assert ("data" in response["outputs"][0]) != binary
    # No outputs named: all of them, as binary data (tritonclient asks for binary_data_output).
    assert http.infer("hpt", [_http_input("x", X, binary)], model_version="123").as_numpy("y").tolist() == Y


def test_infer_half_plus_two_over_grpc(grpc_client):
    result = grpc_client.infer("hpt", [_grpc_input("x", X)], request_id="r-1")
    assert result.as_numpy("y").tolist() == Y
    response = result.get_response()
    assert response.model_version == "123" and response.id == "r-1"


def test_nested_json_data_and_request_id(server):
    body = {"id": "abc", "inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [[1], [2], [5]]}]}
    r = requests.post(f"{server.rest_url}/v2/models/hpt/versions/123/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "hpt", "model_version": "123", "id": "abc",
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 1], "data": [2.5, 3.0, 4.5]}]}


def test_mnist_signature_through_parameters_answers_as_predict(server, http, grpc_client, images):
    """V2 and TF Serving's Predict reach the same model: the same scores for the same images."""
    _, batch = images
    parameters = {"signature_name": "predict_images"}
    over_http = http.infer("mnist", [_http_input("images", batch, True)], parameters=parameters).as_numpy("scores")
    over_grpc = grpc_client.infer("mnist", [_grpc_input("images", batch)], parameters=parameters).as_numpy("scores")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = "predict_images"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch))
    with server.channel() as channel:
        predicted = tf.make_ndarray(prediction_service_pb2_grpc.PredictionServiceStub(channel)
                                    .Predict(request, 30).outputs["scores"])
    assert over_http.shape == (16, 10)
    np.testing.assert_array_equal(over_http, predicted)
    np.testing.assert_array_equal(over_grpc, predicted)


def test_kserve_clients(server):
    """KServe's InferenceRESTClient and InferenceGRPCClient: health, readiness, JSON and binary
    infer, the MNIST signature through parameters, a wrong datatype and an unknown model."""
    assert KSERVE_PYTHON.exists(), "KServe's clients are missing: `make test` installs them (tools/ensure-python-client.sh)"
    script = Path(__file__).resolve().parent / "support" / "kserve_client.py"
    out = subprocess.run([str(KSERVE_PYTHON), str(script), server.rest_url, server.grpc_target],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["rest_live"] is True and found["rest_ready"] is True and found["rest_model_ready"] is True
    assert found["rest_unknown_model_ready"] is False
    assert found["rest_infer_binary_False"] == Y and found["rest_infer_binary_True"] == Y
    assert found["rest_mnist_scores_shape"] == [2, 10] and found["grpc_mnist_scores_shape"] == [2, 10]
    assert found["rest_wrong_datatype"][0] == 400 and "expects FP32" in found["rest_wrong_datatype"][1]
    assert found["grpc_live"] is True and found["grpc_ready"] is True and found["grpc_model_ready"] is True
    assert found["grpc_infer"] == Y and found["grpc_unknown_model"] == "NOT_FOUND"


# Every V2 datatype through a model that echoes it (support.models.export_dtypes: id_<dtype>).
DATATYPES = {"BOOL": ("bool", np.array([True, False])), "UINT8": ("uint8", np.array([0, 255], np.uint8)),
             "UINT16": ("uint16", np.array([0, 65535], np.uint16)),
             "UINT32": ("uint32", np.array([0, 2**32 - 1], np.uint32)),
             "UINT64": ("uint64", np.array([0, 2**64 - 1], np.uint64)),
             "INT8": ("int8", np.array([-128, 127], np.int8)), "INT16": ("int16", np.array([-3, 32767], np.int16)),
             "INT32": ("int32", np.array([-2**31, 7], np.int32)), "INT64": ("int64", np.array([-2**63, 2**62], np.int64)),
             "FP16": ("half", np.array([1.5, -2.25], np.float16)), "FP32": ("float", np.array([1.5, -2.5], np.float32)),
             "FP64": ("double", np.array([1e300, -2.5], np.float64)),
             "BF16": ("bfloat16", np.array([1.0, -2.5], ml_dtypes.bfloat16)),
             "BYTES": ("string", np.array([b"caf\xc3\xa9", b""], dtype=object))}


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips(http, grpc_client, datatype):
    signature, array = DATATYPES[datatype]
    parameters = {"signature_name": f"id_{signature}"}
    answers = []
    for binary in (True, False):
        if not binary and datatype in ("BF16",):  # tritonclient writes BF16 only as binary
            continue
        tensor = _http_input("x", array, binary, datatype)
        result = http.infer("dtypes", [tensor], parameters=parameters,
                            outputs=[triton_http.InferRequestedOutput("y", binary_data=binary)])
        answers.append(result.as_numpy("y"))
        assert result.get_response()["outputs"][0]["datatype"] == datatype
    result = grpc_client.infer("dtypes", [_grpc_input("x", array, datatype)], parameters=parameters)
    answers.append(result.as_numpy("y"))
    assert result.get_response().outputs[0].datatype == datatype
    for answer in answers:  # (tritonclient gives JSON BYTES back as str)
        assert [v.encode() if isinstance(v, str) else v for v in answer.tolist()] == array.tolist(), (datatype, answer)


def test_metadata_leaves_out_types_v2_cannot_carry(http):
    signatures = http.get_model_metadata("dtypes")  # serving_default is absent: no tensors described
    assert signatures["platform"] == "tensorflow_savedmodel" and signatures["inputs"] == []
    with pytest.raises(InferenceServerException) as info:
        http.infer("dtypes", [_http_input("x", X, True)], parameters={"signature_name": "id_complex64"})
    assert info.value.status() == "400"


def test_v2_calls_are_in_the_metrics_and_the_access_log(server, http, grpc_client):
    http.infer("hpt", [_http_input("x", X, True)])
    grpc_client.infer("hpt", [_grpc_input("x", X)])
    text = requests.get(f"{server.rest_url}/metrics", timeout=30).text
    counted = {s.labels["entrypoint"]: s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == ":tensorflow:serving:request_latency_count"
               and s.labels.get("model_name") == "hpt" and s.labels.get("API") == "infer"}
    assert counted.get("GRPC", 0) >= 1 and counted.get("REST", 0) >= 1, counted
    log = server.log()
    assert "REST infer model=hpt version=123 status=OK" in log and "GRPC infer model=hpt version=123 status=OK" in log


# ---- bad requests: 4xx and the matching gRPC codes, the server unharmed ----------------------

def test_wrong_datatype_unknown_model_and_unknown_input(http, grpc_client):
    cases = [  # (model, input name, array, datatype, HTTP status, gRPC code, words)
        ("hpt", "x", X.astype(np.float64), "FP64", 400, "INVALID_ARGUMENT", "expects FP32"),
        ("nope", "x", X, "FP32", 404, "NOT_FOUND", "nope"),
        ("hpt", "z", X, "FP32", 400, "INVALID_ARGUMENT", "Unexpected inference input 'z'"),
    ]
    for model, name, array, datatype, status, code, words in cases:
        with pytest.raises(InferenceServerException) as info:
            http.infer(model, [_http_input(name, array, False, datatype)])
        assert info.value.status() == str(status) and words in info.value.message(), info.value
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer(model, [_grpc_input(name, array, datatype)])
        assert info.value.status() == f"StatusCode.{code}" and words in info.value.message(), info.value
    with pytest.raises(InferenceServerException) as info:
        grpc_client.is_model_ready("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert http.infer("hpt", [_http_input("x", X, True)]).as_numpy("y").tolist() == Y


@pytest.mark.parametrize("body,headers,words", [
    (b"{not json", {}, "JSON"),
    (json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}), {}, "2 values"),
    (json.dumps({"inputs": [{"name": "x", "shape": [-3], "datatype": "FP32", "data": []}]}), {}, "negative"),
    (json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP33", "data": [1, 2, 3]}]}), {}, "datatype"),
    (json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": ["a", "b", "c"]}]}), {},
     "numbers"),
    (json.dumps({"inputs": [{"name": "x", "shape": [2**40, 2**40], "datatype": "FP32", "data": [1]}]}), {},
     "too large"),
    (json.dumps({"inputs": "x"}), {}, "inputs"),
    (BINARY_HEADER + "short", {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}, "binary_data_size"),
    (BINARY_HEADER + "x" * 16, {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}, "belong to no input"),
    (json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}),
     {"Inference-Header-Content-Length": "99999"}, "Inference-Header-Content-Length"),
], ids=["json", "count", "negative", "datatype", "strings", "huge", "inputs", "binary-short", "binary-long",
        "header-length"])
def test_malformed_infer_bodies_are_400(server, body, headers, words):
    r = requests.post(f"{server.rest_url}/v2/models/hpt/infer", data=body, timeout=30,
                      headers={"Content-Type": "application/json", **headers})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def test_raw_grpc_input_of_the_wrong_size_is_invalid(server):
    """A raw tensor whose bytes don't match its shape: INVALID_ARGUMENT, before any allocation."""
    request = triton_grpc.service_pb2.ModelInferRequest(model_name="hpt")
    request.inputs.add(name="x", datatype="FP32", shape=[3, 1])
    request.raw_input_contents.append(b"\x00" * 11)
    with grpc.insecure_channel(server.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=triton_grpc.service_pb2.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            infer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "11 bytes" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff garbage", timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- the model repository extension: index, unload, load ---------------------------------------

def _index(client) -> dict[tuple[str, str], str]:
    return {(e["name"], e["version"]): e["state"] for e in client.get_model_repository_index()}


def test_repository_index_unload_then_load(server, http, grpc_client):
    """Unload takes every version of a configured model away until a load names it again; load
    answers once the model serves. Both protocols, one state."""
    assert _index(http) == {("hpt", "123"): "READY", ("mnist", "1"): "READY", ("dtypes", "1"): "READY"}
    over_grpc = {(e.name, e.version): e.state for e in grpc_client.get_model_repository_index().models}
    assert over_grpc == _index(http)

    http.unload_model("hpt")
    assert not http.is_model_ready("hpt") and not grpc_client.is_model_ready("hpt")
    assert _index(http)[("hpt", "")] == "UNAVAILABLE"
    assert [e["name"] for e in http.get_model_repository_index()] == ["dtypes", "hpt", "mnist"]
    with pytest.raises(InferenceServerException) as info:
        http.infer("hpt", [_http_input("x", X, True)])
    assert info.value.status() == "404"
    assert http.infer("mnist", [_http_input("images", np.zeros((1, 784), np.float32), True)],
                      parameters={"signature_name": "predict_images"}).as_numpy("scores").shape == (1, 10)
    with pytest.raises(grpc.RpcError) as error:  # TF Serving's API sees it gone too
        with server.channel() as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "hpt"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    grpc_client.load_model("hpt")  # answers once AVAILABLE
    assert http.is_model_ready("hpt") and _index(http)[("hpt", "123")] == "READY"
    assert http.infer("hpt", [_http_input("x", X, True)]).as_numpy("y").tolist() == Y

    for client, code in ((http, "404"), (grpc_client, "StatusCode.NOT_FOUND")):
        with pytest.raises(InferenceServerException) as info:
            client.load_model("not_configured")
        assert info.value.status() == code


def test_repository_changes_are_locked_by_the_admin_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    server = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}", f"--admin_token_file={token}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
        grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
        assert _index(http) == {("hpt", "123"): "READY"}  # the index changes nothing: open
        with pytest.raises(InferenceServerException) as info:
            http.unload_model("hpt")
        assert info.value.status() == "401" and "control-plane call" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            grpc_client.unload_model("hpt", headers={"authorization": "Bearer wrong"})
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert http.is_model_ready("hpt")
        grpc_client.unload_model("hpt", headers={"authorization": "Bearer s3cret"})
        assert not http.is_model_ready("hpt")
        http.load_model("hpt", headers={"Authorization": "Bearer s3cret"})
        assert http.infer("hpt", [_http_input("x", X, True)]).as_numpy("y").tolist() == Y
    finally:
        assert server.stop() == 0
