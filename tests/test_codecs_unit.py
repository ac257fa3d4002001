"""Unit tests of codecs: TensorProto <-> numpy (checked against TensorFlow) and REST JSON."""

from __future__ import annotations

import base64
import json
import math
import warnings

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from pyserving.codecs import dtypes, json_codec, tensor_proto
from pyserving.errors import Code, ServingError

ALL_ENUMS = sorted(dtypes.BY_ENUM)
ENUM_IDS = [dtypes.BY_ENUM[e].name for e in ALL_ENUMS]


def _sample(enum: int, shape=(2, 3)) -> np.ndarray:
    """Distinct, exactly representable values of the given dtype."""
    dt = dtypes.BY_ENUM[enum]
    n = math.prod(shape)
    if dt.is_string:
        flat = np.empty(n, dtype=object)
        flat[:] = [f"s{i}".encode() + b"\xff\x00" for i in range(n)]
        return flat.reshape(shape)
    if dt.numpy.kind == "b":
        return (np.arange(n) % 2 == 0).reshape(shape)
    if dt.numpy.kind == "c":
        return (np.arange(n) + 1j * (np.arange(n) - 2)).astype(dt.numpy).reshape(shape)
    if dt.numpy.kind == "u":
        top = np.iinfo(dt.numpy).max
        return np.array([0, 1, 2, 3, top - 1, top][:n] + [5] * max(0, n - 6),
                        dtype=dt.numpy).reshape(shape)
    if dt.numpy.kind == "i":
        info = np.iinfo(dt.numpy)
        return np.array([info.min, -1, 0, 1, 7, info.max][:n] + [5] * max(0, n - 6),
                        dtype=dt.numpy).reshape(shape)
    # floats, half, bfloat16
    return np.array([-2.5, -1.0, 0.0, 0.5, 1.5, 3.0][:n] + [4.0] * max(0, n - 6),
                    dtype=dt.numpy).reshape(shape)


def _tf_dtype(enum: int) -> tf.DType:
    return tf.dtypes.as_dtype(enum)


def _assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object or expected.dtype.kind in "SU":
        assert [bytes(v) for v in actual.reshape(-1)] == [bytes(v) for v in expected.reshape(-1)]
        return
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual.astype(np.complex128 if actual.dtype.kind == "c" else
                                                 (np.float64 if actual.dtype.kind == "f" or
                                                  actual.dtype == ml_dtypes.bfloat16 else actual.dtype)),
                                  expected.astype(np.complex128 if expected.dtype.kind == "c" else
                                                  (np.float64 if expected.dtype.kind == "f" or
                                                   expected.dtype == ml_dtypes.bfloat16 else expected.dtype)))


def _proto(enum: int, shape, **fields) -> tensor_pb2.TensorProto:
    p = tensor_pb2.TensorProto(
        dtype=enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]))
    for k, v in fields.items():
        if k == "tensor_content":
            p.tensor_content = v
        else:
            getattr(p, k).extend(v)
    return p


def _expect_invalid(fn, *fragments: str) -> ServingError:
    with pytest.raises(ServingError) as info:
        fn()
    assert info.value.code == Code.INVALID_ARGUMENT, info.value.code
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)
    return info.value


# ---- TensorProto <-> numpy ---------------------------------------------------

@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed", "content"])
@pytest.mark.parametrize("enum", ALL_ENUMS, ids=ENUM_IDS)
def test_round_trip_and_tensorflow_reads_our_protos(enum, tensor_content):
    array = _sample(enum)
    proto = tensor_proto.from_numpy(array, tensor_content=tensor_content)
    assert proto.dtype == enum
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3]
    dt = dtypes.BY_ENUM[enum]
    if tensor_content and not dt.is_string:
        assert proto.tensor_content and not getattr(proto, dt.field)
    else:
        assert not proto.tensor_content
        # complex values are stored as (real, imag) pairs
        assert len(getattr(proto, dt.field)) == array.size * (2 if dt.numpy.kind == "c" else 1)
    _assert_same(tensor_proto.to_numpy(proto), array)
    _assert_same(tf.make_ndarray(proto), array)


@pytest.mark.parametrize("enum", ALL_ENUMS, ids=ENUM_IDS)
def test_we_read_tensorflow_protos(enum):
    array = _sample(enum)
    if dtypes.BY_ENUM[enum].is_string:
        tf_proto = tf.make_tensor_proto([bytes(v) for v in array.reshape(-1)],
                                        dtype=tf.string, shape=[2, 3])
    else:
        tf_proto = tf.make_tensor_proto(array, dtype=_tf_dtype(enum))
    _assert_same(tensor_proto.to_numpy(tf_proto), array)


