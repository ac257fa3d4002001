"""gRPC admission: an overloaded server refuses a share of its calls with UNAVAILABLE.

grpc.aio takes calls from its C core one at a time, one per turn of the event loop, so under a
flood the queue is in the C core, where no count of Python's sees it: 200 calls kept in flight
against a model served on the loop all waited there (60 ms each) while Python saw one at a time,
and the data plane's admission (serving/admission.py) never refused any. The core does count what it
holds: channelz gives the calls started and finished on the server. So every
``PERIOD_SECONDS`` while calls arrive, ``CoreQueue`` reads the calls open in the core, takes away
the ones Python is serving, and divides by the rate Python has been taking them: the time a call
now waits in the core before any handler sees it (Little's law).

``GrpcGate`` holds that wait near ``--queue_delay_target_in_ms`` the way PIE (RFC 8033) holds a
router's queue: a share of the calls without a deadline is refused as they are taken, and the
share moves each period with how far the wait is from the target (up when above, down when
under, nothing when the core is empty). Refusing a share shortens what every call behind
waits, but a refusal is not free: grpc.aio's own work for any call (about 105 µs here, against
about 310 µs to serve half_plus_two) is spent whatever the answer. So refusals hold the wait
for an overload of up to about three times capacity; the share stops at ``MAX_REFUSED`` so that
a tenth of the calls are still served, whatever the flood. The model-management, health
and profiler services are never refused here. A call with a deadline has its client's word on how
long it will wait (TF Serving's own clients send bursts of hundreds of futures with one each, and
expect every one answered), so it is judged by that, not by the target: a second share, held the
same way, keeps the core's wait under ``DEADLINE_FRACTION`` of the shortest deadline calls have
come with lately, so a flood is refused as it is taken instead of waiting out its deadline in the
core and failing DEADLINE_EXCEEDED having held queue space for nothing. A burst that drains within
its deadlines is never refused. ``--queue_delay_target_applies_to_deadlines`` sheds calls with a
deadline toward the target like the rest: lower latency under a flood, refusals of calls that
would have been answered in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from grpc._cython import cygrpc  # channelz: grpc's own counters, no extra package

from pyserving.observability.monitoring import Metrics

log = logging.getLogger("pyserving.grpc")

MAX_REFUSED = 0.9  # of the calls taken: a flood past what refusals can hold still gets answers
GAIN = 0.25  # how far one period moves the refused share, per target's worth of excess wait
# Calls with a deadline: the core's wait is held under this share of the shortest deadline seen, so a
# call is refused as it is taken rather than left to wait out its deadline in the core.
DEADLINE_FRACTION = 0.5
BUDGET_SMOOTHING = 0.05  # how fast the deadline budget follows longer deadlines, per period
# Of the budget: how long the core's wait must stay past DEADLINE_FRACTION of it before calls with a
# deadline are refused. The estimate is noisy over one period (a loop starved for 20 ms takes one
# call and sees a thousand waiting), and TF Serving's client sends 1,000 futures that drain in time.
DEADLINE_PERSISTENCE = 0.1
# The calls grpc's core holds for a handler (grpc.server.max_pending_requests_hard_limit, its
# default): past it, the core cancels a new call at once (the client sees CANCELLED) and channelz
# counts it as started but never as finished.
CORE_PENDING_LIMIT = 3000
CORE_PENDING_LIMIT_ARG = "grpc.server.max_pending_requests_hard_limit"


def core_pending_limit(channel_arguments: dict) -> int:
    """The core's bound on calls waiting for a handler, under these channel arguments."""
    value = channel_arguments.get(CORE_PENDING_LIMIT_ARG, CORE_PENDING_LIMIT)
    return value if isinstance(value, int) and value > 0 else CORE_PENDING_LIMIT


def _server_id(port: int) -> int | None:
    """The channelz id of the gRPC server listening on ``port`` in this process."""
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_servers(start))
        for server in page.get("server", []):
            ref = int(server["ref"]["serverId"])
            start = max(start, ref + 1)
            if any(s.get("name", "").endswith(f":{port}") for s in server.get("listenSocket", [])):
                return ref
        if page.get("end", True) or not page.get("server"):
            return None


