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
from typing import Any, Iterable, Mapping, Protocol

# trace.proto's Span.SpanKind and Status.StatusCode.
INTERNAL, SERVER = 1, 2
UNSET, OK, ERROR = 0, 1, 2

_TIMES = struct.Struct("<BQBQ")  # Span's start and end (fields 7 and 8, fixed64)
# Span.flags (field 16, fixed32): sampled, and whether the parent came from another process.
_LOCAL, _REMOTE = b"\x85\x01" + struct.pack("<I", 0x101), b"\x85\x01" + struct.pack("<I", 0x301)

# What BatchSpanProcessor.on_end checks of what it is given: only sampled requests make spans at all.
SAMPLED = SimpleNamespace(trace_flags=SimpleNamespace(sampled=True))


class Span:
    """One finished span, as OTLP carries it. Times are Unix nanoseconds."""

    __slots__ = ("name", "trace_id", "span_id", "parent_id", "trace_state", "kind", "start", "end",
                 "attributes", "status", "message", "remote_parent")

    def __init__(self, name: str, trace_id: bytes, span_id: bytes, parent_id: bytes, start: int,
                 kind: int = INTERNAL, attributes: dict[str, Any] | None = None, trace_state: str = "",
                 remote_parent: bool = False) -> None:
        self.name, self.trace_id, self.span_id, self.parent_id = name, trace_id, span_id, parent_id
        self.start, self.end, self.kind, self.trace_state = start, start, kind, trace_state
        self.attributes = attributes if attributes is not None else {}
        self.status, self.message, self.remote_parent = UNSET, "", remote_parent


class Encodable(Protocol):
    def encode(self, encoder: "Encoder") -> bytes: ...


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

    def _cached(self, key: tuple, make) -> bytes:
        found = self._attributes.get(key)
        if found is None:
            found = make()
            if len(self._attributes) >= self.MAX_CACHED:
                self._attributes.clear()
            self._attributes[key] = found
        return found

    def _attribute(self, key: str, value: Any) -> bytes:
        return self._cached((key, type(value), value), lambda: _field(0x4A, key_value(key, value)))

    def span(self, span: Span) -> bytes:
        return self.fields(span.trace_id, span.span_id, span.parent_id, span.name, span.kind, span.start, span.end,
                           span.attributes, span.status, span.message, span.trace_state, span.remote_parent)

    def fields(self, trace_id: bytes, span_id: bytes, parent_id: bytes, name: str, kind: int, start: int, end: int,
               attributes: Mapping[str, Any] | None, status: int = UNSET, message: str = "", trace_state: str = "",
               remote_parent: bool = False) -> bytes:
        """One span, as ScopeSpans.spans (field 2) holds it."""
        parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id]
        if trace_state:
            parts.append(_field(0x1A, trace_state.encode()))
        if parent_id:
            parts += (b"\x22\x08", parent_id)
        head = self._attributes.get((name, kind)) or self._cached(
            (name, kind), lambda: _field(0x2A, name.encode()) + b"\x30" + bytes((kind,)))
        parts += (head, _TIMES.pack(0x39, start, 0x41, end))
        if attributes:
            # A route's or a model's spans mostly repeat one set of attributes: one lookup for them all.
            # The values' types are in the key: 1, 1.0 and True are equal, and encode differently.
            items = (tuple(attributes.items()), tuple(map(type, attributes.values())))
            block = self._attributes.get(items)
            if block is None:
                attribute = self._attribute
                block = self._cached(items, lambda: b"".join([attribute(k, v) for k, v in items[0]]))
            parts.append(block)
        if status:
            body = (_field(0x12, message.encode("utf-8", "replace")) if message else b"") + b"\x18" + bytes((status,))
            parts.append(_field(0x7A, body))
        parts.append(_REMOTE if remote_parent else _LOCAL)
        return _field(0x12, b"".join(parts))

    def request(self, items: Iterable[Span | Encodable]) -> bytes:
        """ExportTraceServiceRequest: ``items`` are spans, or what encodes itself as several (a
        request's spans travel together: tracing.RequestSpan)."""
        body = b"".join([item.encode(self) if hasattr(item, "encode") else self.span(item) for item in items])
        return _field(0x0A, self._resource + _field(0x12, self._scope + body))  # ResourceSpans, ScopeSpans
