"""The Open Inference Protocol's inference.GRPCInferenceService on --port, beside TF Serving's
services, thin over the data plane (protocols/open_inference.py has what REST shares).

Inputs come as typed ``contents`` or as ``raw_input_contents`` (one per input, in order);
outputs always go out as ``raw_output_contents``, which every V2 client reads and which costs
no conversion.
"""

from __future__ import annotations

from typing import Any

import grpc

from pyserving.codecs import open_inference as codec
from pyserving.errors import ServingError
from pyserving.serving.dataplane import DataPlane, PredictResult

from .. import open_inference as v2
from .gate import GrpcGate
from .handlers import caller_of, service_handler
from .open_inference_protos import CLASSES, METHODS, SERVICE

_IMPLEMENTED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


def _parameters(parameters) -> dict[str, Any]:
    values = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, which) if which else None
    return values


def _tensors(request) -> list[codec.WireTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ServingError.invalid_argument(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        datatype, shape = codec.check_header(tensor.name, tensor.datatype, list(tensor.shape))
        if raw:
            if tensor.HasField("contents"):
                raise ServingError.invalid_argument(
                    f"input '{tensor.name}': contents must be empty when raw_input_contents is used")
            tensors.append(codec.WireTensor(tensor.name, datatype, shape, raw[i], "raw"))
        else:
            tensors.append(codec.WireTensor(tensor.name, datatype, shape, tensor.contents, "contents"))
    return tensors


class OpenInferenceServicer:
    """ServingErrors raised here become gRPC statuses in handlers._guarded."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def ServerLive(self, request, context):
        return CLASSES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return CLASSES["ServerReadyResponse"](ready=v2.server_ready(self._dataplane))

    async def ModelReady(self, request, context):
        return CLASSES["ModelReadyResponse"](ready=v2.model_ready(self._dataplane, request.name, request.version))

    async def ServerMetadata(self, request, context):
        return CLASSES["ServerMetadataResponse"](**v2.server_metadata())

    async def ModelMetadata(self, request, context):
        metadata = await v2.model_metadata(self._dataplane, request.name, request.version)
        response = CLASSES["ModelMetadataResponse"](name=metadata["name"], versions=metadata["versions"],
                                                    platform=metadata["platform"])
        for field in ("inputs", "outputs"):
            for tensor in metadata[field]:
                getattr(response, field).add(**tensor)
        return response

    async def ModelInfer(self, request, context):
        parameters = _parameters(request.parameters)
        spec = v2.model_spec(request.model_name, request.model_version, parameters)
        tensors = _tensors(request)
        requested = [o.name for o in request.outputs]
        request_id = request.id

        def encode(result: PredictResult):
            response = CLASSES["ModelInferResponse"](model_name=result.model_name,
                                                     model_version=str(result.version), id=request_id)
            for tensor in v2.output_tensors(result.outputs, requested):
                response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                response.raw_output_contents.append(codec.to_raw(tensor.array))
            return response

        return await self._dataplane.predict(spec, v2.decoder(spec.name, tensors), requested, encode,
                                             caller_of(self._dataplane, context), api="infer")


def handler(dataplane: DataPlane, gate: GrpcGate | None = None) -> grpc.GenericRpcHandler:
    methods = {name: (CLASSES[METHODS[name][0]], CLASSES[METHODS[name][1]]) for name in _IMPLEMENTED}
    return service_handler(SERVICE, OpenInferenceServicer(dataplane), methods, dataplane=dataplane, gate=gate)
