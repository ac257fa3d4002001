"""The Open Inference Protocol's gRPC messages (package ``inference``), built without a wheel.

No package the server depends on ships them as Python modules, so the messages are declared
here with the field numbers of ``open_inference_grpc.proto`` (and of Triton's
``grpc_service.proto`` for the model-repository extension, which adds three calls to the same
``inference.GRPCInferenceService``): the classes read and write the same bytes as every V2
client's. Maps and the ``InferParameter`` oneof are spelled as protoc spells them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"

_SCALARS = {"bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "int32": F.TYPE_INT32,
            "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64,
            "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE}

# message -> [(field, number, type)]; type: a scalar, a message name, "repeated <type>",
# "map <value type>" (string keys) or "oneof <group> <type>".
_PARAMS = ("parameters", 4, "map InferParameter")
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"),
                               ("extensions", 3, "repeated string")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, "string"), ("datatype", 2, "string"),
                                             ("shape", 3, "repeated int64")],
    "ModelMetadataResponse": [("name", 1, "string"), ("versions", 2, "repeated string"),
                              ("platform", 3, "string"),
                              ("inputs", 4, "repeated ModelMetadataResponse.TensorMetadata"),
                              ("outputs", 5, "repeated ModelMetadataResponse.TensorMetadata"),
                              ("properties", 6, "map string")],
    "ModelInferRequest.InferInputTensor": [("name", 1, "string"), ("datatype", 2, "string"),
                                           ("shape", 3, "repeated int64"), _PARAMS,
                                           ("contents", 5, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string"), ("parameters", 2, "map InferParameter")],
    "ModelInferRequest": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                          _PARAMS, ("inputs", 5, "repeated ModelInferRequest.InferInputTensor"),
                          ("outputs", 6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, "repeated bytes")],
    "ModelInferResponse.InferOutputTensor": [("name", 1, "string"), ("datatype", 2, "string"),
                                             ("shape", 3, "repeated int64"), _PARAMS,
                                             ("contents", 5, "InferTensorContents")],
    "ModelInferResponse": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                           _PARAMS, ("outputs", 5, "repeated ModelInferResponse.InferOutputTensor"),
                           ("raw_output_contents", 6, "repeated bytes")],
    "InferParameter": [("bool_param", 1, "oneof parameter_choice bool"),
                       ("int64_param", 2, "oneof parameter_choice int64"),
                       ("string_param", 3, "oneof parameter_choice string"),
                       ("double_param", 4, "oneof parameter_choice double"),
                       ("uint64_param", 5, "oneof parameter_choice uint64")],
    "InferTensorContents": [("bool_contents", 1, "repeated bool"), ("int_contents", 2, "repeated int32"),
                            ("int64_contents", 3, "repeated int64"), ("uint_contents", 4, "repeated uint32"),
                            ("uint64_contents", 5, "repeated uint64"), ("fp32_contents", 6, "repeated float"),
                            ("fp64_contents", 7, "repeated double"), ("bytes_contents", 8, "repeated bytes")],
    # The model-repository extension (Triton's grpc_service.proto).
    "RepositoryIndexRequest": [("repository_name", 1, "string"), ("ready", 2, "bool")],
    "RepositoryIndexResponse.ModelIndex": [("name", 1, "string"), ("version", 2, "string"),
                                           ("state", 3, "string"), ("reason", 4, "string")],
    "RepositoryIndexResponse": [("models", 1, "repeated RepositoryIndexResponse.ModelIndex")],
    "ModelRepositoryParameter": [("bool_param", 1, "oneof parameter_choice bool"),
                                 ("int64_param", 2, "oneof parameter_choice int64"),
                                 ("string_param", 3, "oneof parameter_choice string"),
                                 ("bytes_param", 4, "oneof parameter_choice bytes")],
    "RepositoryModelLoadRequest": [("repository_name", 1, "string"), ("model_name", 2, "string"),
                                   ("parameters", 3, "map ModelRepositoryParameter")],
    "RepositoryModelLoadResponse": [],
    "RepositoryModelUnloadRequest": [("repository_name", 1, "string"), ("model_name", 2, "string"),
                                     ("parameters", 3, "map ModelRepositoryParameter")],
    "RepositoryModelUnloadResponse": [],
    # Triton's model-configuration extension: ModelConfig (model_config.proto), the fields filled
    # here. data_type is Triton's DataType enum, declared as the int32 it is on the wire.
    "ModelConfigRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelInput": [("name", 1, "string"), ("data_type", 2, "int32"), ("dims", 4, "repeated int64")],
    "ModelOutput": [("name", 1, "string"), ("data_type", 2, "int32"), ("dims", 3, "repeated int64")],
    "ModelConfig": [("name", 1, "string"), ("platform", 2, "string"), ("max_batch_size", 4, "int32"),
                    ("input", 5, "repeated ModelInput"), ("output", 6, "repeated ModelOutput"),
                    ("backend", 17, "string")],
    "ModelConfigResponse": [("config", 1, "ModelConfig")],
    # Triton's statistics extension (grpc_service.proto).
    "ModelStatisticsRequest": [("name", 1, "string"), ("version", 2, "string")],
    "StatisticDuration": [("count", 1, "uint64"), ("ns", 2, "uint64")],
    "InferStatistics": [(name, number, "StatisticDuration") for number, name in enumerate(
        ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
         "cache_miss"), start=1)],
    "ModelStatistics": [("name", 1, "string"), ("version", 2, "string"), ("last_inference", 3, "uint64"),
                        ("inference_count", 4, "uint64"), ("execution_count", 5, "uint64"),
                        ("inference_stats", 6, "InferStatistics")],
    "ModelStatisticsResponse": [("model_stats", 1, "repeated ModelStatistics")],
}
METHODS = {name: (f"{name}Request", f"{name}Response") for name in (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "RepositoryIndex",
    "RepositoryModelLoad", "RepositoryModelUnload", "ModelConfig", "ModelStatistics")}
METHODS["ModelInfer"] = ("ModelInferRequest", "ModelInferResponse")


def _field(msg: descriptor_pb2.DescriptorProto, path: str, name: str, number: int, kind: str) -> None:
    words = kind.split()
    field = msg.field.add(name=name, number=number, json_name=name, label=F.LABEL_OPTIONAL)
    if words[0] == "repeated":
        field.label, words = F.LABEL_REPEATED, words[1:]
    elif words[0] == "map":
        entry = msg.nested_type.add(name="".join(p.capitalize() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        _field(entry, f"{path}.{entry.name}", "key", 1, "string")
        _field(entry, f"{path}.{entry.name}", "value", 2, words[1])
        field.label, field.type, field.type_name = F.LABEL_REPEATED, F.TYPE_MESSAGE, f".{PACKAGE}.{path}.{entry.name}"
        return
    elif words[0] == "oneof":
        group, words = words[1], words[2:]
        names = [o.name for o in msg.oneof_decl]
        if group not in names:
            msg.oneof_decl.add(name=group)
            names.append(group)
        field.oneof_index = names.index(group)
    if words[0] in _SCALARS:
        field.type = _SCALARS[words[0]]
    else:
        field.type, field.type_name = F.TYPE_MESSAGE, f".{PACKAGE}.{words[0]}"


def _build() -> dict[str, type]:
    fd = descriptor_pb2.FileDescriptorProto(name="pyserving/open_inference.proto", package=PACKAGE, syntax="proto3")
    declared: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path in MESSAGES:  # outer messages first, nested ones inside them
        outer, _, inner = path.partition(".")
        if outer not in declared:
            declared[outer] = fd.message_type.add(name=outer)
        if inner:
            declared[path] = declared[outer].nested_type.add(name=inner)
    for path, fields in MESSAGES.items():
        for name, number, kind in fields:
            _field(declared[path], path, name, number, kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {path: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{path}"))
            for path in MESSAGES}


CLASSES = _build()
ModelInferRequest = CLASSES["ModelInferRequest"]
ModelInferResponse = CLASSES["ModelInferResponse"]
ModelMetadataResponse = CLASSES["ModelMetadataResponse"]
