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
``BAN_SECONDS`` of wall time sends its key to worker threads for good. A model can block the
loop once, never again. Batching servables always use threads: their calls wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

INLINE_MAX_SECONDS = 0.0005
BAN_SECONDS = 0.005
SMALL_REQUEST_BYTES = 64 * 1024  # bigger requests are decoded and encoded in a thread
_SMOOTHING = 0.2  # weight of the newest call in the average
_MAX_KEYS = 4096  # versions come and go; past this the averages are learned afresh
_BANNED = float("inf")


@dataclass
class InlinePolicy:
    max_seconds: float = INLINE_MAX_SECONDS  # 0: never inline
    _costs: dict[Hashable, float] = field(default_factory=dict)

    def inline(self, key: Hashable, small: bool) -> bool:
        cost = self._costs.get(key)
        return small and cost is not None and cost < self.max_seconds

    def record(self, key: Hashable, seconds: float, inline: bool) -> None:
        """``seconds``: wall time inline, the thread's CPU time in a worker thread. Called from
        worker threads too: one dict store, atomic under the GIL."""
        old = self._costs.get(key)
        if old is None and len(self._costs) >= _MAX_KEYS:
            self._costs.clear()
        if old == _BANNED or (inline and seconds > BAN_SECONDS):
            self._costs[key] = _BANNED
        else:
            self._costs[key] = seconds if old is None else old + _SMOOTHING * (seconds - old)
