"""TensorProto <-> numpy, for every dtype TF Serving supports.

Inputs may use ``tensor_content`` (zero-copy view) or the typed repeated
fields; outputs use the typed fields, as the official clients read
``float_val`` and friends, unless tensor_content is asked for.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from ..errors import ServingError
from . import limits
from .dtypes import BY_ENUM, DType, dtype_name, from_numpy_dtype

_HALF_BITS = (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
# One value filling a shape (TensorFlow's rule) allocates what the client declared, not what it sent:
# bounded in bytes, so a 20-byte request can't cost more than this.
MAX_BROADCAST_BYTES = 16 << 20
_COMPLEX = (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128)


def _shape(proto: tensor_pb2.TensorProto, what: str) -> tuple[tuple[int, ...], int]:
    """The claimed shape and its element count, checked (limits.py) before anything is allocated."""
    if proto.tensor_shape.unknown_rank:
        raise ServingError.invalid_argument(f"{what}: tensor shape must have a known rank")
    limits.check_rank(len(proto.tensor_shape.dim), what)
    dims = tuple(d.size for d in proto.tensor_shape.dim)
    return dims, limits.check_shape(dims, what)


def to_numpy(proto: tensor_pb2.TensorProto, what: str = "tensor") -> np.ndarray:
    """Decode a request TensorProto; ``what`` names it in error messages."""
    dt = BY_ENUM.get(proto.dtype)
    if dt is None:
        raise ServingError.invalid_argument(f"{what}: unsupported dtype {dtype_name(proto.dtype)}")
    shape, count = _shape(proto, what)
    if dt.is_string:
        flat = _strings(proto, shape, count, what)
    elif proto.tensor_content:
        flat = _from_content(proto.tensor_content, dt, count, what)
    else:
        values = len(getattr(proto, dt.field)) // (2 if proto.dtype in _COMPLEX else 1)
        _check_count(values, shape, count, what)
        try:
            flat = _from_typed(proto, dt)
        except (OverflowError, ValueError) as e:
            raise ServingError.invalid_argument(f"{what}: bad {dt.name} value: {e}") from None
    return _fit(flat, shape, count, what)


def _check_count(values: int, shape: tuple[int, ...], count: int, what: str) -> None:
    """Before converting: as many values as the shape needs, or one to fill it."""
    if values not in (count, 1):
        raise ServingError.invalid_argument(
            f"{what}: tensor has {values} values but its shape {list(shape)} needs {count}")


def _strings(proto: tensor_pb2.TensorProto, shape: tuple[int, ...], count: int, what: str) -> np.ndarray:
    if proto.tensor_content:
        raise ServingError.invalid_argument(
            f"{what}: string tensors must use string_val, not tensor_content")
    _check_count(len(proto.string_val), shape, count, what)
    values = list(proto.string_val)
    total = sum(map(len, values))
    # One value fills the shape: TensorFlow copies it into every element.
    limits.check_string_bytes(total * count if len(values) == 1 else total, what)
    flat = np.empty(len(values), dtype=object)
    flat[:] = values
    return flat


def _from_content(content: bytes, dt: DType, count: int, what: str) -> np.ndarray:
    if len(content) != count * dt.numpy.itemsize:
        raise ServingError.invalid_argument(
            f"{what}: tensor_content has {len(content)} bytes but shape and dtype "
            f"{dt.name} need {count * dt.numpy.itemsize}")
    return np.frombuffer(content, dtype=dt.numpy)


# Each typed field's storage type. numpy reads these containers directly (no Python object
# per element); narrower dtypes are range-checked before the cast, never wrapped around.
_STORAGE = {
    "float_val": np.float32, "double_val": np.float64, "int_val": np.int32, "int64_val": np.int64,
    "uint32_val": np.uint32, "uint64_val": np.uint64, "bool_val": np.bool_, "half_val": np.int32,
    "scomplex_val": np.float32, "dcomplex_val": np.float64,
}


def _from_typed(proto: tensor_pb2.TensorProto, dt: DType) -> np.ndarray:
    stored: np.ndarray = np.asarray(getattr(proto, dt.field), dtype=_STORAGE[dt.field])
    if proto.dtype in _COMPLEX:
        if stored.size % 2:
            raise ValueError("complex values come in (real, imaginary) pairs")
        return stored.view(dt.numpy)
    target = np.dtype(np.uint16) if proto.dtype in _HALF_BITS else dt.numpy
    if target != stored.dtype and target.kind in "iu" and stored.size:
        limits = np.iinfo(target)
        if stored.min() < limits.min or stored.max() > limits.max:
            raise OverflowError(f"a value is out of range for {target}")
    converted = stored.astype(target, copy=False)
    return converted.view(dt.numpy) if proto.dtype in _HALF_BITS else converted


def _fit(flat: np.ndarray, shape: tuple[int, ...], count: int, what: str) -> np.ndarray:
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size == 1:
        # TensorFlow's own rule: one value fills the whole shape -- within reason, since the
        # shape comes from the client and could ask for terabytes.
        size = count * (flat.itemsize + (len(flat[0]) if flat.dtype == object else 0))
        if size > MAX_BROADCAST_BYTES:
            raise ServingError.invalid_argument(
                f"{what}: refusing to fill shape {list(shape)} ({count} elements, {size} bytes) from a "
                f"single value: at most {MAX_BROADCAST_BYTES} bytes are filled from one")
        return np.full(shape, flat[0], dtype=flat.dtype)
    raise ServingError.invalid_argument(
        f"{what}: tensor has {flat.size} values but its shape {list(shape)} needs {count}")


def from_numpy(array: np.ndarray, tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """Encode an output array; typed repeated fields unless ``tensor_content``."""
    array = np.asarray(array)
    dt = from_numpy_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(
        dtype=dt.enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]))
    if dt.is_string:
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
    elif tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    elif dt.enum in _PACKED_RAW:
        # Fixed-width packed fields are the array's own little-endian bytes: hand them to
        # the protobuf parser instead of making a Python object per element.
        field_number, wire_dtype = _PACKED_RAW[dt.enum]
        raw = np.ascontiguousarray(array, dtype=wire_dtype).tobytes()
        proto.MergeFromString(_key(field_number) + _varint(len(raw)) + raw)
    else:
        getattr(proto, dt.field).extend(_typed_values(array, dt))
    return proto


# DataType -> (TensorProto field number, little-endian wire dtype) for packed fields whose
# encoding is the raw values: fixed32/fixed64 floats, and bools (one byte, 0 or 1).
_PACKED_RAW = {
    types_pb2.DT_FLOAT: (5, "<f4"),
    types_pb2.DT_DOUBLE: (6, "<f8"),
    types_pb2.DT_COMPLEX64: (9, "<c8"),
    types_pb2.DT_BOOL: (11, "u1"),
    types_pb2.DT_COMPLEX128: (12, "<c16"),
}


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited (packed)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _typed_values(array: np.ndarray, dt: DType) -> list:
    flat = np.ascontiguousarray(array).reshape(-1)
    if dt.enum in _HALF_BITS:
        return flat.view(np.uint16).tolist()
    if dt.enum in _COMPLEX:
        return flat.view(flat.real.dtype).tolist()
    return flat.tolist()


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")
