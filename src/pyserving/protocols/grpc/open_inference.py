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
from pyserving.errors import Code, ServingError
from pyserving.protocols.control_plane import ControlPlane, grpc_authorization
from pyserving.serving.dataplane import DataPlane, PredictResult

from .. import open_inference as v2
from .. import triton_extensions as triton
from .gate import GrpcGate
from .handlers import caller_of, service_handler
from .open_inference_protos import CLASSES, METHODS, SERVICE

_IMPLEMENTED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "ModelConfig",
                "ModelStatistics")


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

    def __init__(self, dataplane: DataPlane, repository: v2.Repository | None = None,
                 control: ControlPlane | None = None) -> None:
        self._dataplane = dataplane
        self._repository = repository
        self._control = control or ControlPlane()

    async def ServerLive(self, request, context):
        return CLASSES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return CLASSES["ServerReadyResponse"](ready=v2.server_ready(self._dataplane))

    async def ModelReady(self, request, context):
        ready = v2.model_ready(self._dataplane, request.name, request.version, self._repository)
        return CLASSES["ModelReadyResponse"](ready=ready)

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

    async def ModelConfig(self, request, context):
        config = await triton.model_config(self._dataplane, request.name, request.version)
        response = CLASSES["ModelConfigResponse"]()
        c = response.config
        c.name, c.platform, c.backend, c.max_batch_size = (config["name"], config["platform"], config["backend"],
                                                           config["max_batch_size"])
        for field, tensors in (("input", config["input"]), ("output", config["output"])):
            for tensor in tensors:
                getattr(c, field).add(name=tensor["name"], dims=tensor["dims"],
                                      data_type=triton.DATA_TYPES[tensor["data_type"]])
        return response

    async def ModelStatistics(self, request, context):
        stats = await triton.model_statistics(self._dataplane, request.name, request.version)
        response = CLASSES["ModelStatisticsResponse"]()
        for entry in stats["model_stats"]:
            model = response.model_stats.add(
                name=entry["name"], version=entry["version"], last_inference=entry["last_inference"],
                inference_count=entry["inference_count"], execution_count=entry["execution_count"])
            for phase, duration in entry["inference_stats"].items():
                getattr(model.inference_stats, phase).MergeFrom(CLASSES["StatisticDuration"](**duration))
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


    async def RepositoryIndex(self, request, context):
        entries = v2.index_filter(await self._repo(context, "").index(), request.ready)
        return CLASSES["RepositoryIndexResponse"](models=entries)

    async def RepositoryModelLoad(self, request, context):
        await self._repo(context, "RepositoryModelLoad").load(request.model_name)
        return CLASSES["RepositoryModelLoadResponse"]()

    async def RepositoryModelUnload(self, request, context):
        await self._repo(context, "RepositoryModelUnload").unload(request.model_name)
        return CLASSES["RepositoryModelUnloadResponse"]()

    def _repo(self, context, what: str) -> v2.Repository:
        """The repository, once the control plane lets this caller in (``what``: the change it makes;
        "" for the index, which changes nothing and is open as model status is)."""
        if self._repository is None:
            raise ServingError(Code.UNIMPLEMENTED, "This server has no model repository API")
        if what:
            self._control.check_change(grpc_authorization(context.invocation_metadata()), what)
        return self._repository


def handler(dataplane: DataPlane, gate: GrpcGate | None = None, repository: v2.Repository | None = None,
            control: ControlPlane | None = None) -> grpc.GenericRpcHandler:
    methods = {name: (CLASSES[METHODS[name][0]], CLASSES[METHODS[name][1]]) for name in _IMPLEMENTED}
    servicer = OpenInferenceServicer(dataplane, repository, control)
    return service_handler(SERVICE, servicer, methods, dataplane=dataplane, gate=gate)
