"""Admission control: requests that can't be served in time are refused at once.

A request counts from the moment the data plane takes it until its answer is
built: waiting for a worker thread or a batch, and running. Two rules refuse a
new request on the event loop, before it takes a thread or a batch slot, with
UNAVAILABLE (HTTP 503 and ``Retry-After``):

* a bound on pending requests (``--max_pending_requests``, sized from the worker
  pool by default), so a flood can't queue without limit and hold memory;
* the request's own deadline: when the requests ahead of it would keep it
  waiting past its deadline (gRPC's, or ``--rest_api_timeout_in_ms``), it is
  refused now rather than answered DEADLINE_EXCEEDED later, after using a
  thread. The wait is estimated from recent requests: each position in the
  queue has cost ``_per_position`` seconds (a moving average).

A burst that the server can serve in time is never refused. Only the event
loop thread calls ``admit`` and ``release``, so plain counters are enough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ServingError

RETRY_AFTER_SECONDS = 1
# Default bound: pending requests per worker thread. Generous, so that a client's legitimate
# burst (TF Serving's own clients fire futures by the hundred) is queued, not refused.
PENDING_PER_WORKER = 128
_SMOOTHING = 0.05  # weight of the newest request in the moving average


def default_limit(workers: int) -> int:
    return PENDING_PER_WORKER * workers


@dataclass
class Admission:
    limit: int  # 0: no bound on pending requests
    pending: int = 0
    _per_position: float = 0.0  # seconds a queue position has cost lately; 0 = not measured yet

    def admit(self, deadline: float | None = None) -> tuple[float, int]:
        """Take a request (``deadline``: seconds it has left, None = none); a token for release."""
        if self.limit and self.pending >= self.limit:
            raise overloaded(f"Server is at capacity: {self.pending} requests pending "
                             f"(--max_pending_requests={self.limit}); retry later")
        expected = self.pending * self._per_position  # the wait behind those ahead; none if none
        if deadline is not None and expected > deadline:
            raise overloaded(f"Server is busy: {self.pending} requests ahead of this one would take "
                             f"about {expected * 1000:.0f} ms, past its deadline of {deadline * 1000:.0f} ms")
        self.pending += 1
        return time.perf_counter(), self.pending

    def release(self, token: tuple[float, int]) -> None:
        started, position = token
        self.pending -= 1
        sample = (time.perf_counter() - started) / position
        self._per_position += _SMOOTHING * (sample - self._per_position) if self._per_position else sample


def overloaded(message: str) -> ServingError:
    error = ServingError.unavailable(message)
    error.retry_after = RETRY_AFTER_SECONDS
    return error