@pytest.mark.parametrize("enum", ALL_ENUMS, ids=ENUM_IDS)
def test_single_typed_value_broadcasts_like_tensorflow(enum):
    value = _sample(enum, shape=(6,))[3:4]  # one value, not the zero default
    single = tensor_proto.from_numpy(value)
    proto = _proto(enum, [2, 3])
    if dtypes.BY_ENUM[enum].is_string:
        proto.string_val.extend(single.string_val)
    else:
        field = dtypes.BY_ENUM[enum].field
        getattr(proto, field).extend(getattr(single, field))
    ours = tensor_proto.to_numpy(proto)
    expected = np.full((2, 3), value[0], dtype=value.dtype)
    _assert_same(ours, expected)
    if not dtypes.BY_ENUM[enum].is_string:
        _assert_same(tf.make_ndarray(proto), expected)


def test_tensorflow_broadcast_proto_decodes():
    tf_proto = tf.make_tensor_proto(5.0, shape=[2, 3])
    assert list(tf_proto.float_val) == [5.0]
    np.testing.assert_array_equal(tensor_proto.to_numpy(tf_proto), np.full((2, 3), 5.0, np.float32))


@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed", "content"])
@pytest.mark.parametrize("enum", [types_pb2.DT_FLOAT, types_pb2.DT_INT64, types_pb2.DT_STRING,
                                  types_pb2.DT_HALF, types_pb2.DT_COMPLEX64, types_pb2.DT_BOOL],
                         ids=["float", "int64", "string", "half", "complex64", "bool"])
def test_scalars(enum, tensor_content):
    value = _sample(enum, shape=(6,))[4:5].reshape(())
    proto = tensor_proto.from_numpy(value, tensor_content=tensor_content)
    assert len(proto.tensor_shape.dim) == 0
    out = tensor_proto.to_numpy(proto)
    assert out.shape == ()
    _assert_same(out, np.asarray(value))
    if enum != types_pb2.DT_STRING:
        _assert_same(tf.make_ndarray(proto), np.asarray(value))


@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed", "content"])
@pytest.mark.parametrize("enum", [types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_STRING,
                                  types_pb2.DT_BFLOAT16],
                         ids=["float", "int32", "string", "bfloat16"])
def test_empty_tensors(enum, tensor_content):
    dt = dtypes.BY_ENUM[enum]
    array = np.empty((0, 3), dtype=dt.numpy)
    proto = tensor_proto.from_numpy(array, tensor_content=tensor_content)
    assert [d.size for d in proto.tensor_shape.dim] == [0, 3]
    out = tensor_proto.to_numpy(proto)
    assert out.shape == (0, 3)
    if not dt.is_string:
        assert out.dtype == dt.numpy
        assert tf.make_ndarray(proto).shape == (0, 3)


def test_to_numpy_from_tensor_content_is_the_right_values():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    proto = _proto(types_pb2.DT_FLOAT, [2, 3], tensor_content=array.tobytes())
    np.testing.assert_array_equal(tensor_proto.to_numpy(proto), array)


def test_from_numpy_accepts_unicode_strings():
    proto = tensor_proto.from_numpy(np.array(["héllo", "x"]))
    assert proto.dtype == types_pb2.DT_STRING
    assert list(proto.string_val) == ["héllo".encode(), b"x"]


def test_from_numpy_rejects_dtypes_without_tf_equivalent():
    with pytest.raises(TypeError):
        tensor_proto.from_numpy(np.array(["2020-01-01"], dtype="datetime64[D]"))


def test_error_tensor_content_size_mismatch():
    proto = _proto(types_pb2.DT_FLOAT, [2, 3], tensor_content=b"\x00" * 20)
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'x'"),
                    "input 'x'", "20 bytes", "24")


def test_error_wrong_number_of_typed_values():
    proto = _proto(types_pb2.DT_INT32, [2, 3], int_val=[1, 2, 3, 4])
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'ids'"),
                    "input 'ids'", "4 values", "6")


def test_error_no_typed_values_for_non_empty_shape():
    proto = _proto(types_pb2.DT_FLOAT, [2])
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'empty'"), "input 'empty'")


def test_error_unknown_rank():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.unknown_rank = True
    proto.float_val.append(1.0)
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'r'"), "input 'r'", "rank")


