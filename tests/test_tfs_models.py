"""TF Serving's own test models (../shared/tfs-testdata), served in place, answer as TF Serving does.

The expected answers are TF Serving's: its README quickstart, the REST and gRPC cases of
tensorflow_model_server_test.py, and the metadata JSON files beside the models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from support.server import ServerProcess, model_config, wait_for
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata"
HALF_PLUS_TWO_VARIANTS = ["saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu",
                          "saved_model_half_plus_two_mkl", "saved_model_half_plus_two_mlmd",
                          "saved_model_half_plus_two_cpu_with_saved_model_config",
                          "saved_model_half_plus_two_cpu_with_empty_saved_model_config",
                          # pinned to /device:GPU:0; soft placement runs them on this CPU host
                          "saved_model_half_plus_two_gpu", "saved_model_half_plus_two_gpu_trt"]
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs_models")
    # A base path whose version 1 is TF Serving's good model; the bad one arrives later as version 2.
    rollout = root / "rollout"
    rollout.mkdir()
    os.symlink(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", rollout / "1")
    paths = {name: str(TESTDATA / name) for name in HALF_PLUS_TWO_VARIANTS}
    paths.update({"default": str(TESTDATA / "saved_model_half_plus_two_cpu"),
                  TWO_VERSIONS: str(TESTDATA / TWO_VERSIONS),
                  "half_plus_three": str(TESTDATA / "saved_model_half_plus_three"),
                  "counter": str(TESTDATA / "saved_model_counter"),
                  "rollout": str(rollout)})
    config = root / "models.config"
    config.write_text(model_config(paths, {TWO_VERSIONS: "model_version_policy { all {} }"}))
    server = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0",
                           log_path=root / "server.log").wait_ready()
    channel = server.channel()
    yield (server, prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel), rollout)
    channel.close()
    assert server.stop() == 0


@pytest.mark.parametrize("name", HALF_PLUS_TWO_VARIANTS)
def test_readme_quickstart(served, name):
    server = served[0]
    r = server.post(f"/v1/models/{name}:predict", json={"instances": [1.0, 2.0, 5.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_gpu_pinned_export_is_said_to_run_on_cpu(served):
    assert "saved_model_half_plus_two_gpu/00000123 places ops on /device:GPU:0" in served[0].log()


def test_rest_cases_of_tf_servings_own_tests(served):
    server = served[0]
    r = server.post("/v1/models/default:predict", json={"inputs": [2.0, 3.0, 4.0]})
    assert r.json() == {"outputs": [3.0, 3.5, 4.0]}
    r = server.post("/v1/models/default:classify", json={"signature_name": "classify_x_to_y",
                                                         "examples": [{"x": 2.0}]})
    assert r.json() == {"results": [[["", 3.0]]]}
    r = server.post("/v1/models/default:regress", json={"signature_name": "regress_x_to_y",
                                                        "examples": [{"x": 2.0}]})
    assert r.json() == {"results": [3.0]}
    # regress_x2_to_y3 takes floats, not tf.Examples: Predict runs it (y3 = 0.5 * x2 + 3).
    r = server.post("/v1/models/default:predict", json={"signature_name": "regress_x2_to_y3",
                                                        "instances": [[4.0]]})
    assert r.json() == {"predictions": [[5.0]]}
    assert server.get("/v1/models/default").json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.mark.parametrize("name,version,expected_file", [
    ("default", 123, "half_plus_two_model_metadata.json"),
    (TWO_VERSIONS, 123, "saved_model_half_plus_two_2_versions_metadata.json"),
    ("saved_model_half_plus_two_tf2_cpu", 123, "saved_model_half_plus_two_tf2_2_versions_metadata.json"),
])
def test_metadata_equals_tf_servings_answer(served, name, version, expected_file):
    server, predict, _, _ = served
    expected = json.loads((TESTDATA / expected_file).read_text())
    expected["model_spec"]["name"] = name  # TF Serving's file names the model it was served as
    r = server.get(f"/v1/models/{name}/versions/{version}/metadata")
    assert r.status_code == 200, r.text
    got = r.json()
    if "tf2" in expected_file:
        # TF Serving's file is the answer for its test export saved_model_half_plus_two_tf2_2_versions,
        # which stores no default inputs; tf2_cpu stores x's default ([0.0]) and we return it as stored.
        sigs = got["metadata"]["signature_def"]["signature_def"]
        assert sigs["serving_default"]["defaults"]["x"]["float_val"] == [0.0]
        for sig in [*sigs.values(), *expected["metadata"]["signature_def"]["signature_def"].values()]:
            sig.pop("defaults", None)
    assert got == expected
    # gRPC packs the same SignatureDefMap.
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    request.model_spec.version.value = version
    response = predict.GetModelMetadata(request, 10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == set(expected["metadata"]["signature_def"]["signature_def"])


def _predict(name: str, inputs: dict, signature: str = "", version: int | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def _example_input(request, **features: float) -> None:
    example = request.input.example_list.examples.add()
    for key, value in features.items():
        example.features.feature[key].float_list.value.append(value)


def test_grpc_cases_of_tf_servings_own_tests(served):
    _, predict, _, _ = served
    response = predict.Predict(_predict("default", {"x": np.array([2.0], np.float32)}), 10)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.version.value == 123
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "classify_x_to_y"
    _example_input(request, x=2.0)
    assert predict.Classify(request, 10).result.classifications[0].classes[0].score == 3.0
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "regress_x_to_y"
    _example_input(request, x=2.0)
    assert predict.Regress(request, 10).result.regressions[0].value == 3.0
    # regress_x2_to_y3 takes floats: the graph refuses the serialized examples, with TF's reason.
    request.model_spec.signature_name = "regress_x2_to_y3"
    with pytest.raises(grpc.RpcError) as info:
        predict.Regress(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Type mismatch: actual string vs. expect float" in info.value.details()


def test_two_versions_both_served(served):
    _, predict, _, _ = served
    for version in (123, 124):
        response = predict.Predict(_predict(TWO_VERSIONS, {"x": np.array([[2.0]], np.float32)},
                                            version=version), 10)
        assert response.model_spec.version.value == version
        assert list(response.outputs["y"].float_val) == [3.0]
    latest = predict.Predict(_predict(TWO_VERSIONS, {"x": np.array([[2.0]], np.float32)}), 10)
    assert latest.model_spec.version.value == 124


def test_half_plus_three_with_assets_and_parse_example(served):
    """A TF1 export that tf.saved_model.load cannot load (ParseExample over a scalar string)."""
    server, predict, _, _ = served
    r = server.post("/v1/models/half_plus_three:predict", json={"instances": [[1.0], [2.0], [5.0]]})
    assert r.json() == {"predictions": [[3.5], [4.0], [5.5]]}
    # Its regress signature declares DT_FLOAT for a string placeholder: as in TF Serving, the
    # graph's dtype is what counts.
    r = server.post("/v1/models/half_plus_three:regress", json={"signature_name": "tensorflow/serving/regress",
                                                                 "examples": [{"x": 1.0}, {"x": 5.0}]})
    assert r.json() == {"results": [3.5, 5.5]}
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_three", "tensorflow/serving/regress"
    _example_input(request, x=2.0)
    assert predict.Regress(request, 10).result.regressions[0].value == 4.0


def test_stateful_counter(served):
    server, predict, _, _ = served

    def call(signature: str, **inputs) -> float:
        response = predict.Predict(_predict("counter", inputs, signature), 10)
        return response.outputs["output"].float_val[0]

    call("reset_counter")
    assert call("incr_counter") == 1.0
    assert call("incr_counter") == 2.0
    assert call("incr_counter_by", delta=np.float32(3.0)) == 5.0
    assert call("get_counter") == 5.0
    # REST reaches the same variable.
    r = server.post("/v1/models/counter:predict", json={"signature_name": "incr_counter_by",
                                                         "inputs": {"delta": 10.0}})
    assert r.json() == {"outputs": 15.0}
    r = server.post("/v1/models/counter:predict", json={"signature_name": "get_counter", "inputs": {}})
    assert r.json() == {"outputs": 15.0}
    assert call("reset_counter") == 0.0
    assert call("get_counter") == 0.0


def test_bad_model_fails_and_previous_version_keeps_serving(served):
    server, predict, status, rollout = served
    os.symlink(TESTDATA / "bad_half_plus_two" / "00000123", rollout / "2")

    def states() -> dict[int, tuple[int, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "rollout"
        return {s.version: (s.state, s.status.error_message)
                for s in status.GetModelStatus(request, 10).model_version_status}

    wait_for(lambda: 2 in states() and states()[2][0] == 50, 60, "version 2 to fail to load")
    assert "SavedModel file does not exist" in states()[2][1]
    assert states()[1][0] == 30  # AVAILABLE
    response = predict.Predict(_predict("rollout", {"x": np.array([5.0], np.float32)}), 10)
    assert response.model_spec.version.value == 1
    assert list(response.outputs["y"].float_val) == [4.5]


def test_shape_the_graph_rejects_is_invalid_argument_with_tfs_reason(served):
    _, predict, _, _ = served
    # half_plus_three's ParseExample takes a vector of serialized examples, not a matrix.
    request = _predict("half_plus_three", {"inputs": np.array([[b"a"]], object)},
                       signature="tensorflow/serving/regress")
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in info.value.details() and "[[" not in info.value.details()
