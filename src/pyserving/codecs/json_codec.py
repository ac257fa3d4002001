"""JSON <-> numpy for TF Serving's REST predict formats.

Request: ``instances`` (row format) or ``inputs`` (columnar), values typed by
the signature's input dtypes, ``{"b64": ...}`` for binary strings, and the
non-standard ``NaN`` / ``Infinity`` literals that Python's json accepts.
Response: ``predictions`` for row requests, ``outputs`` for columnar; a lone
output is given without its name.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import ml_dtypes
import numpy as np
import orjson

from ..errors import ServingError
from . import limits
from .dtypes import BY_ENUM, DType, narrow

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class PredictBody:
    signature_name: str
    row_format: bool
    payload: Any  # the value of "instances" or "inputs"


def parse_json(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # NaN/Infinity, huge numbers, lone surrogates, or a real error: the standard parser decides
    try:
        value = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float)
    except (ValueError, UnicodeDecodeError) as e:
        raise ServingError.invalid_argument(f"JSON Parse error: {e}") from None
    except RecursionError:
        raise ServingError.invalid_argument("JSON Parse error: the body nests too deeply") from None
    # json accepts "\ud800" (orjson and TF Serving's RapidJSON do not): such a string can become
    # no proto field, tensor or log line, so it is refused here, wherever it is.
    escaped = (_SURROGATE_ESCAPE_BYTES.search(raw) if isinstance(raw, bytes)
               else _SURROGATE_ESCAPE_TEXT.search(raw))
    if escaped:
        where = _lone_surrogate(value)
        if where is not None:
            raise ServingError.invalid_argument(
                f"JSON Parse error: {where} holds a lone surrogate (\\ud800-\\udfff), which is not valid UTF-8")
    return value


_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> str | None:
    """Where the first string (or object key) with an unpaired surrogate is, e.g. "examples[0].x"."""
    stack: list[tuple[Any, tuple | None]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return f"the string at {_path_text(path)}"
        elif isinstance(item, list):
            stack.extend((v, (path, i)) for i, v in enumerate(item))
        elif isinstance(item, dict):
            for key, v in item.items():
                if _SURROGATE.search(key):
                    return f"a key of the object at {_path_text(path)}"
                stack.append((v, (path, key)))
    return None


def _path_text(path: tuple | None) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".") or "the top level"


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _parse_int(text: str) -> int | float:
    """As orjson (and TF Serving's RapidJSON) read integers: int64/uint64, else a double -- and
    never Python's int() of thousands of digits (its conversion limit is a ValueError)."""
    if len(text) <= 21:
        value = int(text)
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
    return _parse_float(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # a finite literal past the double range; Infinity is a constant
        raise ValueError(f"number {text[:24]}{'...' if len(text) > 24 else ''} is out of range for a double")
    return value


def parse_predict_body(body: Any) -> PredictBody:
    if not isinstance(body, dict):
        raise ServingError.invalid_argument("JSON Value: request body must be a JSON object")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        if has_instances:
            raise ServingError.invalid_argument("Not both 'instances' and 'inputs' can be specified")
        raise ServingError.invalid_argument("Missing 'inputs' or 'instances' key")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise ServingError.invalid_argument("'signature_name' key must be a string value")
    payload = body["instances"] if has_instances else body["inputs"]
    return PredictBody(signature_name, has_instances, payload)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def decode_inputs(body: PredictBody, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Tensors for the signature's inputs (alias -> DataType enum)."""
    if body.row_format:
        return _decode_rows(body.payload, input_dtypes)
    return _decode_columns(body.payload, input_dtypes)


def _decode_rows(instances: Any, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise ServingError.invalid_argument("'instances' must be a JSON list")
    if not instances:
        raise ServingError.invalid_argument("'instances' is an empty list")
    if isinstance(instances[0], dict) and not _is_b64(instances[0]):
        return _decode_named_rows(instances, input_dtypes)
    name = _only_input(input_dtypes, "instances")
    return {name: to_array(instances, input_dtypes[name], name)}


def _decode_named_rows(instances: list, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    keys = set(instances[0])
    columns: dict[str, list] = {k: [] for k in keys}
    for i, row in enumerate(instances):
        if not isinstance(row, dict) or _is_b64(row) or set(row) != keys:
            raise ServingError.invalid_argument(
                f"Failed to process element: {i} of 'instances' list. "
                f"All objects in 'instances' must have the same keys: {sorted(keys)}")
        for k, v in row.items():
            columns[k].append(v)
    return {k: to_array(v, _dtype_of(input_dtypes, k), k) for k, v in columns.items()}


def _decode_columns(inputs: Any, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {k: to_array(v, _dtype_of(input_dtypes, k), k) for k, v in inputs.items()}
    name = _only_input(input_dtypes, "inputs")
    return {name: to_array(inputs, input_dtypes[name], name)}


def _only_input(input_dtypes: Mapping[str, int], key: str) -> str:
    if len(input_dtypes) != 1:
        raise ServingError.invalid_argument(
            f"The signature has {len(input_dtypes)} inputs ({', '.join(sorted(input_dtypes))}): "
            f"'{key}' must name them as JSON objects keyed by input name")
    return next(iter(input_dtypes))


def _dtype_of(input_dtypes: Mapping[str, int], name: str) -> int:
    try:
        return input_dtypes[name]
    except KeyError:
        # Validation against the signature reports it with the full picture.
        return 0


def to_array(value: Any, dtype_enum: int, name: str) -> np.ndarray:
    dt = BY_ENUM.get(dtype_enum)
    # The nesting is the rank: refused before numpy builds anything from it.
    limits.check_rank(_depth(value), f"input '{name}'")
    try:
        if dt is None:
            return np.asarray(value)
        if dt.is_string:
            return _string_array(value)
        if _contains_b64(value):
            raise ServingError.invalid_argument(
                f"input '{name}': b64 values are only allowed for string (DT_STRING) inputs, "
                f"this input is {dt.name}")
        return _numeric_array(value, dt)
    except ServingError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise ServingError.invalid_argument(f"input '{name}': {_reason(e, dt)}") from None
    except RecursionError:
        raise ServingError.invalid_argument(f"input '{name}': the values nest too deeply") from None


def _depth(value: Any) -> int:
    """How deep lists nest along the first elements (the JSON parsers bound it at about 1000)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def _reason(e: Exception, dt: DType | None) -> str:
    text = str(e)
    if "inhomogeneous" in text or "sequence" in text:
        return "values must form a regular (non-ragged) array with the same length on every row"
    return f"cannot convert the values to {dt.name if dt else 'a tensor'}: {text}"


def _numeric_array(value: Any, dt: DType) -> np.ndarray:
    probe = np.asarray(value)
    if probe.dtype.kind in "USO":
        raise ValueError(f"expected {dt.name} values but got strings or mixed values")
    if dt.numpy.kind == "b":
        if probe.dtype.kind != "b":
            raise ValueError("expected true/false values")
        return probe
    if dt.numpy.kind in "iu":
        if probe.dtype.kind == "f":
            raise ValueError(f"expected {dt.name} values but got floating-point numbers")
        if probe.size and (probe.min() < np.iinfo(dt.numpy).min or probe.max() > np.iinfo(dt.numpy).max):
            raise ValueError(f"a value is out of range for {dt.name}")
        return probe.astype(dt.numpy, copy=False)
    return narrow(probe, dt.numpy)


def _contains_b64(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return _is_b64(value)


def _string_array(value: Any) -> np.ndarray:
    converted = _to_bytes_nested(value)
    shape = _nested_shape(converted)
    _check_regular(converted, shape)
    array = np.empty(shape, dtype=object)
    if shape:
        array[...] = converted
    else:
        array[()] = converted
    return array


def _check_regular(value: Any, shape: tuple[int, ...]) -> None:
    """numpy would broadcast ragged lists of objects silently; refuse them instead."""
    if not shape:
        if isinstance(value, list):
            raise ValueError("values must form a regular (non-ragged) array")
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise ValueError("values must form a regular (non-ragged) array with the same length on every row")
    for item in value:
        _check_regular(item, shape[1:])


def _nested_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _to_bytes_nested(value: Any) -> Any:
    if isinstance(value, list):
        return [_to_bytes_nested(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ValueError("'b64' value is not valid base64") from None
    raise ValueError(f"expected a string or {{\"b64\": ...}} but got {json.dumps(value)[:40]}")


# ---- responses -------------------------------------------------------------

def encode_outputs(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    if row_format:
        body = {"predictions": _rows(outputs)}
    elif len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        body = {"outputs": to_json_value(array, name)}
    else:
        body = {"outputs": {k: to_json_value(v, k) for k, v in outputs.items()}}
    # orjson writes numpy arrays natively, float32 in its shortest form, but NaN and Infinity as
    # null: a null in its output (rare, and a byte search) sends the body to the standard encoder,
    # which prints them as TF Serving does.
    encoded = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" not in encoded or all(_finite(v) for v in outputs.values()):
        return encoded
    return json.dumps(body, separators=(",", ":"), default=_plain).encode("utf-8")


def _finite(array: np.ndarray) -> bool:
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _rows(outputs: Mapping[str, np.ndarray]) -> Any:
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        return to_json_value(array, name)
    sizes = {k: (v.shape[0] if v.ndim else -1) for k, v in outputs.items()}
    batch = set(sizes.values())
    if len(batch) != 1 or -1 in batch:
        raise ServingError.invalid_argument(
            "Tensors in the output have inconsistent or missing batch sizes "
            f"({', '.join(f'{k}: {s}' for k, s in sizes.items())}); use the columnar 'inputs' format")
    columns = {k: to_json_value(v, k) for k, v in outputs.items()}
    rows = batch.pop()
    return [{k: columns[k][i] for k in columns} for i in range(rows)]


def to_json_value(array: np.ndarray, name: str) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        as_b64 = name.endswith("_bytes")
        return _strings_to_json(array.tolist(), as_b64)
    if array.dtype.kind == "c":
        return np.stack([array.real, array.imag], axis=-1).tolist()
    if array.ndim == 0:
        return array.tolist()
    if array.dtype.kind == "f" and array.dtype.itemsize < 4 or array.dtype == _BFLOAT16:  # (dtype.name: ~5 µs)
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)  # serialised as a whole by the encoder


def _strings_to_json(value: Any, as_b64: bool) -> Any:
    if isinstance(value, list):
        return [_strings_to_json(v, as_b64) for v in value]
    if isinstance(value, str):
        value = value.encode("utf-8")
    if as_b64:
        return {"b64": base64.b64encode(value).decode("ascii")}
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        # JSON cannot carry raw bytes; base64 keeps the answer valid and lossless.
        return {"b64": base64.b64encode(value).decode("ascii")}