def test_error_negative_dimension():
    proto = _proto(types_pb2.DT_FLOAT, [-1, 2], float_val=[1.0, 2.0])
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'neg'"), "input 'neg'")


def test_error_unsupported_dtype():
    proto = _proto(types_pb2.DT_RESOURCE, [1])
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'res'"),
                    "input 'res'", "resource")


def test_error_string_tensor_content():
    proto = _proto(types_pb2.DT_STRING, [1], tensor_content=b"abc")
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 's'"), "input 's'")


@pytest.mark.parametrize("enum,value", [(types_pb2.DT_UINT8, 300), (types_pb2.DT_UINT8, -1),
                                        (types_pb2.DT_INT8, 128), (types_pb2.DT_INT16, -40000),
                                        (types_pb2.DT_UINT16, 70000)],
                         ids=["uint8-300", "uint8-neg", "int8-128", "int16-low", "uint16-high"])
def test_error_out_of_range_int_val(enum, value):
    proto = _proto(enum, [1], int_val=[value])
    _expect_invalid(lambda: tensor_proto.to_numpy(proto, what="input 'px'"), "input 'px'")


def test_default_what_is_tensor():
    proto = _proto(types_pb2.DT_FLOAT, [3], float_val=[1.0, 2.0])
    _expect_invalid(lambda: tensor_proto.to_numpy(proto), "tensor")


def test_dtype_name():
    assert dtypes.dtype_name(types_pb2.DT_FLOAT) == "float"
    assert dtypes.dtype_name(types_pb2.DT_RESOURCE) == "resource"
    assert dtypes.dtype_name(9999) == "9999"


# ---- JSON: request bodies ------------------------------------------------------

F, I, S, B = types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_STRING, types_pb2.DT_BOOL


def _decode(body_text: str, input_dtypes):
    body = json_codec.parse_predict_body(json_codec.parse_json(body_text))
    return json_codec.decode_inputs(body, input_dtypes)


@pytest.mark.parametrize("body,fragment", [
    ({"instances": [1], "inputs": [1]}, "Not both"),
    ({"signature_name": "x"}, "Missing 'inputs' or 'instances'"),
    ([1, 2], "must be a JSON object"),
    ("str", "must be a JSON object"),
    ({"instances": [1], "signature_name": 3}, "signature_name"),
])
def test_parse_predict_body_errors(body, fragment):
    _expect_invalid(lambda: json_codec.parse_predict_body(body), fragment)


def test_parse_predict_body_ok():
    b = json_codec.parse_predict_body({"instances": [1, 2], "signature_name": "sig"})
    assert (b.signature_name, b.row_format, b.payload) == ("sig", True, [1, 2])
    b = json_codec.parse_predict_body({"inputs": {"a": 1}})
    assert (b.signature_name, b.row_format, b.payload) == ("", False, {"a": 1})


def test_parse_json_error():
    _expect_invalid(lambda: json_codec.parse_json(b"{not json"), "JSON Parse error")


def test_rows_single_input():
    out = _decode('{"instances": [[1, 2], [3, 4]]}', {"x": F})
    assert list(out) == ["x"]
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], [[1, 2], [3, 4]])


def test_rows_single_input_but_signature_has_two():
    _expect_invalid(lambda: _decode('{"instances": [1, 2]}', {"a": F, "b": F}), "2 inputs")


def test_rows_named_objects():
    out = _decode('{"instances": [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]}', {"a": I, "s": S})
    assert out["a"].dtype == np.int32
    np.testing.assert_array_equal(out["a"], [1, 2])
    assert out["s"].tolist() == [b"x", b"y"]


def test_rows_objects_with_mismatched_keys():
    _expect_invalid(lambda: _decode('{"instances": [{"a": 1, "b": 2}, {"a": 3}]}', {"a": F, "b": F}),
                    "element: 1", "same keys")


def test_rows_mixing_objects_and_values():
    _expect_invalid(lambda: _decode('{"instances": [{"a": 1}, 2]}', {"a": F}), "element: 1")


def test_rows_must_be_non_empty_list():
    _expect_invalid(lambda: _decode('{"instances": []}', {"a": F}), "empty")
    _expect_invalid(lambda: _decode('{"instances": 3}', {"a": F}), "list")


def test_columnar_single_tensor():
    out = _decode('{"inputs": [[1.5, 2.5]]}', {"x": F})
    np.testing.assert_array_equal(out["x"], np.array([[1.5, 2.5]], np.float32))


