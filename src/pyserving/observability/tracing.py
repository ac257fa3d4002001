"""OpenTelemetry traces, configured by the SDK's own environment variables.

``OTEL_TRACES_EXPORTER=otlp`` (or an OTLP endpoint named by ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns tracing on; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keeps it off. The SDK (the ``otel`` extra) reads the rest as it
does for any Python service: the endpoint, headers, TLS, timeout and compression of
``OTEL_EXPORTER_OTLP_[TRACES_]*``, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER[_ARG]`` (parent-based always-on by default), ``OTEL_PROPAGATORS`` and the
batch processor's ``OTEL_BSP_*``. Off, nothing here imports the SDK and a request pays one
``is None``.

The SDK samples, batches and sends; a request's spans are spans.py's records, made where the
data plane already takes its times.
"""

from __future__ import annotations

import os
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from random import Random
from typing import Any, Callable, Mapping

from pyserving.errors import ServingError

from .spans import ERROR, INTERNAL, SAMPLED, SERVER, Encoder, Span

EXTRA = "pyserving[otel]"
PROTOCOLS = ("grpc", "http/protobuf")

# The request span of the task or request thread running now: for log lines (logs.py).
CURRENT: ContextVar["RequestSpan | None"] = ContextVar("pyserving_request_span", default=None)


@dataclass(frozen=True)
class TracingSettings:
    protocol: str  # an OTLP protocol: PROTOCOLS

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "TracingSettings | None":
        """None when tracing is off; ServingError (one line) for a value pyserving can't honour."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
        if not exporters:  # unset: an OTLP endpoint for traces asks for them
            if not (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
                return None
            exporters = {"otlp"}
        exporters.discard("none")
        if not exporters:
            return None
        if exporters != {"otlp"}:
            raise ServingError.invalid_argument(
                f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']}: pyserving exports traces over "
                "OTLP only (otlp, or none); send them to an OpenTelemetry Collector for other backends")
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "grpc").strip().lower()
        if protocol not in PROTOCOLS:
            raise ServingError.invalid_argument(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: pyserving's OTLP exporter speaks grpc or http/protobuf")
        return cls(protocol)

    def check_installed(self) -> None:
        """The start-up check: the SDK and the protocol's exporter import, or one line names the extra."""
        try:
            _exporter_class(self.protocol)
        except ImportError as e:
            raise ServingError.invalid_argument(
                f"Tracing is on (OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT) but the OpenTelemetry "
                f"SDK is not installed ({e.name or e}): pip install '{EXTRA}'") from None


def _exporter_class(protocol: str):
    from opentelemetry.sdk.trace.export import SpanExportResult

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        class GrpcExporter(Grpc):
            """The SDK's gRPC exporter (channel, TLS, headers, retries), fed spans.py's bytes."""

            def __init__(self, encoder: Encoder) -> None:
                super().__init__()
                self._encoder = encoder

            def _translate_data(self, data):
                return ExportTraceServiceRequest.FromString(self._encoder.request(data))
        return GrpcExporter

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    class HttpExporter(Http):
        """The SDK's OTLP/HTTP exporter (session, TLS, headers, compression, retries), fed spans.py's bytes."""

        def __init__(self, encoder: Encoder) -> None:
            super().__init__()
            self._encoder = encoder

        def export(self, spans) -> SpanExportResult:
            if self._shutdown:
                return SpanExportResult.FAILURE
            result = self._client.export(self._encoder.request(spans))
            return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
    return HttpExporter


class RequestSpan:
    """One sampled request: its server span and the child spans that break its time down.

    Children are recorded from perf_counter readings; they and the server span reach the batch
    processor as one item when the protocol layer finishes the request (so OTEL_BSP_* sizes count
    requests), and are encoded together in the export thread."""

    __slots__ = ("_tracing", "server", "children", "_perf", "_wall", "reason")
    context = SAMPLED  # for BatchSpanProcessor.on_end: only sampled requests have a RequestSpan

    def __init__(self, tracing: "Tracing", server: Span, perf: float) -> None:
        self._tracing, self.server, self.children = tracing, server, []
        self._perf, self._wall = perf, server.start
        self.reason = ""  # why the request failed, for the span's status

    def at(self, perf: float) -> int:
        """A perf_counter reading as Unix nanoseconds."""
        return self._wall + int((perf - self._perf) * 1e9)

    def child(self, name: str, start: float, end: float, attributes: dict[str, Any] | None = None) -> None:
        self.children.append((name, self._tracing.span_id(), self.at(start), self.at(end), attributes))

    def set(self, key: str, value: Any) -> None:
        self.server.attributes[key] = value

    @property
    def ids(self) -> tuple[str, str]:
        """The trace and span ids as hex, as logs carry them."""
        return self.server.trace_id.hex(), self.server.span_id.hex()

    def finish(self, error: bool) -> None:
        """End the request; ``error``: the outcome is the server's failure (5xx, INTERNAL, ...)."""
        self.server.end = self.at(time.perf_counter())
        if error:
            self.server.status, self.server.message = ERROR, self.reason[:1024]
        self._tracing.emit(self)

    def encode(self, encoder: Encoder) -> bytes:
        server = self.server
        trace_id, parent = server.trace_id, server.span_id
        return encoder.span(server) + b"".join([
            encoder.fields(trace_id, span_id, parent, name, INTERNAL, start, end, attributes)
            for name, span_id, start, end, attributes in self.children])


