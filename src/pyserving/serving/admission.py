"""Admission control: requests that can't be served in time are refused at once.

A request counts from the moment it is taken until its answer is built: waiting (for the event
loop, a worker thread or a batch) and running. Three rules refuse a new request before it takes
a thread or a batch slot, with UNAVAILABLE (HTTP 503 and ``Retry-After``):

* a bound on pending requests (``--max_pending_requests``), so a flood can't queue without limit
  and hold memory;
* the request's own deadline: when the requests ahead of it would keep it waiting past its
  deadline (gRPC's, or ``--rest_api_timeout_in_ms``), it is refused now rather than answered
  DEADLINE_EXCEEDED later, after using a thread;
* a standing queue (``--queue_delay_target_in_ms``), CoDel's idea (Nichols & Jacobson, 2012)
  applied to admission: a burst that drains is fine, a queue that stays is not. When every
  request for a whole interval has found more than the target's worth of work ahead of it, the
  server is taking in more than it serves, and from then on a request that would wait longer
  than the target is refused, until the queue has stayed under the target for an interval. So
  accepted requests keep a latency near the target under any flood, and the excess is refused
  quickly enough to cost little.

The wait ahead of a request is estimated from recent requests: each position in the queue has
cost ``_per_position`` seconds lately, the time between answers while requests were pending
(Little's law: pending / throughput is the wait). A server's first answers include one-time costs
(a Session's first run of a signature optimises its graph: ~85 ms for the MNIST tutorial's model,
then 0.3 ms), and a moving average started on such a sample refused TF Serving's own MNIST
client's 1,000 futures for minutes of answers: so the first ``WARMUP_SAMPLES`` estimates are the
median so far (one slow answer among fast ones counts for nothing), the moving average starts
from there, and no rule uses an estimate of fewer than ``MIN_SAMPLES`` answers. The target is
never below ``TARGET_POSITIONS`` positions, and the interval never below four targets, so a
slow model's ordinary queue is not taken for an overload. Only the event loop thread calls
``refusal``, ``enter`` and ``leave``, so plain counters are enough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from pyserving.errors import ServingError

RETRY_AFTER_SECONDS = 1
# Default bound: pending requests per worker thread. Generous, so that a client's legitimate
# burst (TF Serving's own clients fire futures by the hundred) is queued, not refused.
PENDING_PER_WORKER = 128
# A queue standing past 50 ms is a server taking in more than it serves (a flood, clients with
# no bound on their concurrency), not a load test's 64 connections on a fast model: those keep
# their goodput. Latency-critical services set a few ms and accept refusals in exchange.
QUEUE_DELAY_TARGET_MS = 50
INTERVAL_SECONDS = 0.1  # CoDel's: a queue must stand this long to count as an overload
TARGET_POSITIONS = 16  # so up to 16 requests at once per worker are never refused by the rule
OVERLOADED_MESSAGE = ("Server is overloaded: requests have been queueing longer than "
                      "--queue_delay_target_in_ms; retry later")
_SMOOTHING = 0.05  # weight of the newest request in the moving average
WARMUP_SAMPLES = 9  # answers whose median is the estimate, before the moving average
MIN_SAMPLES = 3  # answers before the estimate refuses anything


def default_limit(workers: int) -> int:
    return PENDING_PER_WORKER * workers


Token = tuple[float, int]  # (when the request was taken, its position then)


@dataclass
class Admission:
    limit: int  # 0: no bound on pending requests
    target: float = QUEUE_DELAY_TARGET_MS / 1000  # seconds; 0: no standing-queue rule
    deadlines: bool = False  # the standing-queue rule applies to clients' deadlines too
    pending: int = 0
    shedding: bool = False  # a standing queue was found: waits past the target are refused
    _per_position: float = 0.0  # seconds a queue position has cost lately; 0 = not measured yet
    # What a request waits before it is even counted (the REST gate: the event loop's recent cycle,
    # rest_gate.LoopLag). With one, the standing queue is judged on it too: requests served on the
    # loop come in batches, so the count alone drops to zero every cycle however long the cycle.
    lag: Callable[[], float] | None = None
    _above_since: float | None = None  # since when every look found the queue above target
    _last_above: float = float("-inf")
    _first: list[float] = field(default_factory=list)  # the first WARMUP_SAMPLES samples
    _busy_since: float = 0.0  # when the pending count last left 0
    _last_answer: float = 0.0

    def refusal(self, deadline: float | None = None, now: float | None = None,
                client_deadline: bool = False) -> str | None:
        """Why a new request must be refused now (``deadline``: seconds it has left), or None.
        ``client_deadline``: the deadline is the client's own (gRPC's), which says how long it will
        wait: such a request is judged by it alone, not by the standing-queue rule (TF Serving's
        clients send bursts of a thousand futures, each with one, and expect every answer),
        unless ``deadlines`` (--queue_delay_target_applies_to_deadlines)."""
        if self.limit and self.pending >= self.limit:
            return (f"Server is at capacity: {self.pending} requests pending "
                    f"(--max_pending_requests={self.limit}); retry later")
        # The wait behind those ahead; none if none, or while too few answers were seen to know.
        expected = self.pending * self._per_position if len(self._first) >= MIN_SAMPLES else 0.0
        if deadline is not None and expected > deadline:
            return (f"Server is busy: {self.pending} requests ahead of this one would take "
                    f"about {expected * 1000:.0f} ms, past its deadline of {deadline * 1000:.0f} ms")
        now = time.perf_counter() if now is None else now
        if client_deadline and not self.deadlines:
            return None
        if self.target and self._over_target(self._signal(expected), now) and expected > self._target():
            return OVERLOADED_MESSAGE
        return None

    def admit(self, deadline: float | None = None, client_deadline: bool = False) -> Token:
        """Take a request, or raise UNAVAILABLE; the token goes back to ``leave``."""
        now = time.perf_counter()
        reason = self.refusal(deadline, now, client_deadline)
        if reason is not None:
            raise overloaded(reason)
        return self.enter(now)

    def enter(self, now: float) -> Token:
        """Count a request in (``refusal`` said None)."""
        if not self.pending:
            self._busy_since = now
        self.pending += 1
        return now, self.pending

    def leave(self, token: Token, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.pending -= 1
        sample = now - max(self._last_answer, self._busy_since)  # idle time is no one's cost
        self._last_answer = now
        if len(self._first) < WARMUP_SAMPLES:
            self._first.append(sample)
            self._per_position = sorted(self._first)[(len(self._first) - 1) // 2]  # the lower median
        else:
            self._per_position += _SMOOTHING * (sample - self._per_position)
        if self.target and self._above_since is not None:
            self._over_target(self._signal(self.pending * self._per_position), now)  # a drained burst resets

    def _signal(self, expected: float) -> float:
        return expected if self.lag is None else max(expected, self.lag())

    def _target(self) -> float:
        return max(self.target, TARGET_POSITIONS * self._per_position)

    def _over_target(self, expected: float, now: float) -> bool:
        """CoDel's state: True when a request expected to wait ``expected`` must be refused."""
        target = self._target()
        interval = max(INTERVAL_SECONDS, 4 * target)
        if expected <= target:
            if self.shedding and now - self._last_above >= interval:
                self.shedding = False
            if not self.shedding:
                self._above_since = None
            return False
        self._last_above = now
        if self._above_since is None:
            self._above_since = now
        elif not self.shedding and now - self._above_since >= interval:
            self.shedding = True
        return self.shedding


def overloaded(message: str) -> ServingError:
    error = ServingError.unavailable(message)
    error.retry_after = RETRY_AFTER_SECONDS
    return error
