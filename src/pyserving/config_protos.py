"""TF Serving config protos that the tensorflow-serving-api wheel does not ship.

SSLConfig, MonitoringConfig and BatchingParameters are small; their descriptors are built here, field
for field as in tensorflow_serving/config/{ssl,monitoring}_config.proto and
session_bundle_config.proto, so the
same text files TF Serving reads parse here too.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="pyserving/tf_serving_extra_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])

    def message(name: str, fields: list[tuple[str, int, int, str]]) -> None:
        msg = fd.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            repeated = type_name == "repeated"
            msg.field.add(name=field_name, number=number, type=kind,
                          label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
                          type_name=None if repeated else (type_name or None), json_name=field_name)

    message("SSLConfig", [("server_key", 1, _F.TYPE_STRING, ""), ("server_cert", 2, _F.TYPE_STRING, ""),
                          ("custom_ca", 3, _F.TYPE_STRING, ""), ("client_verify", 4, _F.TYPE_BOOL, "")])
    message("PrometheusConfig", [("enable", 1, _F.TYPE_BOOL, ""), ("path", 2, _F.TYPE_STRING, "")])
    message("MonitoringConfig", [("prometheus_config", 1, _F.TYPE_MESSAGE,
                                  ".tensorflow.serving.PrometheusConfig")])
    i64, boolean = ".google.protobuf.Int64Value", ".google.protobuf.BoolValue"
    # session_bundle_config.proto's BatchingParameters (text format reads fields by name).
    message("BatchingParameters", [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, i64), ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, i64),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, i64), ("num_batch_threads", 4, _F.TYPE_MESSAGE, i64),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, "repeated"),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, ""),
        ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, boolean),
        ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, i64),
    ])
    return fd


def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_descriptor = pool.Add(_file())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in file_descriptor.message_types_by_name}


_CLASSES = _classes()
SSLConfig = _CLASSES["SSLConfig"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
BatchingParameters = _CLASSES["BatchingParameters"]


class ConfigFileError(ValueError):
    pass


def read_text_proto(path: str, message_class: Any) -> Any:
    """Parse a text-format config file, with TF Serving's wording on failure."""
    name = message_class.DESCRIPTOR.full_name
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigFileError(f"Error parsing text-format {name}: cannot read {path}: {e.strerror}") from e
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ConfigFileError(f"Error parsing text-format {name}: {path}: {e}") from e
    return message