def test_columnar_named_tensors():
    out = _decode('{"inputs": {"a": [1, 2, 3], "b": [[true], [false]]}}', {"a": I, "b": B})
    np.testing.assert_array_equal(out["a"], np.array([1, 2, 3], np.int32))
    assert out["b"].dtype == np.bool_ and out["b"].tolist() == [[True], [False]]


def test_columnar_scalar_string_b64():
    out = _decode('{"inputs": {"b64": "aGVsbG8="}}', {"s": S})
    assert out["s"].shape == () and out["s"][()] == b"hello"


def test_b64_string_inputs():
    payload = base64.b64encode(b"\x00\xffbin").decode()
    out = _decode(json.dumps({"instances": [{"b64": payload}, "plain"]}), {"s": S})
    assert out["s"].dtype == object
    assert out["s"].tolist() == [b"\x00\xffbin", b"plain"]


def test_b64_nested_rows_of_named_inputs():
    payload = base64.b64encode(b"img").decode()
    out = _decode(json.dumps({"instances": [{"img": {"b64": payload}, "k": 1}]}), {"img": S, "k": I})
    assert out["img"].tolist() == [b"img"]


def test_invalid_base64():
    _expect_invalid(lambda: _decode('{"instances": [{"b64": "!!not base64"}]}', {"s": S}),
                    "'s'", "base64")


def test_b64_given_to_float_input():
    _expect_invalid(lambda: _decode('{"instances": [{"b64": "aGVsbG8="}]}', {"x": F}),
                    "'x'", "b64", "DT_STRING")


def test_non_string_to_string_input():
    _expect_invalid(lambda: _decode('{"instances": [1, 2]}', {"s": S}), "'s'")


def test_nan_and_infinity_into_float_input():
    out = _decode('{"instances": [NaN, Infinity, -Infinity, 1]}', {"x": F})
    x = out["x"]
    assert x.dtype == np.float32
    assert math.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf and x[3] == 1


@pytest.mark.parametrize("dtype", [F, I], ids=["float", "int32"])
def test_ragged_numeric_lists(dtype):
    err = _expect_invalid(lambda: _decode('{"instances": [[1, 2], [3]]}', {"x": dtype}), "'x'")
    assert "ragged" in err.message or "same length" in err.message


@pytest.mark.parametrize("payload", [
    [["a", "b"], ["c"]],
    [["a"], ["b", "c"]],
    [["a", "b"], "c"],
    ["a", ["b", "c"]],
], ids=["short-second-row", "long-second-row", "scalar-second-row", "list-second-item"])
def test_ragged_string_lists(payload):
    # Must be rejected, not turned into an object array holding Python lists.
    _expect_invalid(lambda: _decode(json.dumps({"instances": payload}), {"s": S}), "'s'")


def test_floats_given_to_int_input():
    _expect_invalid(lambda: _decode('{"instances": [1, 2.5]}', {"n": I}), "'n'", "floating-point")
    _expect_invalid(lambda: _decode('{"instances": [1.0]}', {"n": I}), "'n'")


def test_ints_given_to_bool_input():
    _expect_invalid(lambda: _decode('{"instances": [1, 0]}', {"flag": B}), "'flag'")


@pytest.mark.parametrize("dtype", [F, I], ids=["float", "int32"])
def test_strings_given_to_numeric_input(dtype):
    # TF Serving: 'JSON Value: "1.5" Type: String is not of expected type'.
    _expect_invalid(lambda: _decode('{"instances": ["1"]}', {"x": dtype}), "'x'")


def test_ints_into_float_input_are_fine():
    out = _decode('{"instances": [1, 2]}', {"x": types_pb2.DT_DOUBLE})
    assert out["x"].dtype == np.float64 and out["x"].tolist() == [1.0, 2.0]


# ---- JSON: responses -----------------------------------------------------------

def _encode(outputs, row_format):
    return json.loads(json_codec.encode_outputs(outputs, row_format))


def test_rows_single_output_unwrapped():
    body = _encode({"scores": np.array([[0.5, 1.5], [2.0, 3.0]], np.float32)}, True)
    assert body == {"predictions": [[0.5, 1.5], [2.0, 3.0]]}


def test_rows_multiple_outputs():
    body = _encode({"cls": np.array([1, 2], np.int64),
                    "p": np.array([[0.25], [0.75]], np.float32)}, True)
    assert body == {"predictions": [{"cls": 1, "p": [0.25]}, {"cls": 2, "p": [0.75]}]}


