"""Which requests run on the event loop instead of hopping to a worker thread.

A thread hop costs tens of microseconds, and under load the GIL handoffs between the loop
and the worker threads cost more; a Session call to a small model takes a few microseconds
(half_plus_two: 6 µs). So each (model, version, API, signature) keeps a moving average of
what its work costs (decode, checks, model, encode), and a small request whose average is
under ``max_seconds`` runs inline.

In a worker thread the cost is the thread's CPU time: its wall time is mostly waiting for
the GIL when the server is busy, which would keep cheap models in threads exactly when the
hop costs most. CPU time misses work that TensorFlow does in its own threads and time spent
sleeping, so the loop checks what it is given: an inline call that takes longer than
``BAN_SECONDS`` of wall time sends its key to worker threads until its average is small again,
and the ``BAN_STRIKES``-th such call (less what ordinary calls forgave) for good. A model can
block the loop a few times, never for long. Batching servables always use threads: their calls wait.

A call during which the kernel preempted the loop's thread (a busy node: more runnable processes
than cores, as with Ray Serve's replicas, its HAProxy and the load on two cores) is the machine's
time, not the model's: up to ``PREEMPTED_MAX_SECONDS`` it neither strikes nor moves the average.
Without this, half_plus_two was banned from the loop in every Ray replica within seconds (calls of
0.3-0.6 ms of CPU taking 4-33 ms of wall time, 1-6 involuntary switches each).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, field
from typing import Hashable

INLINE_MAX_SECONDS = 0.0005
BAN_SECONDS = 0.005
# Inline calls past BAN_SECONDS before a key goes to threads for good: one could be the process
# being descheduled (a busy node, a CPU quota) or a collection, not the model. Each ordinary
# inline call forgives a little, so only a model that keeps blocking the loop is banned.
BAN_STRIKES = 3
_FORGIVE = 1 / 256
PREEMPTED_MAX_SECONDS = 10 * BAN_SECONDS  # longer than this blocks the loop, whatever the cause
SMALL_REQUEST_BYTES = 64 * 1024  # bigger requests are decoded and encoded in a thread
_SMOOTHING = 0.2  # weight of the newest call in the average
_MAX_KEYS = 4096  # versions come and go; past this the averages are learned afresh
_BANNED = float("inf")

log = logging.getLogger("pyserving.inline")
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)  # Linux's


def preemptions() -> int:
    """How often the kernel has taken the CPU from the calling thread (0 where it doesn't say)."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nivcsw if _RUSAGE_THREAD is not None else 0


@dataclass
class InlinePolicy:
    max_seconds: float = INLINE_MAX_SECONDS  # 0: never inline
    _costs: dict[Hashable, float] = field(default_factory=dict)
    _strikes: dict[Hashable, float] = field(default_factory=dict)  # inline calls past BAN_SECONDS

    def inline(self, key: Hashable, small: bool) -> bool:
        cost = self._costs.get(key)
        return small and cost is not None and cost < self.max_seconds

    def record(self, key: Hashable, seconds: float, inline: bool, preempted: bool = False) -> None:
        """``seconds``: wall time inline, the thread's CPU time in a worker thread; ``preempted``:
        the kernel descheduled the loop's thread during an inline call. Called from worker threads
        too: one dict store, atomic under the GIL."""
        if preempted and seconds < PREEMPTED_MAX_SECONDS:
            return
        old = self._costs.get(key)
        if old is None and len(self._costs) >= _MAX_KEYS:
            self._costs.clear()
            self._strikes.clear()
        if old == _BANNED:
            return
        if inline:
            strikes = self._strikes.get(key, 0.0)
            if seconds > BAN_SECONDS:
                strikes += 1
                if strikes >= BAN_STRIKES:
                    log.info("%s blocked the event loop for %.1f ms: its calls run in worker threads from now on",
                             key, seconds * 1000)
                    self._costs[key] = _BANNED
                    return
            else:
                strikes = max(0.0, strikes - _FORGIVE)
            self._strikes[key] = strikes
        self._costs[key] = seconds if old is None else old + _SMOOTHING * (seconds - old)
