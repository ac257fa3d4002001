"""A request's spans as plain records, and their OTLP encoding.

The OpenTelemetry SDK configures tracing here (sampler, resource, batching, exporters: tracing.py),
but its spans are not what a request records: an SDK span costs ~16 µs to make and ~44 µs to
encode for export (measured on this project's machines, upb protobuf), several times a
half_plus_two request's whole budget at 100% sampling. A request's spans are made after the
fact from the times the data plane already takes, and encoded here straight to the OTLP wire
format (opentelemetry/proto/trace/v1/trace.proto), each attribute's bytes cached: a few µs a span.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

# trace.proto's Span.SpanKind and Status.StatusCode.
INTERNAL, SERVER = 1, 2
UNSET, OK, ERROR = 0, 1, 2

# What BatchSpanProcessor.on_end checks of a span: only sampled requests make spans at all.
_SAMPLED = SimpleNamespace(trace_flags=SimpleNamespace(sampled=True))


class Span:
    """One finished span, as OTLP carries it. Times are Unix nanoseconds."""

    __slots__ = ("name", "trace_id", "span_id", "parent_id", "trace_state", "kind", "start", "end",
                 "attributes", "status", "message", "remote_parent")
    context = _SAMPLED

    def __init__(self, name: str, trace_id: bytes, span_id: bytes, parent_id: bytes, start: int,
                 kind: int = INTERNAL, attributes: dict[str, Any] | None = None, trace_state: str = "",
                 remote_parent: bool = False) -> None:
        self.name, self.trace_id, self.span_id, self.parent_id = name, trace_id, span_id, parent_id
        self.start, self.end, self.kind, self.trace_state = start, start, kind, trace_state
        self.attributes = attributes if attributes is not None else {}
        self.status, self.message, self.remote_parent = UNSET, "", remote_parent


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64's negatives: ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) whose number and type make ``tag`` < 128."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return _field(0x0A, str(value).encode("utf-8", "replace"))


def key_value(key: str, value: Any) -> bytes:
    """common.proto's KeyValue, as a field of tag 0x0A (Resource) or 0x4A (Span) strips and adds."""
    return _field(0x0A, key.encode()) + _field(0x12, _any_value(value))


class Encoder:
    """ExportTraceServiceRequest bytes for a batch of spans of one resource and scope."""

    MAX_CACHED = 4096  # attribute values; a client's path is one, so the cache is bounded

    def __init__(self, resource: Mapping[str, Any], scope: str, version: str) -> None:
        attributes = b"".join(_field(0x0A, key_value(k, v)) for k, v in resource.items())
        self._resource = _field(0x0A, attributes)  # ResourceSpans.resource
        self._scope = _field(0x0A, _field(0x0A, scope.encode()) + _field(0x12, version.encode()))
        self._attributes: dict[tuple[str, Any], bytes] = {}

    def _attribute(self, key: str, value: Any) -> bytes:
        cache_key = (key, type(value), value)
        found = self._attributes.get(cache_key)
        if found is None:
            found = _field(0x4A, key_value(key, value))
            if len(self._attributes) >= self.MAX_CACHED:
                self._attributes.clear()
            self._attributes[cache_key] = found
        return found

    def span(self, span: Span) -> bytes:
        parts = [b"\x0a\x10", span.trace_id, b"\x12\x08", span.span_id]
        if span.trace_state:
            parts.append(_field(0x1A, span.trace_state.encode()))
        if span.parent_id:
            parts += (b"\x22\x08", span.parent_id)
        parts += (_field(0x2A, span.name.encode()), b"\x30", bytes((span.kind,)),
                  b"\x39", struct.pack("<Q", span.start), b"\x41", struct.pack("<Q", span.end))
        parts += [self._attribute(k, v) for k, v in span.attributes.items()]
        if span.status:
            status = (_field(0x12, span.message.encode("utf-8", "replace")) if span.message else b"") \
                + b"\x18" + bytes((span.status,))
            parts.append(_field(0x7A, status))
        # Span.flags (field 16, fixed32): sampled, and whether the parent came from another process.
        parts += (b"\x85\x01", struct.pack("<I", 0x101 | (0x200 if span.remote_parent else 0)))
        return _field(0x12, b"".join(parts))  # ScopeSpans.spans

    def request(self, spans: Iterable[Span]) -> bytes:
        scope_spans = _field(0x12, self._scope + b"".join(map(self.span, spans)))
        return _field(0x0A, self._resource + scope_spans)  # ExportTraceServiceRequest.resource_spans
