"""The call machinery every gRPC service here shares: requests that don't parse and ServingErrors
become the statuses clients expect, control-plane methods check the caller's token, and load
shedding (gate.py) counts and refuses calls, all without keeping a rejected request in memory."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import grpc
from google.protobuf import symbol_database

from pyserving.errors import ServingError
from pyserving.observability.tracing import CURRENT, GRPC_SERVER_ERRORS
from pyserving.protocols.control_plane import ControlPlane
from pyserving.serving.admission import OVERLOADED_MESSAGE, RETRY_AFTER_SECONDS
from pyserving.serving.dataplane import Caller, DataPlane
from pyserving.serving.inline import SMALL_REQUEST_BYTES

from .gate import GrpcGate

_STATUS = {c.value[0]: c for c in grpc.StatusCode}
_CODE_NUMBERS = {c.name: c.value[0] for c in grpc.StatusCode}
log = logging.getLogger("pyserving.grpc")

# The request's size on the wire, set per RPC by _guarded: ByteSize() would re-encode the
# message (0.36 ms for a 600 KB image, on the event loop).
_REQUEST_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("request_bytes", default=0)


def note_request_bytes(size: int) -> None:
    """For a transport that parsed the request itself (Ray Serve's gRPC proxy): its size."""
    _REQUEST_BYTES.set(size)


def caller_of(dataplane: DataPlane, context) -> Caller:
    remaining = context.time_remaining()
    return Caller("GRPC", remaining, _REQUEST_BYTES.get() <= SMALL_REQUEST_BYTES,
                  context.peer() if dataplane.access_log else "", client_deadline=remaining is not None,
                  span=CURRENT.get())


# Inference methods, by the API name the data plane's metrics and access log use.
INFERENCE_APIS = {"Predict": "predict", "Classify": "classify", "Regress": "regress",
                  "MultiInference": "multi_inference", "ModelInfer": "infer"}
# The calls a trace follows: inference and model metadata (not health, status or the control plane).
TRACED = frozenset({*INFERENCE_APIS, "GetModelMetadata", "ModelMetadata"})


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


def _guarded(method, dataplane: DataPlane | None = None, gate: GrpcGate | None = None, service: str = ""):
    """Malformed protos and ServingErrors become the gRPC status clients expect.

    The abort is raised outside the except blocks, from a frame that no longer holds the request:
    grpc keeps the AbortError in a reference cycle until the next garbage collection, and with the
    failure as its __context__ (whose traceback's frames hold the request and every decoded
    tensor) a rejected 10^6-string request stayed in memory for several requests more.
    With ``gate``, the call counts as taken and active while it runs (grpc_gate.CoreQueue), and
    an inference call may be shed: one without a deadline toward the delay target, one with a
    deadline only when the core's queue grows toward the deadlines calls come with (gate.py).
    """
    api = INFERENCE_APIS.get(method.__name__) if dataplane is not None else None
    tracing = dataplane.tracing if dataplane is not None and method.__name__ in TRACED else None
    name = f"{service}/{method.__name__}"
    rpc = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method.__name__}

    async def traced(request, context):
        span = tracing.start(name, lambda: dict(context.invocation_metadata() or ()), rpc.copy)
        model = _model_name(request) if span is not None else ""
        # Not a local while the call runs: a failure's traceback would keep the request alive.
        taken = [request]
        del request
        if span is None:
            return await answer(taken.pop(), context)
        token, code = CURRENT.set(span), "OK"
        try:
            return await answer(taken.pop(), context)
        except grpc.aio.AbortError:
            code = (context.code() or grpc.StatusCode.UNKNOWN).name
            span.reason = span.reason or (context.details() or "")
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            CURRENT.reset(token)
            if "pyserving.model.name" not in span.server.attributes:  # metadata: no data-plane run
                span.set("pyserving.model.name", dataplane.model_label(model))
            span.set("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
            span.set("pyserving.outcome", code)
            span.finish(code in GRPC_SERVER_ERRORS)

    async def answer(request, context):
        if gate is not None:
            gate.enter()
            if api is not None and gate.refuse(context.time_remaining()):
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
    return traced if tracing is not None else answer


def _model_name(request) -> str:
    """The model a parsed request names (TF Serving's model_spec, the Open Inference Protocol's name)."""
    if not isinstance(request, tuple):
        return ""
    message = request[0]
    spec = getattr(message, "model_spec", None)
    return spec.name if spec is not None else getattr(message, "name", "")


def _locked(method, control: ControlPlane, what: str):
    """A control-plane method: the caller's token is checked before the method runs."""
    async def call(request, context):
        control.authorize_grpc(context.invocation_metadata(), what)
        return await method(request, context)
    call.__name__ = method.__name__
    return call


def service_handler(service: str, servicer, methods: dict, control: ControlPlane | None = None,
                     dataplane: DataPlane | None = None, gate: GrpcGate | None = None) -> grpc.GenericRpcHandler:
    """Like the generated add_*_to_server, but a malformed proto is a client error; with
    ``control``, every method is a control-plane call; with ``gate``, inference calls may be shed."""
    def method(name: str):
        found = getattr(servicer, name)
        return _locked(found, control, f"{service}/{name}") if control is not None else found

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(method(name), dataplane, gate, service),
            request_deserializer=_safe_parser(request_type),
            response_serializer=response_type.SerializeToString)
        for name, (request_type, response_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)


def methods_of(service_descriptor) -> dict:
    db = symbol_database.Default()
    return {m.name: (db.GetSymbol(m.input_type.full_name), db.GetSymbol(m.output_type.full_name))
            for m in service_descriptor.methods}
