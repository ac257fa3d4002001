"""TFLite models served with --prefer_tflite_model, over real gRPC and REST.

Expected answers are TF Serving's own: tflite_session_test.cc (signatures built
for the half_plus_two models, [1, 2, 3] -> [2.5, 3, 3.5]) and
tensorflow_model_server_test.py (x=2.0 -> y=3.0 on both TFLite models).
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.http as triton_http
from google.protobuf import text_format
from support.server import ServerProcess, model_config
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata"
SHARED = {"half_plus_two": "saved_model_half_plus_two_tflite",
          "half_plus_two_sigdef": "saved_model_half_plus_two_tflite_with_sigdef",
          "parse_example": "parse_example_tflite"}
VERSION = 123  # the shared folders hold version 00000123


class TwoWay(tf.Module):
    """Two inputs and two outputs in serving_default, plus a second signature (its own subgraph)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.int32)])
    def predict(self, a, b):
        return {"scores": tf.matmul(a, self.w), "doubled": b * 2}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def plus_one(self, x):
        return {"y": x + 1.0}


def export_two_way(version_dir: Path) -> None:
    """A SavedModel and, beside it in the same version folder, its TFLite conversion."""
    module = TwoWay()
    tf.saved_model.save(module, str(version_dir),
                        signatures={"serving_default": module.predict, "plus_one": module.plus_one})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(version_dir),
                                                         signature_keys=["serving_default", "plus_one"])
    (version_dir / "model.tflite").write_bytes(converter.convert())


