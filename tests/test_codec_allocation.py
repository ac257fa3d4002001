"""No size a client declares allocates before the bytes are there: every codec, driven with random
declared shapes, datatypes and body lengths, allocates within a small multiple of the bytes it was
sent (tracemalloc: numpy reports its buffers to it), and refuses anything else with INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import struct
import tracemalloc

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tritonclient.grpc import service_pb2

from pyserving.codecs import json_codec, open_inference, tensor_proto
from pyserving.codecs.tensor_proto import MAX_BROADCAST_BYTES
from pyserving.errors import Code, ServingError

# Python objects per element (a bytes object, a list slot) are the largest blow-up: ~40 bytes for
# an element that costs 4 bytes or more on the wire.
MULTIPLE = 16
SLACK = 256 << 10  # the interpreter's own bookkeeping around a call
V2_TYPES = list(open_inference.TF_ENUM)
# Dimensions around the limits and the few that match small bodies.
DIMS = st.one_of(st.integers(0, 8), st.sampled_from([2**31 - 1, 2**31, 300_000_000, 1 << 20, 1 << 26]),
                 st.integers(0, 2**40))
SHAPES = st.lists(DIMS, min_size=0, max_size=4)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bounded(decode, body_bytes: int, allowance: int = 0) -> None:
    """Run ``decode``; its peak allocation stays within the bound, and a refusal is INVALID_ARGUMENT."""
    tracemalloc.start()
    try:
        try:
            result = decode()
        except ServingError as e:
            assert e.code == Code.INVALID_ARGUMENT, (e.code, e.message)
            result = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    bound = MULTIPLE * body_bytes + SLACK + allowance
    assert peak <= bound, f"peak {peak} bytes for a {body_bytes}-byte body (bound {bound})"


def _bytes_payload(sizes: list[int], truncate: int) -> bytes:
    raw = b"".join(struct.pack("<I", n) + b"x" * n for n in sizes)
    return raw[:max(0, len(raw) - truncate)]


@FUZZ
@given(datatype=st.sampled_from(V2_TYPES), shape=SHAPES, sizes=st.lists(st.integers(0, 40), max_size=64),
       truncate=st.integers(0, 8), garbage=st.binary(max_size=512), use_bytes_layout=st.booleans())
def test_v2_raw_contents_rest_binary_and_grpc(datatype, shape, sizes, truncate, garbage, use_bytes_layout):
    raw = _bytes_payload(sizes, truncate) if use_bytes_layout else garbage
    tensor = open_inference.WireTensor("x", datatype, tuple(shape), memoryview(raw), "raw")
    _bounded(lambda: open_inference.to_numpy(tensor), len(raw) + 64)


def test_the_reported_bytes_case_is_refused_without_allocating():
    for count in (300_000_000, 2**31 - 1):
        tensor = open_inference.WireTensor("x", "BYTES", (count,), memoryview(b""), "raw")
        _bounded(lambda: open_inference.to_numpy(tensor), 64)


@FUZZ
@given(datatype=st.sampled_from(V2_TYPES), shape=SHAPES,
       data=st.one_of(st.lists(st.integers(-2**63, 2**64 - 1), max_size=64),
                      st.lists(st.floats(allow_nan=False), max_size=64),
                      st.lists(st.text(max_size=8), max_size=64), st.lists(st.booleans(), max_size=64),
                      st.lists(st.lists(st.integers(0, 9), max_size=8), max_size=8), st.integers(-2**63, 2**63 - 1), st.none()))
def test_v2_json_data(datatype, shape, data):
    body = orjson.dumps({"name": "x", "datatype": datatype, "shape": shape, "data": data})

    def decode():
        parsed = orjson.loads(body)
        header = open_inference.check_header("x", datatype, shape)
        return open_inference.to_numpy(open_inference.WireTensor("x", *header, parsed["data"], "json"))
    _bounded(decode, len(body))


_V2_FIELDS = {"int_contents": st.integers(-2**31, 2**31 - 1), "int64_contents": st.integers(-2**63, 2**63 - 1),
              "uint_contents": st.integers(0, 2**32 - 1), "fp32_contents": st.floats(width=32),
              "bool_contents": st.booleans(), "bytes_contents": st.binary(max_size=6)}


@FUZZ
@given(datatype=st.sampled_from(V2_TYPES), shape=SHAPES, field=st.sampled_from(sorted(_V2_FIELDS)), data=st.data())
def test_v2_grpc_typed_contents(datatype, shape, field, data):
    values = data.draw(st.lists(_V2_FIELDS[field], max_size=64))
    contents = service_pb2.InferTensorContents(**{field: values})
    body = contents.ByteSize()

    def decode():
        header = open_inference.check_header("x", datatype, shape)
        return open_inference.to_numpy(open_inference.WireTensor("x", *header, contents, "contents"))
    _bounded(decode, body + 16)


_TP_FIELDS = {types_pb2.DT_FLOAT: ("float_val", st.floats(width=32)), types_pb2.DT_INT32: ("int_val", st.integers(-5, 5)),
              types_pb2.DT_INT64: ("int64_val", st.integers(-2**63, 2**63 - 1)),
              types_pb2.DT_DOUBLE: ("double_val", st.floats()), types_pb2.DT_BOOL: ("bool_val", st.booleans()),
              types_pb2.DT_STRING: ("string_val", st.binary(max_size=8)), types_pb2.DT_HALF: ("half_val", st.integers(0, 65535)),
              types_pb2.DT_UINT8: ("int_val", st.integers(0, 255))}


@FUZZ
@given(dtype=st.sampled_from(sorted(_TP_FIELDS)), shape=SHAPES, data=st.data(), content=st.booleans(),
       raw=st.binary(max_size=256))
def test_tensor_proto_typed_content_and_strings(dtype, shape, data, content, raw):
    field, values = _TP_FIELDS[dtype]
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for d in shape:
        proto.tensor_shape.dim.add(size=d)
    if content:
        proto.tensor_content = raw
    else:
        getattr(proto, field).extend(data.draw(st.lists(values, max_size=64)))
    single = not content and len(getattr(proto, field)) == 1
    # One value fills its shape, as in TensorFlow: bounded by MAX_BROADCAST_BYTES, not by the body.
    _bounded(lambda: tensor_proto.to_numpy(proto, "input 'x'"), proto.ByteSize() + 16,
             2 * MAX_BROADCAST_BYTES if single else 0)


@FUZZ
@given(dtype=st.sampled_from([types_pb2.DT_FLOAT, types_pb2.DT_INT64, types_pb2.DT_STRING, types_pb2.DT_BOOL]),
       rows=st.one_of(st.lists(st.floats(allow_nan=False), max_size=32),
                      st.lists(st.lists(st.integers(-9, 9), max_size=6), max_size=6),
                      st.lists(st.text(max_size=6), max_size=32),
                      st.lists(st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=32)),
                               max_size=16)),
       columnar=st.booleans())
def test_tf_serving_json_rows_columns_and_b64(dtype, rows, columnar):
    body = orjson.dumps({"inputs": rows} if columnar else {"instances": rows})

    def decode():
        parsed = json_codec.parse_predict_body(json_codec.parse_json(body))
        return json_codec.decode_inputs(parsed, {"x": dtype})
    _bounded(decode, len(body))


def test_a_single_value_fills_at_most_max_broadcast_bytes():
    """A 20-byte TensorProto may ask TensorFlow's fill rule for gigabytes: past the cap it is refused."""
    for dims, ok in (([1 << 20], True), ([1 << 23], False), ([1 << 26], False)):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
        proto.tensor_shape.dim.add(size=dims[0])
        if ok:
            assert tensor_proto.to_numpy(proto).shape == tuple(dims)
        else:
            try:
                tensor_proto.to_numpy(proto)
            except ServingError as e:
                assert e.code == Code.INVALID_ARGUMENT and "refusing to fill" in e.message
            else:
                raise AssertionError(f"{dims} was filled")
