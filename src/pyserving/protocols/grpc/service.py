"""gRPC: PredictionService and ModelService over grpc.aio, thin over the DataPlane."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
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
from pyserving.protocols.control_plane import ControlPlane
from pyserving.serving.admission import OVERLOADED_MESSAGE, RETRY_AFTER_SECONDS
from pyserving.serving.dataplane import Caller, DataPlane, InferenceTask, ModelSpec, PredictResult, fill_model_spec
from pyserving.serving.inline import SMALL_REQUEST_BYTES
from pyserving.serving.responses import status_response

from . import profiler as profiler_service
from .gate import GrpcGate
from .profiler import ProfilerServicer

_STATUS = {c.value[0]: c for c in grpc.StatusCode}
log = logging.getLogger("pyserving.grpc")


def spec_from_proto(spec: model_pb2.ModelSpec) -> ModelSpec:
    choice = spec.WhichOneof("version_choice")
    return ModelSpec(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


# The request's size on the wire, set per RPC by _guarded: ByteSize() would re-encode the
# message (0.36 ms for a 600 KB image, on the event loop).
_REQUEST_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("request_bytes", default=0)


def note_request_bytes(size: int) -> None:
    """For a transport that parsed the request itself (Ray Serve's gRPC proxy): its size."""
    _REQUEST_BYTES.set(size)


def _caller(dataplane: DataPlane, context) -> Caller:
    return Caller("GRPC", context.time_remaining(), _REQUEST_BYTES.get() <= SMALL_REQUEST_BYTES,
                  context.peer() if dataplane.access_log else "")


# Inference methods, by the API name the data plane's metrics and access log use.
_INFERENCE_APIS = {"Predict": "predict", "Classify": "classify", "Regress": "regress",
                   "MultiInference": "multi_inference"}


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
                                             list(request.output_filter), encode, _caller(self._dataplane, context))

    async def Classify(self, request, context):
        return await self._dataplane.classify(
            spec_from_proto(request.model_spec), lambda: serialize_input(request.input), _caller(self._dataplane, context))

    async def Regress(self, request, context):
        return await self._dataplane.regress(
            spec_from_proto(request.model_spec), lambda: serialize_input(request.input), _caller(self._dataplane, context))

    async def MultiInference(self, request, context):
        specs = [spec_from_proto(t.model_spec) for t in request.tasks]
        if len({s.name for s in specs}) > 1:
            raise ServingError.invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        tasks = [InferenceTask(s.signature_name, t.method_name) for s, t in zip(specs, request.tasks)]
        spec = specs[0] if specs else ModelSpec(name="")
        return await self._dataplane.multi_inference(
            spec, tasks, lambda: serialize_input(request.input), _caller(self._dataplane, context))

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return self._dataplane.metadata(spec_from_proto(request.model_spec), list(request.metadata_field))


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


class _Refused:
    """What an inference call refused by load shedding (gate.py) is answered as."""


_REFUSED = _Refused()


