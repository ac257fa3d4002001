"""gRPC: TF Serving's PredictionService and ModelService over grpc.aio, thin over the DataPlane, and
the server on --port that serves them beside the Open Inference Protocol and the profiler."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from pyserving.codecs import tensor_proto
from pyserving.codecs.examples import serialize_input
from pyserving.errors import Code, ServingError
from pyserving.protocols import open_inference as v2
from pyserving.protocols.control_plane import ControlPlane
from pyserving.serving.dataplane import DataPlane, InferenceTask, ModelSpec, PredictResult, fill_model_spec
from pyserving.serving.responses import status_response

from . import open_inference
from . import profiler as profiler_service
from .gate import GrpcGate
from .handlers import caller_of, methods_of, service_handler
from .profiler import ProfilerServicer

log = logging.getLogger("pyserving.grpc")


def spec_from_proto(spec: model_pb2.ModelSpec) -> ModelSpec:
    choice = spec.WhichOneof("version_choice")
    return ModelSpec(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """ServingErrors raised here become gRPC statuses in _guarded."""

    def __init__(self, dataplane: DataPlane, tensor_content: bool = False) -> None:
        self._dataplane = dataplane
        self._tensor_content = tensor_content

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        def decode(_signature):
            return {alias: tensor_proto.to_numpy(t, f"input '{alias}'")
                    for alias, t in request.inputs.items()}

        def encode(result: PredictResult) -> predict_pb2.PredictResponse:
            response = predict_pb2.PredictResponse()
            fill_model_spec(response.model_spec, result.model_name, result.version, result.signature_name)
            for alias, array in result.outputs.items():
                response.outputs[alias].CopyFrom(tensor_proto.from_numpy(array, self._tensor_content))
            return response

        return await self._dataplane.predict(spec_from_proto(request.model_spec), decode,
                                             list(request.output_filter), encode, caller_of(self._dataplane, context))

    async def Classify(self, request, context):
        return await self._dataplane.classify(
            spec_from_proto(request.model_spec), lambda: serialize_input(request.input), caller_of(self._dataplane, context))

    async def Regress(self, request, context):
        return await self._dataplane.regress(
            spec_from_proto(request.model_spec), lambda: serialize_input(request.input), caller_of(self._dataplane, context))

    async def MultiInference(self, request, context):
        specs = [spec_from_proto(t.model_spec) for t in request.tasks]
        if len({s.name for s in specs}) > 1:
            raise ServingError.invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        tasks = [InferenceTask(s.signature_name, t.method_name) for s, t in zip(specs, request.tasks)]
        spec = specs[0] if specs else ModelSpec(name="")
        return await self._dataplane.multi_inference(
            spec, tasks, lambda: serialize_input(request.input), caller_of(self._dataplane, context))

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = spec_from_proto(request.model_spec)
        await self._dataplane.ensure_loaded(spec, context.time_remaining())
        return self._dataplane.metadata(spec, list(request.metadata_field))


ReloadConfig = Callable[[model_server_config_pb2.ModelServerConfig], Awaitable[None]]


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane, reload_config: ReloadConfig | None = None,
                 control: ControlPlane | None = None) -> None:
        self._dataplane = dataplane
        self._reload_config = reload_config
        self._control = control or ControlPlane()

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                        context) -> model_management_pb2.ReloadConfigResponse:
        if self._reload_config is None:
            raise ServingError(Code.UNIMPLEMENTED, "This server does not take config reloads")
        self._control.check_reload(context.invocation_metadata())
        await self._reload_config(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context) -> get_model_status_pb2.GetModelStatusResponse:
        return status_response(await self._dataplane.status(spec_from_proto(request.model_spec)))


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments: comma-separated key=value; numeric values become ints."""
    args: list[tuple[str, int | str]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            args.append((key.strip(), int(value)))
        except ValueError:
            args.append((key.strip(), value.strip()))
    return args


# Clients send large tensors: TF Serving lifts gRPC's 4 MiB default (--grpc_max_message_bytes
# bounds what one request may cost here). Responses are ours and go out whatever their size.
BASE_OPTIONS = [("grpc.max_send_message_length", -1),
                # A port already in use must fail loudly, not be shared with another server.
                ("grpc.so_reuseport", 0)]


def create_server(dataplane: DataPlane, channel_arguments: str = "", max_message_bytes: int = -1,
                  tensor_content: bool = False, reuse_port: bool = False,
                  reload_config: ReloadConfig | None = None,
                  profiler: ProfilerServicer | None = None,
                  control: ControlPlane | None = None, gate: GrpcGate | None = None,
                  repository: v2.Repository | None = None) -> grpc.aio.Server:
    options: dict[str, int | str] = dict(BASE_OPTIONS)
    options["grpc.max_receive_message_length"] = max_message_bytes
    options["grpc.so_reuseport"] = int(reuse_port)  # --num_workers: sibling processes share ports
    options.update(parse_channel_arguments(channel_arguments))
    server = grpc.aio.server(options=list(options.items()))
    prediction = PredictionServicer(dataplane, tensor_content)
    control = control or ControlPlane()
    models = ModelServicer(dataplane, reload_config, control)
    server.add_generic_rpc_handlers((
        service_handler("tensorflow.serving.PredictionService", prediction,
                         methods_of(prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]),
                         dataplane=dataplane, gate=gate),
        service_handler("tensorflow.serving.ModelService", models,
                         methods_of(model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]), gate=gate),
    ))
    # The Open Inference Protocol on the same port.
    server.add_generic_rpc_handlers((open_inference.handler(dataplane, gate, repository, control),))
    if profiler is not None:
        server.add_generic_rpc_handlers((service_handler(profiler_service.SERVICE, profiler,
                                                          profiler_service.METHODS, control, gate=gate),))
    return server
