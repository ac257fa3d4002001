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

from .spans import ERROR, SERVER, Encoder, Span

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

    Children are recorded from perf_counter readings; they and the server span reach the
    exporter together when the protocol layer finishes the request."""

    __slots__ = ("_tracing", "server", "children", "_perf", "_wall", "reason")

    def __init__(self, tracing: "Tracing", server: Span, perf: float) -> None:
        self._tracing, self.server, self.children = tracing, server, []
        self._perf, self._wall = perf, server.start
        self.reason = ""  # why the request failed, for the span's status

    def at(self, perf: float) -> int:
        """A perf_counter reading as Unix nanoseconds."""
        return self._wall + int((perf - self._perf) * 1e9)

    def child(self, name: str, start: float, end: float, attributes: dict[str, Any] | None = None) -> None:
        span = Span(name, self.server.trace_id, self._tracing.span_id(), self.server.span_id, self.at(start),
                    attributes=attributes)
        span.end = self.at(end)
        self.children.append(span)

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


class Tracing:
    """A worker process's tracer: the SDK's sampler, resource, propagators and batch processor."""

    def __init__(self, settings: TracingSettings, worker: int | None, version: str) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(_resource_attributes(worker, version))
        self._encoder = Encoder(dict(resource.attributes), "pyserving", version)
        self.resource = dict(resource.attributes)
        self._sampler = TracerProvider().sampler  # OTEL_TRACES_SAMPLER[_ARG]
        self._propagator = propagate.get_global_textmap()  # OTEL_PROPAGATORS
        self._fields = frozenset(self._propagator.fields)
        self._span_of = trace.get_current_span
        self._kind = trace.SpanKind.SERVER
        self._processor = BatchSpanProcessor(_exporter_class(settings.protocol)(self._encoder))
        self._random = Random()  # this process's: every worker seeds its own after the fork

    def span_id(self) -> bytes:
        return (self._random.getrandbits(64) or 1).to_bytes(8, "big")

    def start(self, name: str, carrier: Mapping[str, str] | Callable[[], Mapping[str, str]],
              attributes: dict[str, Any]) -> RequestSpan | None:
        """A server span for a request, child of the caller's if its headers (metadata) carry one;
        None if the sampler leaves it out. ``carrier``: the headers, or a function making them."""
        perf, wall = time.perf_counter(), time.time_ns()
        headers = carrier() if callable(carrier) else carrier
        parent_context = None
        if any(f in headers for f in self._fields):
            parent_context = self._propagator.extract(headers)
        parent = self._span_of(parent_context).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else (self._random.getrandbits(128) or 1)
        sampled = self._sampler.should_sample(parent_context, trace_id, name, self._kind, attributes)
        if not sampled.decision.is_sampled():
            return None
        attributes.update(sampled.attributes or {})
        state = sampled.trace_state.to_header() if sampled.trace_state else ""
        server = Span(name, trace_id.to_bytes(16, "big"), self.span_id(),
                      parent.span_id.to_bytes(8, "big") if parent.is_valid else b"", wall, SERVER,
                      attributes, state, remote_parent=parent.is_valid and parent.is_remote)
        return RequestSpan(self, server, perf)

    def emit(self, request: RequestSpan) -> None:
        on_end = self._processor.on_end
        on_end(request.server)
        for child in request.children:
            on_end(child)

    def shutdown(self) -> None:
        """Flush what is queued (OTEL_BSP_EXPORT_TIMEOUT at most) and stop the export thread."""
        self._processor.shutdown()


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


def server_error_http(status: int) -> bool:
    return status >= 500


# gRPC's codes that are the server's failures, as OpenTelemetry's RPC conventions list them
# for server spans; a client's mistake (INVALID_ARGUMENT, NOT_FOUND, ...) leaves the status unset.
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
                                "DATA_LOSS"})