class _Unparsable:
    """What a request that is not a valid proto decodes to; answered INVALID_ARGUMENT."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.message = f"Could not parse the request as {type_name}: {reason}"


def _safe_parser(message_type):
    def parse(data: bytes):
        try:
            return message_type.FromString(data), len(data)
        except Exception as e:  # DecodeError and friends: the client sent garbage
            return _Unparsable(message_type.DESCRIPTOR.full_name, str(e))
    return parse


def _guarded(method, dataplane: DataPlane | None = None, gate: GrpcGate | None = None):
    """Malformed protos and ServingErrors become the gRPC status clients expect.

    The abort is raised outside the except blocks, from a frame that no longer holds the request:
    grpc keeps the AbortError in a reference cycle until the next garbage collection, and with the
    failure as its __context__ (whose traceback's frames hold the request and every decoded
    tensor) a rejected 10^6-string request stayed in memory for several requests more.
    With ``gate``, the call counts as taken and active while it runs (grpc_gate.CoreQueue), and
    an inference call without a deadline may be shed. One with a deadline waits its turn, as in
    TF Serving: its client said how long it will wait (TF Serving's own clients send bursts of
    hundreds of futures with a deadline each, and expect every one answered), and the core drops
    it for free if that passes first.
    """
    api = _INFERENCE_APIS.get(method.__name__) if dataplane is not None else None

    async def call(request, context):
        if gate is not None:
            gate.enter()
            if api is not None and context.time_remaining() is None and gate.refuse():
                request = _REFUSED
        start = time.perf_counter()
        try:
            if request is _REFUSED:
                status, message = grpc.StatusCode.UNAVAILABLE, OVERLOADED_MESSAGE
                context.set_trailing_metadata((("retry-after", str(RETRY_AFTER_SECONDS)),))
                if dataplane.access_log:
                    dataplane.log_refused("GRPC", api, "", ServingError.unavailable(message),
                                          time.perf_counter() - start, context.peer())
            elif isinstance(request, _Unparsable):
                status, message = grpc.StatusCode.INVALID_ARGUMENT, request.message
                if api and dataplane.access_log:
                    dataplane.log_refused("GRPC", api, "", ServingError.invalid_argument(message),
                                          time.perf_counter() - start, context.peer())
            else:
                request, size = request
                _REQUEST_BYTES.set(size)
                try:
                    return await method(request, context)
                except ServingError as e:
                    status, message = _STATUS[int(e.code)], e.message
                    log.debug("gRPC %s answered %s: %s", method.__name__, status.name, message)
                    if api and dataplane.access_log:  # refused before the data plane logged it, if so
                        dataplane.log_refused("GRPC", api, getattr(getattr(request, "model_spec", None), "name", ""),
                                              e, time.perf_counter() - start, context.peer())
                    if e.retry_after:
                        context.set_trailing_metadata((("retry-after", str(e.retry_after)),))
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as e:  # a bug of ours: say so, with a status clients can act on
                    log.exception("Unexpected error in %s", method.__name__)
                    status, message = grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}: {e}"
            del request
            await context.abort(status, message)
        finally:
            if gate is not None:
                gate.leave()
    return call


def _locked(method, control: ControlPlane, what: str):
    """A control-plane method: the caller's token is checked before the method runs."""
    async def call(request, context):
        control.authorize_grpc(context.invocation_metadata(), what)
        return await method(request, context)
    call.__name__ = method.__name__
    return call


def _service_handler(service: str, servicer, methods: dict, control: ControlPlane | None = None,
                     dataplane: DataPlane | None = None, gate: GrpcGate | None = None) -> grpc.GenericRpcHandler:
    """Like the generated add_*_to_server, but a malformed proto is a client error; with
    ``control``, every method is a control-plane call; with ``gate``, inference calls may be shed."""
    def method(name: str):
        found = getattr(servicer, name)
        return _locked(found, control, f"{service}/{name}") if control is not None else found

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(method(name), dataplane, gate),
            request_deserializer=_safe_parser(request_type),
            response_serializer=response_type.SerializeToString)
        for name, (request_type, response_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)


def _methods(service_descriptor) -> dict:
    from google.protobuf import symbol_database

    db = symbol_database.Default()
    return {m.name: (db.GetSymbol(m.input_type.full_name), db.GetSymbol(m.output_type.full_name))
            for m in service_descriptor.methods}


def create_server(dataplane: DataPlane, channel_arguments: str = "", max_message_bytes: int = -1,
                  tensor_content: bool = False, reuse_port: bool = False,
                  reload_config: ReloadConfig | None = None,
                  profiler: ProfilerServicer | None = None,
                  control: ControlPlane | None = None, gate: GrpcGate | None = None,
                  max_pending: int = 0) -> grpc.aio.Server:
    options: dict[str, int | str] = dict(BASE_OPTIONS)
    options["grpc.max_receive_message_length"] = max_message_bytes
    options["grpc.so_reuseport"] = int(reuse_port)  # --num_workers: sibling processes share ports
    if max_pending > 0:
        # --max_pending_requests for calls not yet taken from the core: past it the core refuses
        # them (randomly up to twice the bound, then all), before Python spends anything on them.
        options["grpc.server.max_pending_requests"] = max_pending
        options["grpc.server.max_pending_requests_hard_limit"] = 2 * max_pending
    options.update(parse_channel_arguments(channel_arguments))
    server = grpc.aio.server(options=list(options.items()))
    prediction = PredictionServicer(dataplane, tensor_content)
    control = control or ControlPlane()
    models = ModelServicer(dataplane, reload_config, control)
    server.add_generic_rpc_handlers((
        _service_handler("tensorflow.serving.PredictionService", prediction,
                         _methods(prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]),
                         dataplane=dataplane, gate=gate),
        _service_handler("tensorflow.serving.ModelService", models,
                         _methods(model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]), gate=gate),
    ))
    if profiler is not None:
        server.add_generic_rpc_handlers((_service_handler(profiler_service.SERVICE, profiler,
                                                          profiler_service.METHODS, control, gate=gate),))
    return server
