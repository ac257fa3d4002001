"""The real server over gRPC with the official tensorflow-serving-api stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from support import models
from support.server import serve_models
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc_models")
    models.export_tf2_linear(str(root / "tf2" / "2"), scale=10.0)  # beside version 1, below
    server = serve_models(
        root, {"tf1": models.export_tf1_half_plus_two, "tf2": models.export_tf2_linear,
               "keras": models.export_keras, "keras_saved": models.export_keras_saved_model,
               "dtypes": models.export_dtypes},
        "--file_system_poll_wait_seconds=1",
        extra={"tf2": 'model_version_policy { all {} } '
                      'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'})
    yield server, root
    assert server.stop() == 0


@pytest.fixture(scope="module")
def stubs(served):
    server, _ = served
    channel = server.channel()
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def predict_request(name: str, inputs: dict, signature: str = "", version: int | None = None,
                    label: str | None = None, output_filter=()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def test_tf1_builder_model_predicts(stubs):
    predict, _ = stubs
    response = predict.Predict(predict_request("tf1", {"x": np.array([[1.0], [4.0]], np.float32)}), 10)
    assert list(response.outputs["y"].float_val) == [2.5, 4.0]
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [2, 1]
    assert response.model_spec.name == "tf1"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_tf1_table_initialised_by_main_op(stubs):
    predict, _ = stubs
    response = predict.Predict(
        predict_request("tf1", {"keys": np.array([2, 0, 7], np.int64)}, signature="lookup"), 10)
    assert list(response.outputs["names"].string_val) == [b"two", b"zero", b"unknown"]


def test_tf2_latest_version_and_outputs(stubs):
    predict, _ = stubs
    response = predict.Predict(predict_request("tf2", {"x": np.array([[1, 1]], np.float32)}), 10)
    # version 2 has scale 10: 1*10 + 1*20 + 10
    assert response.model_spec.version.value == 2
    assert list(response.outputs["y"].float_val) == [40.0]
    assert list(response.outputs["y_sum"].float_val) == [40.0]


def test_tf2_specific_version_and_label(stubs):
    predict, _ = stubs
    x = {"x": np.array([[1, 1]], np.float32)}
    by_version = predict.Predict(predict_request("tf2", x, version=1), 10)
    assert list(by_version.outputs["y"].float_val) == [4.0]
    by_label = predict.Predict(predict_request("tf2", x, label="stable"), 10)
    assert by_label.model_spec.version.value == 1
    assert list(by_label.outputs["y"].float_val) == [4.0]
    canary = predict.Predict(predict_request("tf2", x, label="canary"), 10)
    assert canary.model_spec.version.value == 2


def test_output_filter(stubs):
    predict, _ = stubs
    response = predict.Predict(
        predict_request("tf2", {"x": np.array([[1, 2]], np.float32)}, output_filter=["y_sum"]), 10)
    assert set(response.outputs) == {"y_sum"}


def test_multi_input_signature(stubs):
    predict, _ = stubs
    response = predict.Predict(predict_request(
        "tf2", {"a": np.array([1, 2], np.float32), "b": np.array([10, 20], np.float32)},
        signature="add"), 10)
    assert list(response.outputs["sum"].float_val) == [11.0, 22.0]


def test_keras_model_matches_tensorflow(stubs, served):
    predict, _ = stubs
    _, root = served
    features = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    response = predict.Predict(predict_request("keras", {"features": features}), 10)
    (alias,) = response.outputs
    got = tf.make_ndarray(response.outputs[alias])
    expected = models.keras_reference(str(root / "keras" / "1"), features)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.shape == (2, 3)


def test_keras_saved_with_tf_saved_model_save(stubs, served):
    predict, _ = stubs
    _, root = served
    features = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    expected = models.keras_saved_reference(str(root / "keras_saved" / "1"), features)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras_saved"
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "keras_saved"
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    predict.GetModelMetadata(metadata, 10).metadata["signature_def"].Unpack(signature_map)
    (input_alias,) = signature_map.signature_def["serving_default"].inputs
    request.inputs[input_alias].CopyFrom(tf.make_tensor_proto(features))
    response = predict.Predict(request, 10)
    assert set(response.outputs) == set(expected)
    for alias, value in expected.items():
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[alias]), value, rtol=1e-6)


def _sample(name: str) -> np.ndarray:
    dtype = models.DTYPES[name]
    if name == "string":
        return np.array([[b"a", b"\xff\x00bin"], [b"", "é".encode()]], dtype=object)
    if name == "bool":
        return np.array([[True, False], [False, True]])
    if name.startswith("complex"):
        return np.array([[1 + 2j, -3.5j], [0, 4]], dtype=dtype.as_numpy_dtype)
    values = np.array([[0, 1], [2, 3]])
    if dtype.is_floating:
        values = np.array([[0.5, -1.25], [3.0, 100.0]])
    return values.astype(dtype.as_numpy_dtype)


def _encode(array: np.ndarray, encoding: str):
    """The request tensor in the wanted encoding, built with TensorFlow's own helpers."""
    proto = tf.make_tensor_proto(array)
    if array.dtype == object:
        return proto  # strings always travel in string_val
    typed_field = {f.name for f, _ in proto.ListFields()} - {"dtype", "tensor_shape", "tensor_content"}
    if encoding == "tensor_content":
        for name in typed_field:
            proto.ClearField(name)
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    elif proto.tensor_content:
        typed = tf.make_tensor_proto(array.ravel()[0], dtype=proto.dtype, shape=[1])
        (field_name,) = {f.name for f, _ in typed.ListFields()} - {"dtype", "tensor_shape"}
        proto.ClearField("tensor_content")
        values = array.ravel()
        if array.dtype.name in ("float16", "bfloat16"):
            values = values.view(np.uint16)
        elif array.dtype.kind == "c":
            values = values.view(values.real.dtype)
        getattr(proto, field_name).extend(values.tolist())
    return proto


