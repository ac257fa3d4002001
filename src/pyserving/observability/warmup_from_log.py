"""`pyserving warmup-from-log`: request logs (a model's logging_config) -> a version's warmup file.

A request log and a warmup file are the same format, a TFRecord of tensorflow.serving.PredictionLog,
so a new version can warm up on the traffic the old one served: the Predict, Classify, Regress and
MultiInference records are copied in the order given (responses dropped: warmup replays only
requests) up to ``--max`` (default 1000, the most TF Serving's warmup reads), and the file is
written beside its place and renamed in, so a server polling the version folder never reads half
of it. TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

MAX_RECORDS = 1000  # runtime/warmup.py's MAX_RECORDS (TF Serving's cap); kept here so --help imports no TF
REPLAYABLE = ("predict_log", "classify_log", "regress_log", "multi_inference_log")


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "warmup-from-log", allow_abbrev=False,
        help="turn request log files into a version's assets.extra/tf_serving_warmup_requests")
    parser.add_argument("--log", nargs="+", required=True, metavar="FILE",
                        help="request log files (TFRecord of PredictionLog), read in the order given")
    parser.add_argument("--output", required=True,
                        help="the warmup file to write (VERSION_DIR/assets.extra/tf_serving_warmup_requests), "
                             "or a version folder to write it in")
    parser.add_argument("--max", type=_record_count, default=MAX_RECORDS,
                        help=f"most records to copy (default: {MAX_RECORDS}, the most a warmup file may hold)")
    parser.add_argument("--model", default="", help="copy only this model's records (log_metadata.model_spec.name)")
    parser.set_defaults(func=run)
    return parser


def _record_count(text: str) -> int:
    value = int(text)
    if not 0 < value <= MAX_RECORDS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_RECORDS}, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from pyserving.runtime.quiet import claim_log_level, import_tensorflow

    import_tensorflow(claim_log_level(), probe_devices=False)  # the protos import it, quietly here
    try:
        records, skipped = read_requests(args.log, args.max, args.model)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not records:
        which = f" of model {args.model}" if args.model else ""
        print(f"error: no Predict, Classify, Regress or MultiInference records{which} in {' '.join(args.log)}",
              file=sys.stderr)
        return 1
    output = warmup_file(args.output)
    write_records(output, records)
    notes = [f"stopped at --max {args.max}"] if len(records) == args.max else []
    notes += [f"skipped {skipped} record(s) warmup can't replay"] if skipped else []
    print(f"Wrote {len(records)} warmup records to {output}" + (f" ({'; '.join(notes)})" if notes else ""))
    return 0


def read_requests(paths: list[str], limit: int, model: str = "") -> tuple[list[bytes], int]:
    """Serialized PredictionLogs without their responses, at most ``limit``; and how many records of
    kinds warmup can't replay were skipped. A corrupt or cut-short record (a server killed while
    writing) ends its file with a warning; a file that is not a request log is a ValueError."""
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    from pyserving.codecs.tfrecord import TFRecordError, read_file

    records: list[bytes] = []
    skipped = 0
    for path in paths:
        try:
            for index, data in enumerate(read_file(path)):
                try:
                    record = prediction_log_pb2.PredictionLog.FromString(data)
                except DecodeError:
                    raise ValueError(f"{path}: record {index} is not a tensorflow.serving.PredictionLog") from None
                kind = record.WhichOneof("log_type")
                if model and record.log_metadata.model_spec.name != model:
                    continue
                if kind not in REPLAYABLE:
                    skipped += 1
                    continue
                getattr(record, kind).ClearField("response")
                records.append(record.SerializeToString())
                if len(records) == limit:
                    return records, skipped
        except TFRecordError as e:
            print(f"warning: {e}; the rest of this file is skipped", file=sys.stderr)
    return records, skipped


def warmup_file(output: str) -> str:
    from pyserving.runtime.warmup import WARMUP_FILE

    return os.path.join(output, WARMUP_FILE) if os.path.isdir(output) else output


def write_records(path: str, records: list[bytes]) -> None:
    from pyserving.codecs.tfrecord import frame

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    staging = f"{path}.tmp-{os.getpid()}"
    try:
        with open(staging, "wb") as f:
            for data in records:
                f.write(frame(data))
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
