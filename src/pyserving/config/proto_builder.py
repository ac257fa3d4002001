"""Message classes for small protos that no installed wheel ships, built from field lists.

TF Serving's config protos (SSLConfig, MonitoringConfig, BatchingParameters) and
TensorFlow's ProfilerService messages are not in any pip package as Python
modules; declaring the fields we use, with the upstream field numbers, gives
classes that read and write the same bytes and text as the originals.
"""

from __future__ import annotations

from typing import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

F = descriptor_pb2.FieldDescriptorProto
REPEATED = "repeated"  # as the type name of a field: a repeated scalar

# (name, number, type, type name of a message field, or REPEATED, or "")
Field = tuple[str, int, int, str]


def build_messages(file_name: str, package: str, messages: dict[str, Sequence[Field]]) -> dict[str, type]:
    """Message classes by name, in a pool of their own (wrappers.proto available)."""
    fd = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3",
                                            dependency=["google/protobuf/wrappers.proto"])
    for name, fields in messages.items():
        msg = fd.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            repeated = type_name == REPEATED
            msg.field.add(name=field_name, number=number, type=kind,
                          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
                          type_name=None if repeated else (type_name or None), json_name=field_name)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in messages}
