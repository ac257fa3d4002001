"""Open Inference Protocol (KServe V2) tensors to and from numpy.

A V2 tensor is a name, a datatype (``FP32``, ``BYTES``...), a shape and its data in one of three
forms: JSON (flat or nested, row-major), raw little-endian bytes (REST's binary extension, gRPC's
``raw_input_contents``; a BYTES element is a 4-byte little-endian length and its bytes), or
gRPC's typed ``InferTensorContents``. Every form is checked against its claimed shape before
anything is allocated for it, with INVALID_ARGUMENT naming the tensor.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tensorflow.core.framework import types_pb2

from pyserving.errors import ServingError

from . import limits
from .dtypes import BY_ENUM, narrow

# V2 datatype -> TensorFlow DataType (the table in docs/open_inference.md).
TF_ENUM = {
    "BOOL": types_pb2.DT_BOOL, "UINT8": types_pb2.DT_UINT8, "UINT16": types_pb2.DT_UINT16,
    "UINT32": types_pb2.DT_UINT32, "UINT64": types_pb2.DT_UINT64, "INT8": types_pb2.DT_INT8,
    "INT16": types_pb2.DT_INT16, "INT32": types_pb2.DT_INT32, "INT64": types_pb2.DT_INT64,
    "FP16": types_pb2.DT_HALF, "BF16": types_pb2.DT_BFLOAT16, "FP32": types_pb2.DT_FLOAT,
    "FP64": types_pb2.DT_DOUBLE, "BYTES": types_pb2.DT_STRING,
}
DATATYPE = {enum: name for name, enum in TF_ENUM.items()}
# gRPC InferTensorContents: the field each datatype's typed values go in (FP16 and BF16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def datatype_of(enum: int) -> str:
    """The V2 datatype of a TensorFlow DataType (INVALID_ARGUMENT for one V2 has no name for)."""
    try:
        return DATATYPE[enum]
    except KeyError:
        raise ServingError.invalid_argument(
            f"TensorFlow type {types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else enum} "
            "has no Open Inference Protocol datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    return BY_ENUM[TF_ENUM[datatype]].numpy


@dataclass
class WireTensor:
    """One tensor as a request carried it, before decoding."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # a JSON value, raw bytes, or an InferTensorContents message
    form: str  # "json", "raw" or "contents"


