"""TF Serving config protos that the tensorflow-serving-api wheel does not ship.

SSLConfig and MonitoringConfig are tiny; their descriptors are built here, field
for field as in tensorflow_serving/config/{ssl,monitoring}_config.proto, so the
same text files TF Serving reads parse here too.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="pyserving/tf_serving_extra_config.proto", package="tensorflow.serving", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, str]]) -> None:
        msg = fd.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            msg.field.add(name=field_name, number=number, type=kind, label=_F.LABEL_OPTIONAL,
                          type_name=type_name or None, json_name=field_name)

    message("SSLConfig", [("server_key", 1, _F.TYPE_STRING, ""), ("server_cert", 2, _F.TYPE_STRING, ""),
                          ("custom_ca", 3, _F.TYPE_STRING, ""), ("client_verify", 4, _F.TYPE_BOOL, "")])
    message("PrometheusConfig", [("enable", 1, _F.TYPE_BOOL, ""), ("path", 2, _F.TYPE_STRING, "")])
    message("MonitoringConfig", [("prometheus_config", 1, _F.TYPE_MESSAGE,
                                  ".tensorflow.serving.PrometheusConfig")])
    return fd


def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    file_descriptor = pool.Add(_file())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in file_descriptor.message_types_by_name}


_CLASSES = _classes()
SSLConfig = _CLASSES["SSLConfig"]
MonitoringConfig = _CLASSES["MonitoringConfig"]


class ConfigFileError(ValueError):
    pass


def read_text_proto(path: str, message_class: type):
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
