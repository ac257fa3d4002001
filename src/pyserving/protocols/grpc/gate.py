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
and profiler services are never refused here, nor is a call with a deadline: it waits its
turn, as in TF Serving, and the core drops it at no cost to Python if its deadline passes first.
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
    taken: int = 0  # calls handed to a handler, ever
    active: int = 0  # of those, not yet answered
    seconds: float = 0.0  # the latest estimate of the wait
    waiting: int = 0  # calls open in the core and not taken, at the latest sample
    # Calls open in the core that are not queued (health Watch streams) count as waiting: a few
    # calls, against the hundreds a flood keeps there.
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
            self.waiting = max(0, open_calls - self.active)
            self.seconds = self.waiting * max(now - self._last_time, 1e-6) / taken
        self._last_taken, self._last_time = self.taken, now
        self.on_sample()
        self._schedule()

    def on_sample(self) -> None:
        """Called after each period's estimate (the gate's controller)."""


@dataclass
class GrpcGate(CoreQueue):
    target: float = 0.05  # seconds: --queue_delay_target_in_ms
    metrics: Metrics | None = None
    refused_share: float = 0.0
    _credit: float = field(default=0.0, repr=False)

    def on_sample(self) -> None:
        if not self.waiting:
            self.refused_share = 0.0
            return
        step = GAIN * (self.seconds - self.target) / self.target
        self.refused_share = min(MAX_REFUSED, max(0.0, self.refused_share + max(-GAIN, min(GAIN, step))))

    def refuse(self) -> bool:
        """Whether the call being taken is refused: exactly ``refused_share`` of them, spread evenly."""
        if not self.refused_share:
            return False
        self._credit += self.refused_share
        if self._credit >= 1.0:
            self._credit -= 1.0
            if self.metrics is not None:
                self.metrics.grpc_shed.inc()
            return True
        return False

    def enter(self) -> None:
        self.taken += 1
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
