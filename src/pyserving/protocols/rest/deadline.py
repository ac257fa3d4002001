"""REST's timers, made cheap: they run on every request.

- ``Deadline``: --rest_api_timeout_in_ms for one request, asyncio.timeout's job at a third of its
  cost (asyncio.timeout, 3.11, costs 9 us a request on uvloop: its state machine, task lookups and
  rescheduling are Python). One timer and a flag.
- ``ConnectionTimer``: a native-core connection's header, body, idle and linger deadlines on one
  libuv timer, moved only when a deadline comes sooner (else three timers a request, each made
  and cancelled).
"""

from __future__ import annotations

import asyncio
from typing import Callable


class Deadline:
    """``with Deadline(seconds):`` cancels the running task when ``seconds`` pass (None: never) and
    raises TimeoutError in its place, as asyncio.timeout does."""

    __slots__ = ("_seconds", "_task", "_timer", "_expired")

    def __init__(self, seconds: float | None) -> None:
        self._seconds, self._task, self._timer, self._expired = seconds, None, None, False

    def __enter__(self) -> "Deadline":
        if self._seconds is not None:
            self._task = asyncio.current_task()
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._expired and kind is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()  # the cancellation was ours: the task goes on to answer 504
            raise TimeoutError from None

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()


class ConnectionTimer:
    """One deadline at a time: ``arm`` replaces the one before, ``disarm`` drops it, ``kind`` names it."""

    __slots__ = ("_handle", "_due", "_expired", "kind")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._due: float | None = None  # loop.time() when ``_expired`` is called (None: never)
        self._expired: Callable[[], None] | None = None
        self.kind = ""  # "header", "body", "idle" or "linger"

    def arm(self, seconds: float, expired: Callable[[], None], kind: str) -> None:
        """``expired()`` in ``seconds`` (0: never)."""
        if seconds <= 0:
            self.disarm()
            return
        loop = asyncio.get_running_loop()
        self._due, self._expired, self.kind = loop.time() + seconds, expired, kind
        if self._handle is None or self._handle.when() > self._due:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = loop.call_at(self._due, self._tick)

    def disarm(self) -> None:
        self._due, self._expired, self.kind = None, None, ""  # a handle still set finds nothing due

    def cancel(self) -> None:
        """For good (the connection is gone)."""
        self.disarm()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        if self._due is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() + 0.001 < self._due:  # moved later since (libuv's clock is in ms)
            self._handle = loop.call_at(self._due, self._tick)
            return
        expired = self._expired
        self.disarm()
        if expired is not None:
            expired()
