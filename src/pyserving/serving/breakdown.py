"""A traced request's spans below its server span: where its time went, from the Phases the data
plane takes for every request (Triton's statistics read the same), so tracing adds no clock
readings of its own to the hot path."""

from __future__ import annotations

from pyserving.observability.statistics import Phases
from pyserving.observability.tracing import RequestSpan

# A phase shorter than this gets no span of its own: it would only clutter the trace.
SIGNIFICANT_SECONDS = 50e-6
# Making a model resident for longer than this was a load (a cold start), not a lookup.
COLD_START_SECONDS = 1e-3


def record(span: RequestSpan, api: str, model: str, version: int | None, signature: str, status: str,
           reason: str, start: float, phases: Phases) -> None:
    """The model's attributes on the server span, and a span per significant phase below it."""
    span.server.attributes.update({"pyserving.model.name": model, "pyserving.model.version": version,
                                   "pyserving.model.signature": signature,
                                   "pyserving.api": api, "pyserving.outcome": status})
    if version is None:  # no version was chosen
        del span.server.attributes["pyserving.model.version"]
    if reason:
        span.reason = reason
    if phases.resident >= COLD_START_SECONDS:
        span.child("pyserving.cold_start", start, start + phases.resident, {"pyserving.model.name": model})
    if not phases.began:
        return  # refused or failed before a thread took it
    if phases.queue >= SIGNIFICANT_SECONDS:
        span.child("pyserving.queue", start + phases.resident, phases.began)
    run = phases.began + phases.compute_input
    if phases.compute_input >= SIGNIFICANT_SECONDS or not phases.ran:
        span.child("pyserving.decode", phases.began, run)
    if not phases.ran:
        return
    end = run + phases.compute_infer
    if phases.batch_rows:
        waited = run + phases.batch_wait
        span.child("pyserving.batch_wait", run, waited, {"pyserving.batch.size": phases.batch_rows})
        run = waited
    span.child("pyserving.run", run, end, {"pyserving.model.name": model})
    if phases.compute_output >= SIGNIFICANT_SECONDS:
        span.child("pyserving.encode", end, end + phases.compute_output)
