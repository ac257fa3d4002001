"""Bounded background traffic that records every answer and failure."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence


@dataclass
class TrafficReport:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)


class Traffic:
    """Calls ``send`` in a loop on a few threads; what it returns (the serving version, or whatever
    tells answers apart) is counted in ``report.versions``. ``send`` may be a list: one sender a
    thread (e.g. gRPC and REST clients side by side), and ``threads`` is then its length.

    Bounded: stops by itself after ``max_seconds`` or ``max_requests``.
    """

    def __init__(self, send: Callable[[], Hashable] | Sequence[Callable[[], Hashable]], threads: int = 2,
                 max_seconds: float = 120, max_requests: int = 200_000) -> None:
        senders = list(send) if isinstance(send, Sequence) else [send] * threads
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.report = TrafficReport()
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        self.threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in senders]

    def __enter__(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, send: Callable[[], Hashable]) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                version = send()
                with self._lock:
                    self.report.ok += 1
                    self.report.versions[version] += 1
            except Exception as e:  # every failure is a finding; keep the message
                with self._lock:
                    self.report.failures.append(repr(e)[:300])
            with self._lock:
                if self.report.ok + len(self.report.failures) >= self._max_requests:
                    return

    def latest_version(self) -> int | None:
        with self._lock:
            return max(self.report.versions) if self.report.versions else None

    def seen(self, version: Hashable) -> bool:
        with self._lock:
            return self.report.versions[version] > 0