class Tracing:
    """A worker process's tracer: the SDK's sampler, resource, propagators and batch processor."""

    def __init__(self, settings: TracingSettings, worker: int | None, version: str) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(_resource_attributes(worker, version))
        self._encoder = Encoder(dict(resource.attributes), "pyserving", version)
        self._sampler = TracerProvider().sampler  # OTEL_TRACES_SAMPLER[_ARG]
        self._root_bound = _root_bound(self._sampler)
        self._propagator = propagate.get_global_textmap()  # OTEL_PROPAGATORS
        self._fields = tuple(self._propagator.fields)
        self._span_of = trace.get_current_span
        self._kind = trace.SpanKind.SERVER
        self._processor = BatchSpanProcessor(_exporter_class(settings.protocol)(self._encoder))
        self._random = Random()  # this process's: every worker seeds its own after the fork

    def span_id(self) -> bytes:
        return (self._random.getrandbits(64) or 1).to_bytes(8, "big")

    def start(self, name: str | Callable[[], str], carrier: Mapping[str, str] | Callable[[], Mapping[str, str]],
              attributes: Callable[[], dict[str, Any]]) -> RequestSpan | None:
        """A server span for a request, child of the caller's if its headers (metadata) carry one;
        None if the sampler leaves it out. ``carrier``: the headers, or a function making them;
        ``name`` (or a function making it) and ``attributes`` (a function making the span's first
        ones) are made only if the sampler needs them or keeps the request."""
        perf = time.perf_counter()
        headers = carrier() if callable(carrier) else carrier
        for field in self._fields:
            if field in headers:
                return self._child_of(self._propagator.extract(headers), name, attributes, perf)
        trace_id = self._random.getrandbits(128) or 1
        if self._root_bound is not None:  # the SDK's own ratio test, without its call
            if trace_id & _TRACE_ID_LIMIT >= self._root_bound:
                return None
            return self._span(_made(name), trace_id, b"", attributes(), "", False, perf)
        return self._sampled(None, trace_id, b"", False, _made(name), attributes(), perf)

    def _child_of(self, context, name: str | Callable[[], str], attributes: Callable[[], dict[str, Any]], perf: float
                  ) -> RequestSpan | None:
        parent = self._span_of(context).get_span_context()
        if not parent.is_valid:
            return self._sampled(context, self._random.getrandbits(128) or 1, b"", False, _made(name), attributes(),
                                 perf)
        return self._sampled(context, parent.trace_id, parent.span_id.to_bytes(8, "big"), parent.is_remote,
                             _made(name), attributes(), perf)

    def _sampled(self, context, trace_id: int, parent_id: bytes, remote: bool, name: str,
                 attributes: dict[str, Any], perf: float) -> RequestSpan | None:
        result = self._sampler.should_sample(context, trace_id, name, self._kind, attributes)
        if not result.decision.is_sampled():
            return None
        if result.attributes:
            attributes.update(result.attributes)
        state = result.trace_state.to_header() if result.trace_state else ""
        return self._span(name, trace_id, parent_id, attributes, state, remote, perf)

    def _span(self, name: str, trace_id: int, parent_id: bytes, attributes: dict[str, Any], state: str,
              remote: bool, perf: float) -> RequestSpan:
        wall = time.time_ns() - int((time.perf_counter() - perf) * 1e9)
        server = Span(name, trace_id.to_bytes(16, "big"), self.span_id(), parent_id, wall, SERVER, attributes, state,
                      remote_parent=remote)
        return RequestSpan(self, server, perf)

    def emit(self, request: RequestSpan) -> None:
        self._processor.on_end(request)  # type: ignore[arg-type]  # encoded by spans.Encoder

    def shutdown(self) -> None:
        """Flush what is queued (OTEL_BSP_EXPORT_TIMEOUT at most) and stop the export thread."""
        self._processor.shutdown()


def _made(name: str | Callable[[], str]) -> str:
    return name() if callable(name) else name


_TRACE_ID_LIMIT = (1 << 64) - 1  # TraceIdRatioBased's: the trace id's low 64 bits decide


def _root_bound(sampler) -> int | None:
    """For a request with no caller's context, the SDK's usual samplers decide by the trace id
    alone: always on, always off, a ratio, or any of them under ParentBased. Their bound (sampled
    if the id's low 64 bits are below it) spares each request a call into the sampler; None
    for any other sampler, which is then asked every time."""
    from opentelemetry.sdk.trace import sampling

    root = sampler._root if isinstance(sampler, sampling.ParentBased) else sampler
    if root is sampling.ALWAYS_ON:
        return _TRACE_ID_LIMIT + 1
    if root is sampling.ALWAYS_OFF:
        return 0
    if type(root) is sampling.TraceIdRatioBased:
        return root.bound
    return None


def _resource_attributes(worker: int | None, version: str) -> dict[str, Any]:
    """pyserving's resource: service.name "pyserving" unless the environment names it, and a
    service.instance.id of each worker's own (the operator's, suffixed per worker, if set)."""
    environ = os.environ
    given = dict(pair.split("=", 1) for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
                 if "=" in pair)
    attributes: dict[str, Any] = {"service.version": version}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name" not in given:
        attributes["service.name"] = "pyserving"
    instance = given.get("service.instance.id", "").strip()
    if instance:
        attributes["service.instance.id"] = f"{instance}-w{worker}" if worker is not None else instance
    else:
        attributes["service.instance.id"] = str(uuid.uuid4())
    if worker is not None:
        attributes["pyserving.worker"] = worker
    return attributes


# gRPC's codes that are the server's failures, as OpenTelemetry's RPC conventions list them
# for server spans; a client's mistake (INVALID_ARGUMENT, NOT_FOUND, ...) leaves the status unset.
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
                                "DATA_LOSS"})
