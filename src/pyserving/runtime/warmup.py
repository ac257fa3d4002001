"""Model warmup: replay assets.extra/tf_serving_warmup_requests before serving a version.

The file is a TFRecord of tensorflow.serving.PredictionLog (at most 1000
records). Each request runs ``iterations`` times on the freshly loaded
servable, so the first real request does not pay for lazy initialisation. A
record that fails makes the load fail, as in TF Serving.
"""

from __future__ import annotations

import os

import numpy as np

from ..codecs import tensor_proto, tfrecord
from ..codecs.examples import serialize_input
from ..errors import Code, ServingError
from .servable import DEFAULT_SIGNATURE, Servable, find_signature, validate_inputs, validate_output_filter

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


def warmup_path(version_path: str) -> str | None:
    path = os.path.join(version_path, WARMUP_FILE)
    return path if os.path.isfile(path) else None


def read_warmup_records(path: str) -> list:
    """The file's PredictionLogs. Read with our own framing, each record's length checked against
    the file's size first: TensorFlow's reader allocates what a header declares (a 112-byte file
    declaring 2^40 bytes ended the process)."""
    from tensorflow_serving.apis import prediction_log_pb2

    records: list = []
    try:
        for raw in tfrecord.read_file(path, f"warmup file {path}"):
            if len(records) == MAX_RECORDS:
                raise ServingError.invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) in {path}")
            records.append(prediction_log_pb2.PredictionLog.FromString(raw))
    except ServingError:
        raise
    except tfrecord.TFRecordError as e:  # names the file and the record
        raise ServingError(Code.DATA_LOSS, f"Cannot read {e}") from None
    except Exception as e:  # corrupt proto, unreadable file
        raise ServingError(Code.DATA_LOSS, f"Cannot read warmup file {path}: {e}") from e
    return records


def run_warmup(servable: Servable, path: str, iterations: int = 1) -> int:
    """Replay every record; returns how many requests ran."""
    records = read_warmup_records(path)
    for record in records:
        for _ in range(max(iterations, 1)):
            try:
                _replay(servable, record)
            except ServingError as e:
                raise ServingError(e.code, f"Model warmup failed ({path}): {e.message}") from None
    return len(records) * max(iterations, 1)


def _replay(servable: Servable, record) -> None:
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request = record.predict_log.request
        inputs = {k: tensor_proto.to_numpy(v, f"input '{k}'") for k, v in request.inputs.items()}
        _run(servable, request.model_spec.signature_name, inputs, tuple(request.output_filter))
    elif kind in ("classify_log", "regress_log"):
        request = getattr(record, kind).request
        _run_examples(servable, request.model_spec.signature_name, serialize_input(request.input))
    elif kind == "multi_inference_log":
        request = record.multi_inference_log.request
        serialized = serialize_input(request.input)
        for task in request.tasks:
            _run_examples(servable, task.model_spec.signature_name, serialized)
    else:
        raise ServingError.invalid_argument(f"Unsupported warmup log type: {kind}")


def _run(servable: Servable, signature_name: str, inputs, output_filter=()) -> None:
    signature = find_signature(servable, signature_name or DEFAULT_SIGNATURE)
    validate_inputs(signature, inputs)
    validate_output_filter(signature, output_filter)
    servable.run(signature.key, inputs, output_filter)


def _run_examples(servable: Servable, signature_name: str, serialized: list[bytes]) -> None:
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None or len(signature.inputs) != 1:
        raise ServingError.invalid_argument(f"Signature {name!r} does not take serialized tf.Examples")
    batch = np.empty(len(serialized), dtype=object)
    batch[:] = serialized
    _run(servable, name, {next(iter(signature.inputs)): batch})