def two_way_expected(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a @ np.array([[1, 2], [3, 4], [5, 6]], np.float32), b * 2


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    assert all((TESTDATA / d / "00000123" / "model.tflite").is_file() for d in SHARED.values()), TESTDATA
    root = tmp_path_factory.mktemp("tflite")
    export_two_way(root / "two_way" / "1")
    config = root / "models.config"
    config.write_text(model_config({**{n: str(TESTDATA / d) for n, d in SHARED.items()},
                                    "two_way": str(root / "two_way")}))
    # Both start at once: TensorFlow's import dominates start-up and the machine has two cores.
    lite = ServerProcess(f"--model_config_file={config}", "--prefer_tflite_model",
                         "--num_tflite_pools=2", "--num_tflite_interpreters_per_pool=2",
                         log_path=root / "lite.log")
    plain = ServerProcess("--model_name=two_way", f"--model_base_path={root / 'two_way'}", rest=False,
                          log_path=root / "plain.log")
    lite.wait_ready(), plain.wait_ready()
    yield lite, plain, root
    assert lite.stop() == 0
    assert plain.stop() == 0


@pytest.fixture(scope="module")
def lite(servers):
    return servers[0]


@pytest.fixture(scope="module")
def stub(lite):
    channel = lite.channel()
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def request(name: str, inputs: dict, signature: str = "", output_filter=()) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    for alias, value in inputs.items():
        req.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    req.output_filter.extend(output_filter)
    return req


def example(x: float | None = None, y: bytes | None = None) -> bytes:
    ex = example_pb2.Example()
    if x is not None:
        ex.features.feature["x"].float_list.value.append(x)
    if y is not None:
        ex.features.feature["y"].bytes_list.value.append(y)
    return ex.SerializeToString()


def signature_map(stub, name: str) -> get_model_metadata_pb2.SignatureDefMap:
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = name
    response = stub.GetModelMetadata(req, 10)
    assert response.model_spec.version.value == (1 if name == "two_way" else VERSION)
    result = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(result)
    return result


# ---- the shared TF Serving test models ---------------------------------------------

@pytest.mark.parametrize("name", ["half_plus_two", "half_plus_two_sigdef"])
def test_half_plus_two_predict_grpc(stub, name):
    # tensorflow_model_server_test.py's VerifyPredictRequest: x = [2.0] gives y = [3.0].
    response = stub.Predict(request(name, {"x": np.array([2.0], np.float32)}, output_filter=["y"]), 10)
    assert response.outputs["y"].dtype == tf.float32.as_datatype_enum
    assert list(response.outputs["y"].float_val) == [3.0]
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == (name, VERSION, "serving_default")
    # tflite_session_test.cc: a [3] input resizes the [1,1] tensor; [1, 2, 3] gives [2.5, 3, 3.5].
    response = stub.Predict(request(name, {"x": np.array([1.0, 2.0, 3.0], np.float32)}), 10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.0, 3.5]


@pytest.mark.parametrize("name", ["half_plus_two", "half_plus_two_sigdef"])
def test_half_plus_two_predict_rest(lite, name):
    r = lite.post(f"/v1/models/{name}:predict", json={"instances": [1.0, 2.0, 5.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    r = lite.post(f"/v1/models/{name}/versions/{VERSION}:predict", json={"inputs": {"x": [[1.0], [4.0]]}})
    assert r.json() == {"outputs": [[2.5], [4.0]]}


# tflite_session_test.cc's BasicTest and ModelFromLegacyConverterWithSigdef, verbatim: without
# SignatureDefs the aliases are the tensor names; with them, "tflite_input:0" falls back to the
# converter's stripped name "tflite_input".
HALF_PLUS_TWO_SIGNATURE = """
  inputs { key: "x" value { name: "%s" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
  outputs { key: "y" value { name: "y" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
  method_name: "tensorflow/serving/predict"
"""


@pytest.mark.parametrize("name, input_tensor", [("half_plus_two", "x"), ("half_plus_two_sigdef", "tflite_input")])
def test_half_plus_two_metadata_grpc(stub, name, input_tensor):
    signatures = signature_map(stub, name).signature_def
    assert list(signatures) == ["serving_default"]
    expected = text_format.Parse(HALF_PLUS_TWO_SIGNATURE % input_tensor, meta_graph_pb2.SignatureDef())
    assert signatures["serving_default"] == expected


def test_parse_example_grpc(stub):
    # The feature spec: x float [1] defaulting to 0.0, y string [1] defaulting to "missing".
    serialized = np.array([example(1.5, b"alpha"), example(y=b"beta"), example(-2.0), example()], dtype=object)
    response = stub.Predict(request("parse_example", {"input": serialized}), 10)
    x = tf.make_ndarray(response.outputs["ParseExample/ParseExampleV2"])
    y = tf.make_ndarray(response.outputs["ParseExample/ParseExampleV2:1"])
    assert x.tolist() == [[1.5], [0.0], [-2.0], [0.0]]
    assert y.tolist() == [[b"alpha"], [b"beta"], [b"missing"], [b"missing"]]
    # A one-example batch after a four-example one: the interpreter state follows the batch size.
    response = stub.Predict(request("parse_example", {"input": np.array([example(7.0)], dtype=object)},
                                    output_filter=["ParseExample/ParseExampleV2"]), 10)
    assert list(response.outputs) == ["ParseExample/ParseExampleV2"]
    assert tf.make_ndarray(response.outputs["ParseExample/ParseExampleV2"]).tolist() == [[7.0]]


def test_parse_example_rest_b64(lite):
    instances = [{"b64": base64.b64encode(example(3.0, b"gamma")).decode()},
                 {"b64": base64.b64encode(example()).decode()}]
    r = lite.post("/v1/models/parse_example:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [
        {"ParseExample/ParseExampleV2": [3.0], "ParseExample/ParseExampleV2:1": ["gamma"]},
        {"ParseExample/ParseExampleV2": [0.0], "ParseExample/ParseExampleV2:1": ["missing"]}]}


def test_parse_example_malformed_input_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request("parse_example", {"input": np.array([b"\x07not a proto"], dtype=object)}), 10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parse" in e.value.details().lower()


def test_parse_example_metadata_rest(lite):
    r = lite.get("/v1/models/parse_example/metadata")
    assert r.status_code == 200, r.text
    signature = r.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"] == {"input": {
        "name": "input", "dtype": "DT_STRING",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}}}
    outputs = signature["outputs"]
    assert {a: (o["name"], o["dtype"]) for a, o in outputs.items()} == {
        "ParseExample/ParseExampleV2": ("ParseExample/ParseExampleV2", "DT_FLOAT"),
        "ParseExample/ParseExampleV2:1": ("ParseExample/ParseExampleV2:1", "DT_STRING")}


# ---- a model converted here, beside its SavedModel -----------------------------------

def test_prefer_tflite_picks_the_tflite_file(servers):
    lite, plain, root = servers
    assert f"Loaded {root / 'two_way' / '1'} with the tflite runtime in " in lite.log()
    assert f"Loaded {root / 'two_way' / '1'} with the session runtime in " in plain.log()
    assert "tflite runtime" not in plain.log()
    a = np.array([[1, 0, 0], [0, 1, 1], [0.5, 0.5, 0.5]], np.float32)
    b = np.array([1, 2, -3], np.int32)
    scores, doubled = two_way_expected(a, b)
    for server in (lite, plain):  # the same answers from both runtimes
        with server.channel() as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request("two_way", {"a": a, "b": b}), 10)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), scores, rtol=1e-6)
        assert tf.make_ndarray(response.outputs["doubled"]).tolist() == doubled.tolist()


