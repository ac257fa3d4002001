"""tf.Example inputs for Classify, Regress and MultiInference.

``Input`` protos (``example_list`` or ``example_list_with_context``) and the REST
``{"context": ..., "examples": [...]}`` body both become a list of serialized
tf.Examples, which is what Example-based signatures take.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

from tensorflow.core.example import example_pb2, feature_pb2

from ..errors import ServingError


def serialize_input(input_proto) -> list[bytes]:
    """Serialized tf.Examples from a tensorflow.serving.Input message."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = input_proto.example_list.examples
        serialized = [e.SerializeToString() for e in examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        serialized = [_with_context(with_context.context, e) for e in with_context.examples]
    else:
        raise ServingError.invalid_argument("Input is empty: set example_list or example_list_with_context")
    if not serialized:
        raise ServingError.invalid_argument("Input is empty: it holds no examples")
    return serialized


def _with_context(context: example_pb2.Example, example: example_pb2.Example) -> bytes:
    # Context features go into every example; the example's own features win.
    merged = example_pb2.Example()
    merged.CopyFrom(context)
    for name, feature in example.features.feature.items():
        merged.features.feature[name].CopyFrom(feature)
    return merged.SerializeToString()


def examples_from_json(body: Mapping[str, Any]) -> list[bytes]:
    """Serialized tf.Examples from a REST classify/regress body."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise ServingError.invalid_argument("'examples' must be a JSON list of objects")
    if not examples:
        raise ServingError.invalid_argument("'examples' is an empty list")
    context_json = body.get("context", {})
    if not isinstance(context_json, dict):
        raise ServingError.invalid_argument("'context' must be a JSON object of features")
    context = _example(context_json, "context")
    serialized = []
    for i, item in enumerate(examples):
        if not isinstance(item, dict):
            raise ServingError.invalid_argument(f"examples[{i}] must be a JSON object of features")
        serialized.append(_with_context(context, _example(item, f"examples[{i}]")))
    return serialized


def _example(features: Mapping[str, Any], where: str) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, value in features.items():
        feature = _feature(value, f"{where}.{name}")
        try:
            example.features.feature[name].CopyFrom(feature)
        except ValueError:  # UnicodeEncodeError: a lone surrogate ("\ud800") in the name
            raise ServingError.invalid_argument(
                f"feature name {name!r} in {where} is not valid UTF-8") from None
    return example


def _feature(value: Any, where: str) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if not values:
        return feature
    if all(isinstance(v, (str, dict)) for v in values):
        feature.bytes_list.value.extend(_bytes(v, where) for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if any(not _INT64_MIN <= v <= _INT64_MAX for v in values):
            raise ServingError.invalid_argument(f"feature {where}: an integer is out of the int64 range")
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        try:
            feature.float_list.value.extend(values)
        except (OverflowError, ValueError, TypeError):
            raise ServingError.invalid_argument(f"feature {where}: a number is out of the float range") from None
    else:
        raise ServingError.invalid_argument(
            f"feature {where}: values must be all strings/b64, all integers or all numbers")
    return feature


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which JSON's \u escapes can spell
            raise ServingError.invalid_argument(f"feature {where}: a string is not valid UTF-8") from None
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            pass
    raise ServingError.invalid_argument(f"feature {where}: expected a string or a valid {{\"b64\": ...}}")