def test_rows_inconsistent_batch_sizes():
    _expect_invalid(lambda: json_codec.encode_outputs(
        {"a": np.zeros(2), "b": np.zeros(3)}, True), "inconsistent")
    _expect_invalid(lambda: json_codec.encode_outputs(
        {"a": np.zeros(2), "scalar": np.float32(1.0).reshape(())}, True), "batch")


def test_columnar_single_and_multiple():
    assert _encode({"y": np.array([1.5], np.float32)}, False) == {"outputs": [1.5]}
    body = _encode({"a": np.array(3, np.int32), "b": np.array([True, False])}, False)
    assert body == {"outputs": {"a": 3, "b": [True, False]}}


def test_bytes_suffix_outputs_are_b64():
    arr = np.array([b"\x00\x01", b"ok"], dtype=object)
    body = _encode({"image_bytes": arr}, False)
    assert body == {"outputs": [{"b64": base64.b64encode(b"\x00\x01").decode()},
                                {"b64": base64.b64encode(b"ok").decode()}]}


def test_plain_string_outputs_and_non_utf8_fallback():
    arr = np.array([b"caf\xc3\xa9", b"\xff\xfe"], dtype=object)
    body = _encode({"labels": arr}, False)
    assert body["outputs"][0] == "café"
    assert body["outputs"][1] == {"b64": base64.b64encode(b"\xff\xfe").decode()}


def test_string_outputs_in_rows_with_b64():
    body = _encode({"k_bytes": np.array([b"a", b"b"], dtype=object),
                    "n": np.array([1, 2], np.int32)}, True)
    assert body["predictions"][1] == {"k_bytes": {"b64": "Yg=="}, "n": 2}


def test_nan_and_infinity_outputs():
    raw = json_codec.encode_outputs({"y": np.array([np.nan, np.inf, -np.inf], np.float32)}, False)
    assert b"NaN" in raw and b"Infinity" in raw
    back = json.loads(raw)["outputs"]
    assert math.isnan(back[0]) and back[1] == math.inf and back[2] == -math.inf


@pytest.mark.parametrize("np_dtype", [np.float16, ml_dtypes.bfloat16], ids=["half", "bfloat16"])
def test_half_precision_outputs(np_dtype):
    body = _encode({"y": np.array([0.5, -2.0, 3.0], dtype=np_dtype)}, True)
    assert body == {"predictions": [0.5, -2.0, 3.0]}


def test_complex_outputs_are_pairs():
    body = _encode({"z": np.array([1 + 2j], np.complex64)}, False)
    assert body == {"outputs": [[1.0, 2.0]]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128, np.bool_])
def test_large_typed_outputs_match_tensorflow(dtype):
    """The packed fast path for fixed-width fields decodes the same in TensorFlow."""
    rng = np.random.default_rng(0)
    array = rng.random((300, 257)) > 0.5 if dtype == np.bool_ else (rng.random((300, 257)) * 1e3).astype(dtype)
    proto = tensor_proto.from_numpy(array)
    assert not proto.tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_single_value_cannot_fill_a_huge_shape():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    for size in (10 ** 4, 10 ** 4):  # within limits.MAX_ELEMENTS, past MAX_BROADCAST_BYTES
        proto.tensor_shape.dim.add(size=size)
    with pytest.raises(ServingError) as info:
        tensor_proto.to_numpy(proto, "input 'x'")
    assert info.value.code == Code.INVALID_ARGUMENT and "refusing to fill" in info.value.message


def test_deeply_nested_json_is_a_client_error():
    with pytest.raises(ServingError) as info:
        json_codec.parse_json("[" * 100_000 + "]" * 100_000)
    assert info.value.code == Code.INVALID_ARGUMENT and "nests too deeply" in info.value.message


def test_a_float_past_float32_is_inf_without_a_warning_in_the_log():
    """TF Serving's JSON reader makes 1e300 a float32 inf; numpy's overflow warning would land in the
    server's log once for every client that sends one."""
    from pyserving.codecs import open_inference

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = _decode('{"instances": [1e300, -1e300, 1.5]}', {"x": types_pb2.DT_FLOAT})["x"]
        v2 = open_inference.to_numpy(open_inference.WireTensor("x", "FP32", (3,), [1e300, -1e300, 1.5], "json"))
    for array in (rows, v2):
        assert array.dtype == np.float32 and array.tolist() == [math.inf, -math.inf, 1.5]