@pytest.mark.parametrize("dtype_name", sorted(models.DTYPES))
@pytest.mark.parametrize("encoding", ["tensor_content", "typed_fields"])
def test_every_dtype_round_trips(stubs, dtype_name, encoding):
    predict, _ = stubs
    array = _sample(dtype_name)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dtypes"
    request.model_spec.signature_name = f"id_{dtype_name}"
    proto = _encode(array, encoding)
    if dtype_name != "string":
        assert bool(proto.tensor_content) == (encoding == "tensor_content")
    request.inputs["x"].CopyFrom(proto)
    response = predict.Predict(request, 10)
    out = response.outputs["y"]
    assert not out.tensor_content  # typed fields by default, as the official client reads them
    assert out.dtype == models.DTYPES[dtype_name].as_datatype_enum
    result = tf.make_ndarray(out)
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def test_official_client_reads_float_val(stubs):
    """Exactly as TF Serving's mnist_client.py reads an answer."""
    predict, _ = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32), shape=[1, 1]))
    result = predict.Predict.future(request, 5.0).result()
    assert np.array(result.outputs["y"].float_val).tolist() == [3.0]


# ---- status and metadata ---------------------------------------------------------

def test_model_status(stubs):
    _, model_service = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tf2"
    response = model_service.GetModelStatus(request, 10)
    states = {s.version: s.state for s in response.model_version_status}
    assert states == {1: 30, 2: 30}  # AVAILABLE
    assert all(s.status.error_code == 0 for s in response.model_version_status)
    request.model_spec.version.value = 1
    only = model_service.GetModelStatus(request, 10)
    assert [s.version for s in only.model_version_status] == [1]


def test_model_metadata_signature_defs(stubs):
    predict, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tf1"
    request.metadata_field.append("signature_def")
    response = predict.GetModelMetadata(request, 10)
    assert response.model_spec.name == "tf1" and response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].name == "x:0"
    assert default.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]
    assert set(signature_map.signature_def) >= {"serving_default", "lookup"}


# ---- errors ------------------------------------------------------------------------

def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, 10)
    return info.value


def test_unknown_model_is_not_found(stubs):
    predict, model_service = stubs
    err = _error(predict.Predict, predict_request("nope", {"x": np.zeros((1, 1), np.float32)}))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Latest(nope)" in err.details()
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "nope"
    err = _error(model_service.GetModelStatus, status_request)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_version_is_not_found(stubs):
    predict, _ = stubs
    err = _error(predict.Predict, predict_request("tf1", {"x": np.zeros((1, 1), np.float32)}, version=9))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Specific(tf1, 9)" in err.details()