@dataclass
class CoreQueue:
    """How long calls now wait in grpc's C core before a handler takes them, sampled."""

    PERIOD_SECONDS = 0.02

    server_id: int | None = None
    limit: int = CORE_PENDING_LIMIT  # calls the core holds at most (core_pending_limit)
    taken: int = 0  # calls handed to a handler, ever
    active: int = 0  # of those, not yet answered
    seconds: float = 0.0  # the latest estimate of the wait
    waiting: int = 0  # calls open in the core and not taken, at the latest sample
    # Calls open in the core that are not queued (health Watch streams) count as waiting: a few
    # calls, against the hundreds a flood keeps there.
    lost: int = 0  # calls the core cancelled past its limit: started, and never counted finished
    _last_taken: int = 0
    _last_time: float = 0.0
    _handle: asyncio.TimerHandle | None = None

    def start(self, port: int) -> bool:
        try:
            self.server_id = _server_id(port)
        except Exception as e:  # noqa: BLE001 - an older grpc's channelz: no gate, say so
            log.warning("gRPC load shedding is off: channelz can't be read (%s)", e)
            return False
        if self.server_id is None:  # grpc.enable_channelz=0 in --grpc_channel_arguments
            log.warning("gRPC load shedding is off: channelz is disabled for the gRPC server")
            return False
        self._last_time = time.perf_counter()
        self._schedule()
        return True

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.PERIOD_SECONDS, self._sample)

    def _sample(self) -> None:
        now = time.perf_counter()
        taken = self.taken - self._last_taken
        if not taken:  # idle (or a stalled loop): nothing to shed, and the core is not read
            self.waiting, self.seconds = 0, 0.0
        else:
            data = json.loads(cygrpc.channelz_get_server(self.server_id))["server"]["data"]
            open_calls = (int(data.get("callsStarted", 0)) - int(data.get("callsSucceeded", 0))
                          - int(data.get("callsFailed", 0)))
            self.waiting = self._queued(open_calls - self.active)
            self.seconds = self.waiting * max(now - self._last_time, 1e-6) / taken
        self._last_taken, self._last_time = self.taken, now
        self.on_sample()
        self._schedule()

    def _queued(self, unfinished: int) -> int:
        """The calls queued in the core, of those it counts unfinished. Past its limit it cancels
        calls uncounted: without this, a flood past it left thousands counted as queued for good,
        and the gate kept refusing calls long after the flood had passed."""
        queued = unfinished - self.lost
        if queued > self.limit or queued < 0:  # more than it holds, or fewer than none: the rest were lost
            self.lost += queued - min(max(queued, 0), self.limit)
            queued = min(max(queued, 0), self.limit)
        return queued

    def on_sample(self, now: float | None = None) -> None:
        """Called after each period's estimate (the gate's controller)."""


@dataclass
class GrpcGate(CoreQueue):
    target: float = 0.05  # seconds: --queue_delay_target_in_ms
    metrics: Metrics | None = None
    # --queue_delay_target_applies_to_deadlines: calls with a deadline are shed toward the target too
    deadlines: bool = False
    refused_share: float = 0.0
    deadline_share: float = 0.0  # of the calls with a deadline, held apart (below)
    budget: float | None = None  # seconds: the shortest deadline calls have come with lately
    _credit: float = field(default=0.0, repr=False)
    _deadline_credit: float = field(default=0.0, repr=False)
    _period_shortest: float = field(default=float("inf"), repr=False)
    _deadline_since: float | None = field(default=None, repr=False)  # the wait past the deadline target since

    def on_sample(self, now: float | None = None) -> None:
        now = self._last_time if now is None else now
        self._update_budget()
        if not self.waiting:
            self.refused_share = self.deadline_share = 0.0
            self._deadline_since = None
            return
        self.refused_share = self._step(self.refused_share, self.target)
        if self.budget is not None:
            target = DEADLINE_FRACTION * self.budget
            if self.seconds <= target:
                self._deadline_since = None
            elif self._deadline_since is None:
                self._deadline_since = now
            if self._deadline_since is None or now - self._deadline_since >= DEADLINE_PERSISTENCE * self.budget:
                self.deadline_share = self._step(self.deadline_share, target)

    def _step(self, share: float, target: float) -> float:
        step = GAIN * (self.seconds - target) / target
        return min(MAX_REFUSED, max(0.0, share + max(-GAIN, min(GAIN, step))))

    def _update_budget(self) -> None:
        """The shortest deadline lately: a shorter one at once, a longer one slowly."""
        shortest, self._period_shortest = self._period_shortest, float("inf")
        if shortest == float("inf"):
            return
        if self.budget is None or shortest < self.budget:
            self.budget = shortest
        else:
            self.budget += BUDGET_SMOOTHING * (shortest - self.budget)

    def refuse(self, deadline: float | None = None) -> bool:
        """Whether the call being taken (``deadline``: the seconds it has left) is refused: exactly
        the share for its kind, spread evenly."""
        if deadline is None or self.deadlines:
            refused, self._credit = self._draw(self.refused_share, self._credit)
        else:
            # What the call was given: what it has left, plus what it waited in the core.
            self._period_shortest = min(self._period_shortest, max(deadline, 0.0) + self.seconds)
            refused, self._deadline_credit = self._draw(self.deadline_share, self._deadline_credit)
        if refused and self.metrics is not None:
            self.metrics.grpc_shed.inc()
        return refused

    @staticmethod
    def _draw(share: float, credit: float) -> tuple[bool, float]:
        if not share:
            return False, credit
        credit += share
        return (True, credit - 1.0) if credit >= 1.0 else (False, credit)

    def enter(self) -> None:
        self.taken += 1
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
