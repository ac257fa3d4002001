"""Classify and Regress on Example-based signatures: checks and result protos.

TF Serving's rules: the signature takes one string tensor of serialized
tf.Examples; a classification signature outputs ``classes`` (string) and/or
``scores`` (float), [batch, num_classes]; a regression signature outputs
``outputs`` (float), [batch] or [batch, 1].
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from tensorflow_serving.apis import classification_pb2, regression_pb2

from pyserving.errors import ServingError
from pyserving.runtime.servable import Signature

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"


def check_method(signature: Signature, expected: str, strict: bool) -> None:
    """Method names must fit; without ``strict`` a predict signature of the right shape passes,
    as TF Serving 2.x allows (--enable_signature_method_name_check makes it strict)."""
    method = signature.method_name
    if method == expected or (not strict and method in ("", PREDICT_METHOD)):
        return
    raise ServingError.invalid_argument(
        f"Expected {signature.key!r} to be a signature with method_name {expected}. Was: {method}")


def examples_input(signature: Signature) -> str:
    """The one input that takes the serialized tf.Examples. Its declared dtype is not checked, as
    in TF Serving: the graph's own placeholder decides (half_plus_three declares DT_FLOAT for a
    string placeholder)."""
    if len(signature.inputs) != 1:
        raise ServingError.invalid_argument(
            f"Expected one input Tensor (serialized tf.Examples) in signature {signature.key!r}, "
            f"found {len(signature.inputs)}")
    return next(iter(signature.inputs))


def classification_outputs(signature: Signature) -> list[str]:
    names = [n for n in (CLASSES, SCORES) if n in signature.outputs]
    if not names:
        raise ServingError.invalid_argument(
            f"Expected classification signature {signature.key!r} outputs to contain at least "
            f"one of {CLASSES} or {SCORES}")
    return names


def regression_outputs(signature: Signature) -> list[str]:
    if OUTPUTS not in signature.outputs:
        raise ServingError.invalid_argument(
            f"Expected regression signature {signature.key!r} to have an output named {OUTPUTS}")
    return [OUTPUTS]


def _batch_matrix(array: np.ndarray, name: str, batch: int) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] != batch:
        raise ServingError.invalid_argument(
            f"Expected {name} Tensor of shape [batch_size num_classes] with batch_size {batch} "
            f"but got {list(array.shape)}")
    return array


def classification_result(outputs: Mapping[str, np.ndarray], batch: int) -> classification_pb2.ClassificationResult:
    classes = outputs.get(CLASSES)
    scores = outputs.get(SCORES)
    if classes is not None:
        classes = _batch_matrix(classes, CLASSES, batch)
    if scores is not None:
        scores = _batch_matrix(scores, SCORES, batch)
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise ServingError.invalid_argument(
            f"Tensors class and score should match in shape: {list(classes.shape)} vs {list(scores.shape)}")
    some = classes if classes is not None else scores
    assert some is not None  # classification_outputs() guarantees one of them
    width = some.shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(batch):
        classification = result.classifications.add()
        labels = classes[i].tolist() if classes is not None else [b""] * width
        values = scores[i].tolist() if scores is not None else [0.0] * width
        for label, score in zip(labels, values):
            classification.classes.add(
                label=label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label),
                score=score)
    return result


def regression_result(outputs: Mapping[str, np.ndarray], batch: int) -> regression_pb2.RegressionResult:
    values = outputs[OUTPUTS]
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != batch:
        raise ServingError.invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] with "
            f"batch_size {batch} but got {list(outputs[OUTPUTS].shape)}")
    result = regression_pb2.RegressionResult()
    for v in values.astype(np.float32).tolist():
        result.regressions.add(value=v)
    return result