def test_unknown_label(stubs):
    predict, _ = stubs
    err = _error(predict.Predict, predict_request("tf2", {"x": np.zeros((1, 2), np.float32)}, label="gold"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gold" in err.details()


def test_unknown_signature(stubs):
    predict, _ = stubs
    err = _error(predict.Predict, predict_request("tf1", {"x": np.zeros((1, 1), np.float32)}, signature="bogus"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "bogus" not found' in err.details()


@pytest.mark.parametrize("inputs, needle", [
    ({"wrong": np.zeros((1, 1), np.float32)}, "Missing but required: {x}"),
    ({"x": np.zeros((1, 1), np.float32), "extra": np.zeros(1, np.float32)}, "Sent extra: {extra}"),
    ({"x": np.zeros((1, 1), np.int32)}, "Expects arg[x] to be float but int32 is provided"),
])
def test_bad_inputs_are_invalid_argument(stubs, inputs, needle):
    predict, _ = stubs
    err = _error(predict.Predict, predict_request("tf1", inputs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details()


def test_shapes_are_the_graphs_to_judge(stubs):
    """TF Serving feeds by tensor name: declared shapes are documentation, the graph decides."""
    predict, _ = stubs
    # tf1's x is declared [-1,1]; its graph is elementwise and takes [1,3] (and [3]).
    response = predict.Predict(predict_request("tf1", {"x": np.array([[1.0, 2.0, 5.0]], np.float32)}), 10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5, 3.0, 4.5]]
    response = predict.Predict(predict_request("tf1", {"x": np.array([1.0, 2.0, 5.0], np.float32)}), 10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    # tf2's matmul takes [N,2] only: a [1,3] x is INVALID_ARGUMENT with TF's own reason.
    err = _error(predict.Predict, predict_request("tf2", {"x": np.zeros((1, 3), np.float32)}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Matrix size-incompatible" in err.details(), err.details()
    assert "[[" not in err.details() and "Traceback" not in err.details()


def test_bad_output_filter(stubs):
    predict, _ = stubs
    err = _error(predict.Predict, predict_request("tf1", {"x": np.zeros((1, 1), np.float32)},
                                                 output_filter=["z"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: z" in err.details()


def test_tensor_content_size_mismatch(stubs):
    predict, _ = stubs
    request = predict_request("tf1", {})
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].tensor_shape.dim.add(size=2)
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].tensor_content = b"\x00" * 5
    err = _error(predict.Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in err.details() and "tensor_content" in err.details()


def test_metadata_without_field(stubs):
    predict, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tf1"
    err = _error(predict.GetModelMetadata, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    request.metadata_field.append("nonsense")
    err = _error(predict.GetModelMetadata, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "nonsense" in err.details()


def test_malformed_proto_bytes_keep_server_serving(stubs, served):
    server, _ = served
    channel = server.channel()
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff garbage", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensorflow.serving.PredictRequest" in info.value.details()
    channel.close()
    predict, _ = stubs
    assert predict.Predict(predict_request("tf1", {"x": np.ones((1, 1), np.float32)}), 10).outputs["y"].float_val[0] == 2.5


def test_large_message_over_4mb(stubs):
    predict, _ = stubs
    big = np.ones((600_000, 2), np.float32)  # ~4.8 MB request, ~2.4 MB answer
    response = predict.Predict(
        predict_request("tf2", {"x": big}, output_filter=["y_sum"]), 30)
    assert len(response.outputs["y_sum"].float_val) == 600_000


def test_huge_claimed_shape_is_refused_and_server_keeps_serving(stubs):
    predict, _ = stubs
    request = predict_request("tf1", {})
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].tensor_shape.dim.add(size=10 ** 7)
    request.inputs["x"].tensor_shape.dim.add(size=10 ** 6)
    request.inputs["x"].float_val.append(1.0)
    err = _error(predict.Predict, request)
    # 10^13 elements: past limits.MAX_ELEMENTS, refused before numpy is asked for anything
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is too large" in err.details()
    ok = predict.Predict(predict_request("tf1", {"x": np.ones((1, 1), np.float32)}), 10)
    assert ok.outputs["y"].float_val[0] == 2.5
