"""Tracing's parts: the OTLP encoding checked by opentelemetry-proto's own parser, and which
environments turn tracing on."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pyserving.errors import ServingError
from pyserving.observability.spans import ERROR, SERVER, Encoder, Span
from pyserving.observability.tracing import TracingSettings


def test_spans_encode_as_otlp_parses_them():
    encoder = Encoder({"service.name": "svc", "pyserving.worker": 1}, "pyserving", "9.9")
    server = Span("POST /v1/models/{model_name}:predict", bytes(range(16)), bytes(range(8)), b"\x07" * 8, 10**18,
                  SERVER, {"s": "é\n", "i": -5, "big": 2**62, "f": 0.25, "b": False}, "k=v", remote_parent=True)
    server.end, server.status, server.message = 10**18 + 123, ERROR, "Internal error: boom"
    child = Span("pyserving.run", server.trace_id, b"\x01" * 8, server.span_id, 10**18 + 5)
    request = ExportTraceServiceRequest.FromString(encoder.request([server, child]))
    (resource_spans,) = request.resource_spans
    assert {kv.key: kv.value for kv in resource_spans.resource.attributes}["pyserving.worker"].int_value == 1
    (scope,) = resource_spans.scope_spans
    assert (scope.scope.name, scope.scope.version) == ("pyserving", "9.9")
    first, second = scope.spans
    assert first.trace_id == bytes(range(16)) and first.parent_span_id == b"\x07" * 8
    assert first.kind == SERVER and first.trace_state == "k=v"
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (10**18, 10**18 + 123)
    values = {kv.key: kv.value for kv in first.attributes}
    assert values["s"].string_value == "é\n" and values["i"].int_value == -5 and values["big"].int_value == 2**62
    assert values["f"].double_value == 0.25 and values["b"].HasField("bool_value") and not values["b"].bool_value
    assert (first.status.code, first.status.message) == (ERROR, "Internal error: boom")
    assert first.flags == 0x301 and second.flags == 0x101  # sampled; the parent remote, or not
    assert second.parent_span_id == first.span_id and second.kind == 1 and not second.HasField("status")


def test_the_attribute_cache_is_bounded():
    encoder = Encoder({}, "pyserving", "1")
    for i in range(Encoder.MAX_CACHED * 2):
        encoder.span(Span("x", b"\x01" * 16, b"\x02" * 8, b"", 0, attributes={"url.path": f"/{i}"}))
    assert len(encoder._attributes) <= Encoder.MAX_CACHED


@pytest.mark.parametrize("environ, protocol", [
    ({}, None),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "grpc"),  # the traces-only variable wins
])
def test_which_environments_turn_tracing_on(environ, protocol):
    settings = TracingSettings.from_environment(environ)
    assert (settings.protocol if settings else None) == protocol


def test_an_exporter_pyserving_lacks_is_refused():
    with pytest.raises(ServingError, match="OTLP only"):
        TracingSettings.from_environment({"OTEL_TRACES_EXPORTER": "otlp,jaeger"})


@pytest.mark.parametrize("sampler, arg", [("always_on", ""), ("always_off", ""), ("traceidratio", "0.3"),
                                          ("parentbased_traceidratio", "0.01"), ("parentbased_always_off", "")])
def test_the_root_shortcut_decides_as_the_sdks_sampler(sampler, arg, monkeypatch):
    """Tracing.start skips the sampler's call for a request with no caller's context only where
    the decision is the trace id's alone; it must be the SDK's decision, id for id."""
    import random

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    from pyserving.observability.tracing import _TRACE_ID_LIMIT, _root_bound

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    sdk = TracerProvider().sampler
    bound = _root_bound(sdk)
    assert bound is not None
    ids = [random.getrandbits(128) for _ in range(3000)] + [1, _TRACE_ID_LIMIT, 2**127]
    for trace_id in ids:
        expected = sdk.should_sample(None, trace_id, "x", SpanKind.SERVER).decision.is_sampled()
        assert (trace_id & _TRACE_ID_LIMIT < bound) == expected, (sampler, trace_id)


def test_equal_values_of_other_types_keep_their_own_encoding():
    """1, 1.0 and True are equal (and hash alike) in Python: the attribute cache must not give one
    the other's bytes."""
    encoder = Encoder({}, "pyserving", "1")
    kinds = []
    for value in (1, True, 1.0, 1):
        span = Span("x", b"\x01" * 16, b"\x02" * 8, b"", 0, attributes={"v": value})
        (parsed,) = ExportTraceServiceRequest.FromString(encoder.request([span])).resource_spans[0].scope_spans[0].spans
        kinds.append(parsed.attributes[0].value.WhichOneof("value"))
    assert kinds == ["int_value", "bool_value", "double_value", "int_value"]
