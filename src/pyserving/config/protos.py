"""TF Serving config protos that the tensorflow-serving-api wheel does not ship.

SSLConfig, MonitoringConfig and BatchingParameters are small; their descriptors are built here, field
for field as in tensorflow_serving/config/{ssl,monitoring}_config.proto and
session_bundle_config.proto, so the
same text files TF Serving reads parse here too.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import text_format

from pyserving.storage.files import is_remote, read_bytes

from .proto_builder import REPEATED, F, build_messages

_I64, _BOOL = ".google.protobuf.Int64Value", ".google.protobuf.BoolValue"
_CLASSES = build_messages("pyserving/tf_serving_extra_config.proto", "tensorflow.serving", {
    "SSLConfig": [("server_key", 1, F.TYPE_STRING, ""), ("server_cert", 2, F.TYPE_STRING, ""),
                  ("custom_ca", 3, F.TYPE_STRING, ""), ("client_verify", 4, F.TYPE_BOOL, "")],
    "PrometheusConfig": [("enable", 1, F.TYPE_BOOL, ""), ("path", 2, F.TYPE_STRING, "")],
    "MonitoringConfig": [("prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")],
    # session_bundle_config.proto's BatchingParameters (text format reads fields by name).
    "BatchingParameters": [
        ("max_batch_size", 1, F.TYPE_MESSAGE, _I64), ("batch_timeout_micros", 2, F.TYPE_MESSAGE, _I64),
        ("max_enqueued_batches", 3, F.TYPE_MESSAGE, _I64), ("num_batch_threads", 4, F.TYPE_MESSAGE, _I64),
        ("thread_pool_name", 5, F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, F.TYPE_INT64, REPEATED),
        ("pad_variable_length_inputs", 7, F.TYPE_BOOL, ""),
        ("enable_large_batch_splitting", 8, F.TYPE_MESSAGE, _BOOL),
        ("max_execution_batch_size", 9, F.TYPE_MESSAGE, _I64),
    ],
})
SSLConfig = _CLASSES["SSLConfig"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
BatchingParameters = _CLASSES["BatchingParameters"]


class ConfigFileError(ValueError):
    pass


def read_text_proto(path: str, message_class: Any, flag: str = "") -> Any:
    """Parse a text-format config file (``flag``: the one that names it), with TF Serving's
    wording when it doesn't parse, and the flag's name when it can't be read."""
    name = message_class.DESCRIPTOR.full_name
    try:
        text = _read_text(path)
    except OSError as e:
        where = f"{flag}={path}" if flag else path
        raise ConfigFileError(f"{where}: cannot read the file: {e.strerror or e}") from e
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ConfigFileError(f"Error parsing text-format {name}: {path}: {e}") from e
    return message


def _read_text(path: str) -> str:
    if is_remote(path):  # a config file in object storage
        return read_bytes(path).decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()