def test_converted_signatures_in_metadata_and_runnable(stub, lite):
    signatures = signature_map(stub, "two_way").signature_def
    assert set(signatures) == {"serving_default", "plus_one"}
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert set(default.inputs) == {"a", "b"} and set(default.outputs) == {"scores", "doubled"}
    assert [d.size for d in default.inputs["a"].tensor_shape.dim] == [-1, 3]
    assert default.inputs["b"].dtype == tf.int32.as_datatype_enum
    response = stub.Predict(request("two_way", {"x": np.array([1.0, -1.0], np.float32)}, "plus_one"), 10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.0, 0.0]
    r = lite.post("/v1/models/two_way:predict",
                  json={"instances": [{"a": [1, 1, 1], "b": 4}], "output_filter": ["doubled"]})
    assert r.status_code == 200, r.text
    r = lite.post("/v1/models/two_way:predict", json={"inputs": {"a": [[1, 1, 1]], "b": [4]}})
    assert r.json() == {"outputs": {"scores": [[9.0, 12.0]], "doubled": [8]}}


# ---- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, inputs, needle", [
    ("half_plus_two", {"x": np.array([1.0], np.int32)}, "Expects arg[x] to be float but int32 is provided"),
    ("half_plus_two", {"z": np.array([1.0], np.float32)}, "Missing but required: {x}"),
    ("two_way", {"a": np.ones([2, 4], np.float32), "b": np.array([1, 2], np.int32)},
     "The TFLite model rejected input shapes {a: [2, 4], b: [2]} (signature serving_default declares "
     "{a: [-1,3], b: [-1]})"),
])
def test_bad_requests_are_invalid_argument_grpc(stub, name, inputs, needle):
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request(name, inputs), 10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()
    response = stub.Predict(request("two_way", {"a": np.ones([1, 3], np.float32), "b": np.array([3], np.int32)}), 10)
    assert tf.make_ndarray(response.outputs["doubled"]).tolist() == [6]


@pytest.mark.parametrize("name, body, needle", [
    ("half_plus_two", {"instances": ["one"]}, "input 'x'"),
    ("half_plus_two", {"inputs": {"z": [1.0]}}, "Missing but required: {x}"),
    ("two_way", {"instances": [{"a": [1, 2, 3, 4], "b": 1}]}, "The TFLite model rejected input shapes"),
])
def test_bad_requests_are_400_rest(lite, name, body, needle):
    r = lite.post(f"/v1/models/{name}:predict", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert lite.post(f"/v1/models/{name}:predict",
                     json={"instances": [1.0]} if name == "half_plus_two"
                     else {"instances": [{"a": [0, 0, 1], "b": 1}]}).status_code == 200


# ---- concurrency --------------------------------------------------------------------

def test_concurrent_requests_each_get_their_own_answer(stub):
    """48 requests at once on 2 x 2 interpreters, batch sizes varying (so interpreters resize)
    and some rejected (so interpreters are replaced): every answer matches its own request."""
    def call(i: int):
        n = 1 + i % 5
        if i % 3 == 0:
            x = np.arange(n, dtype=np.float32) + i
            got = stub.Predict(request("half_plus_two", {"x": x}), 30).outputs["y"]
            return tf.make_ndarray(got).tolist() == (x * 0.5 + 2).tolist()
        if i % 7 == 0:  # 8 values can't be rows of 3 (TFLite's FULLY_CONNECTED would take 9 as 3 x 3)
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(request("two_way", {"a": np.ones([2, 4], np.float32),
                                                 "b": np.ones([2], np.int32)}), 30)
            return e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        a = np.full([n, 3], i, np.float32)
        b = np.arange(n, dtype=np.int32) * i
        response = stub.Predict(request("two_way", {"a": a, "b": b}), 30)
        scores, doubled = two_way_expected(a, b)
        return (tf.make_ndarray(response.outputs["scores"]).tolist() == scores.tolist()
                and tf.make_ndarray(response.outputs["doubled"]).tolist() == doubled.tolist())

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(48)))
    assert results == [True] * 48


def test_open_inference_protocol_serves_tflite(lite):
    """V2 reaches TFLite models as it reaches SavedModels: metadata says the platform, infer runs."""
    client = triton_http.InferenceServerClient(f"127.0.0.1:{lite.rest_port}")
    metadata = client.get_model_metadata("half_plus_two")
    assert metadata["platform"] == "tensorflow_tflite" and metadata["versions"] == [str(VERSION)]
    x = triton_http.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0]], np.float32))
    assert client.infer("half_plus_two", [x]).as_numpy("y").tolist() == [[2.5]]
    client.close()
