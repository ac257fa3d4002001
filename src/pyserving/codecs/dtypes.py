"""TensorFlow DataType <-> numpy dtype, and the TensorProto field each uses."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from tensorflow.core.framework import types_pb2


@dataclass(frozen=True)
class DType:
    enum: int
    name: str  # TF's DataTypeString, e.g. "float", "int64"
    numpy: np.dtype
    field: str  # TensorProto repeated field for the typed encoding

    @property
    def is_string(self) -> bool:
        return self.enum == types_pb2.DT_STRING


def _d(enum: int, name: str, np_dtype, field: str) -> DType:
    return DType(enum, name, np.dtype(np_dtype), field)


_ALL = [
    _d(types_pb2.DT_FLOAT, "float", np.float32, "float_val"),
    _d(types_pb2.DT_DOUBLE, "double", np.float64, "double_val"),
    _d(types_pb2.DT_INT32, "int32", np.int32, "int_val"),
    _d(types_pb2.DT_UINT8, "uint8", np.uint8, "int_val"),
    _d(types_pb2.DT_INT16, "int16", np.int16, "int_val"),
    _d(types_pb2.DT_INT8, "int8", np.int8, "int_val"),
    _d(types_pb2.DT_UINT16, "uint16", np.uint16, "int_val"),
    _d(types_pb2.DT_INT64, "int64", np.int64, "int64_val"),
    _d(types_pb2.DT_UINT32, "uint32", np.uint32, "uint32_val"),
    _d(types_pb2.DT_UINT64, "uint64", np.uint64, "uint64_val"),
    _d(types_pb2.DT_BOOL, "bool", np.bool_, "bool_val"),
    _d(types_pb2.DT_STRING, "string", object, "string_val"),
    _d(types_pb2.DT_HALF, "half", np.float16, "half_val"),
    _d(types_pb2.DT_BFLOAT16, "bfloat16", ml_dtypes.bfloat16, "half_val"),
    _d(types_pb2.DT_COMPLEX64, "complex64", np.complex64, "scomplex_val"),
    _d(types_pb2.DT_COMPLEX128, "complex128", np.complex128, "dcomplex_val"),
]

BY_ENUM: dict[int, DType] = {d.enum: d for d in _ALL}
BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in _ALL if d.enum != types_pb2.DT_STRING}


def dtype_name(enum: int) -> str:
    d = BY_ENUM.get(enum)
    if d is not None:
        return d.name
    return types_pb2.DataType.Name(enum)[3:].lower() if enum in types_pb2.DataType.values() else str(enum)


def from_numpy_dtype(dtype: np.dtype) -> DType:
    if dtype.kind in "OSU":
        return BY_ENUM[types_pb2.DT_STRING]
    try:
        return BY_NUMPY[dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no TensorFlow equivalent") from None


def narrow(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``; a float past a narrower float's range becomes inf, as in TF Serving's
    JSON reader, without numpy's overflow warning in the server's log for each client who sends one."""
    if values.dtype.kind == "f" and dtype.kind == "f" and values.dtype.itemsize > dtype.itemsize:
        with np.errstate(over="ignore"):
            return values.astype(dtype, copy=False)
    return values.astype(dtype, copy=False)
