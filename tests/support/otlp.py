"""A real OTLP receiver on loopback, over both of OTLP's protocols: gRPC (TraceService/Export)
and HTTP (POST /v1/traces, protobuf), decoding what a server exports with opentelemetry-proto.
(The OpenTelemetry Collector isn't installable from the registries these machines reach.)"""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .server import free_port, wait_for


@dataclass
class Received:
    """One exported span, with its resource's attributes."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start: int
    end: int
    attributes: dict
    status: int
    message: str
    resource: dict
    flags: int


def _value(any_value):
    return getattr(any_value, any_value.WhichOneof("value")) if any_value.WhichOneof("value") else None


def _attributes(pairs) -> dict:
    return {kv.key: _value(kv.value) for kv in pairs}


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.exports = {"grpc": 0, "http/protobuf": 0}
        self._lock = threading.Lock()
        self.grpc_port, self.http_port = free_port(), free_port()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver.add(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
                if ok:
                    receiver.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body), "http/protobuf")
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Handler)

    def add(self, request, protocol: str) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(Received(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                             s.kind, s.start_time_unix_nano, s.end_time_unix_nano,
                                             _attributes(s.attributes), s.status.code, s.status.message,
                                             resource, s.flags))
        with self._lock:
            self.spans += received
            self.exports[protocol] += 1

    def __enter__(self) -> "Receiver":
        self._grpc.start()
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._grpc.stop(0)
        self._http.shutdown()

    def env(self, protocol: str = "grpc", **more: str) -> dict[str, str]:
        """The OpenTelemetry environment variables that point a server here, exports 50 ms apart."""
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "50",
                **more}

    def trace(self, trace_id: str, count: int, timeout: float = 20) -> list[Received]:
        """The trace's spans once ``count`` have arrived."""
        wait_for(lambda: len(self.of(trace_id)) >= count, timeout, f"{count} spans of trace {trace_id}")
        return self.of(trace_id)

    def of(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def where(self, predicate: Callable[[Received], bool]) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if predicate(s)]