def check_header(name: str, datatype: Any, shape: Any) -> tuple[str, tuple[int, ...]]:
    """A tensor's datatype and shape as the client wrote them, checked."""
    what = f"input '{name}'"
    if not isinstance(datatype, str) or datatype not in TF_ENUM:
        raise ServingError.invalid_argument(f"{what}: unknown datatype {datatype!r}; expected one of "
                                            f"{', '.join(TF_ENUM)}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                       for d in shape):
        raise ServingError.invalid_argument(f"{what}: shape must be a list of integers")
    dims = tuple(shape)
    limits.check_shape(dims, what)
    return datatype, dims


def to_numpy(tensor: WireTensor) -> np.ndarray:
    what = f"input '{tensor.name}'"
    count = limits.check_shape(tensor.shape, what)
    if tensor.form == "raw":
        return _from_raw(tensor.data, tensor.datatype, tensor.shape, count, what)
    if tensor.form == "contents":
        values = getattr(tensor.data, CONTENTS_FIELD.get(tensor.datatype, ""), None)
        if values is None:
            raise ServingError.invalid_argument(f"{what}: {tensor.datatype} data must be sent as raw bytes")
        if len(values) != count:
            raise ServingError.invalid_argument(
                f"{what}: {len(values)} values in contents for shape {list(tensor.shape)} ({count} elements)")
        if tensor.datatype == "BYTES":
            array = np.empty(count, dtype=object)
            array[:] = list(values)
            return array.reshape(tensor.shape)
        return _cast(values, tensor.datatype, what).reshape(tensor.shape)
    return _from_json(tensor.data, tensor.datatype, tensor.shape, count, what)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], count: int, what: str) -> np.ndarray:
    flat = _flatten(data, what)
    if len(flat) != count:
        raise ServingError.invalid_argument(
            f"{what}: {len(flat)} values in data for shape {list(shape)} ({count} elements)")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ServingError.invalid_argument(f"{what}: BYTES data must be strings in JSON")
        array = np.empty(count, dtype=object)
        array[:] = [v.encode("utf-8", "surrogatepass") for v in flat]
        return array.reshape(shape)
    dtype = numpy_dtype(datatype)
    if not count:
        return np.empty(shape, dtype=dtype)
    try:
        probe = np.asarray(flat)  # one pass in C, whose kind says what the client sent
    except (ValueError, TypeError):
        probe = np.asarray([None])
    kind = probe.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise ServingError.invalid_argument(f"{what}: BOOL data must be true or false")
    elif dtype.kind in "iu":
        if kind not in "iu" and all(type(v) is int for v in flat):
            # Integers past int64 (numpy probes them as float64 or objects): converted exactly, or refused
            return _cast(flat, datatype, what).reshape(shape)
        if kind not in "iu":
            raise ServingError.invalid_argument(f"{what}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if probe.min() < info.min or probe.max() > info.max:
            raise ServingError.invalid_argument(f"{what}: data out of the range of {datatype}")
    elif kind not in "iuf":
        raise ServingError.invalid_argument(f"{what}: {datatype} data must be numbers")
    return narrow(probe, dtype).reshape(shape)


def _flatten(data: Any, what: str) -> list:
    """Nested lists in row-major order, flattened; a scalar is one element."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body can't exhaust the recursion limit
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) > limits.MAX_RANK:
                    raise ServingError.invalid_argument(f"{what}: data nested deeper than {limits.MAX_RANK}")
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _cast(values: Sequence, datatype: str, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=numpy_dtype(datatype))
    except (OverflowError, ValueError, TypeError) as e:
        raise ServingError.invalid_argument(f"{what}: data does not fit {datatype}: {e}") from None


def _from_raw(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], count: int, what: str) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_elements(memoryview(raw), count, what).reshape(shape)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ServingError.invalid_argument(
            f"{what}: {len(raw)} bytes of raw data for {datatype} shape {list(shape)} "
            f"(expected {count * dtype.itemsize})")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _bytes_elements(view: memoryview, count: int, what: str) -> np.ndarray:
    # Every element has at least its 4-byte length: a declared count the bytes can't hold is refused
    # before anything is allocated for it (the object array below costs 8 bytes an element).
    if count * _LENGTH.size > len(view):
        raise ServingError.invalid_argument(
            f"{what}: {len(view)} bytes of raw BYTES data can't hold {count} elements "
            f"(each needs at least {_LENGTH.size} bytes for its length)")
    array = np.empty(count, dtype=object)
    at = 0
    for i in range(count):
        if at + 4 > len(view):
            raise ServingError.invalid_argument(f"{what}: raw BYTES data ends after {i} of {count} elements")
        (size,) = _LENGTH.unpack_from(view, at)
        at += 4
        if at + size > len(view):
            raise ServingError.invalid_argument(f"{what}: raw BYTES element {i} claims {size} bytes past the end")
        array[i] = bytes(view[at:at + size])
        at += size
    if at != len(view):
        raise ServingError.invalid_argument(f"{what}: {len(view) - at} bytes left after {count} BYTES elements")
    return array


def to_raw(array: np.ndarray) -> bytes:
    """An output's raw bytes: little-endian row-major, BYTES length-prefixed."""
    if array.dtype == object:
        parts = []
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json_data(array: np.ndarray, name: str) -> Any:
    """An output's data for JSON: a flat row-major list (orjson takes numeric arrays as they are)."""
    if array.dtype == object:
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel()]
        except UnicodeDecodeError:
            raise ServingError.invalid_argument(
                f"output '{name}' holds bytes that are not UTF-8: request it with binary_data") from None
    if array.dtype in (BY_ENUM[types_pb2.DT_BFLOAT16].numpy, np.float16):  # orjson writes neither
        array = array.astype(np.float32)
    return np.ascontiguousarray(array).ravel()


__all__ = ["CONTENTS_FIELD", "DATATYPE", "TF_ENUM", "WireTensor", "check_header", "datatype_of", "numpy_dtype",
           "to_json_data", "to_numpy", "to_raw"]
