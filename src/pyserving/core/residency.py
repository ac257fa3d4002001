"""Which models may have versions loaded when there are more models than room: --max_loaded_models
and --max_loaded_model_memory_mb.

With a budget, configured models are not loaded at start (but those named to preload): a model
becomes resident on its first request, and when that would pass a budget the least recently used
resident models that no request is using (and that are not loading) are evicted first. All of a
model's versions count as one model. Only the event loop thread calls this, as the manager.

A model's memory is estimated before it loads, from the bytes of its version folders (``measure``,
run in a load thread; a version's variables are read into memory whole) plus a fixed overhead per
version for its graph, session and Python objects: docs/model_budget.md says how close that comes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ServingError

# Resident memory a loaded version takes beyond its files (TF Serving's half_plus_two, 24 KB of
# files: 0.77 MiB each, measured over 50 copies).
VERSION_OVERHEAD_BYTES = 1 << 20


@dataclass
class Residency:
    max_models: int = 0  # 0 = no count budget
    max_bytes: int = 0  # 0 = no memory budget
    preload: frozenset[str] = frozenset()  # always resident, never evicted
    measure: Callable[[list[str]], int] | None = None  # version folders -> their bytes (blocking)
    _recent: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first
    _sizes: dict[str, tuple[tuple[str, ...], int]] = field(default_factory=dict)  # name -> (folders, bytes)

    def describe(self) -> str:
        """The budget, as the flags that set it."""
        parts = [f"--max_loaded_models={self.max_models}" if self.max_models else "",
                 f"--max_loaded_model_memory_mb={self.max_bytes >> 20}" if self.max_bytes else ""]
        return " and ".join(p for p in parts if p) or "no budget"

    def is_resident(self, name: str) -> bool:
        return name in self.preload or name in self._recent

    def touch(self, name: str) -> None:
        if name in self._recent:
            self._recent.move_to_end(name)

    def unsized(self, name: str, folders: list[str]) -> bool:
        """Whether this model's memory must be measured (again: its versions changed)."""
        known = self._sizes.get(name)
        return self.measure is not None and (known is None or known[0] != tuple(sorted(folders)))

    def sized(self, name: str, folders: list[str], file_bytes: int) -> None:
        self._sizes[name] = (tuple(sorted(folders)), file_bytes + VERSION_OVERHEAD_BYTES * len(folders))

    def bytes_of(self, name: str) -> int:
        """The model's estimated memory (0 while unmeasured)."""
        known = self._sizes.get(name)
        return known[1] if known is not None else 0

    def admit(self, name: str, busy: Callable[[str], bool]) -> list[str]:
        """Make ``name`` resident; the models to evict for it, least recently used first
        (UNAVAILABLE when every resident model is busy and there is no room)."""
        need = self.bytes_of(name)
        pinned = sum(map(self.bytes_of, self.preload))
        if self.max_bytes and need + pinned > self.max_bytes:
            raise ServingError.failed_precondition(
                f"Model {name} needs about {need >> 20} MiB, more than --max_loaded_model_memory_mb "
                f"({self.max_bytes >> 20} MiB) leaves beside the preloaded models")
        count = len(self.preload) + len(self._recent)  # loaded now, and what they take with it
        used = pinned + sum(map(self.bytes_of, self._recent)) + need
        evict: list[str] = []
        for other in self._recent:  # least recently used first
            if self._fits(count, used):
                break
            if not busy(other):
                evict.append(other)
                count, used = count - 1, used - self.bytes_of(other)
        if not self._fits(count, used):
            raise ServingError.unavailable(
                f"Model {name} is not loaded and the loaded models using the budget "
                f"({self._budget()}) all have requests in flight; retry")
        for other in evict:
            del self._recent[other]
        self._recent[name] = None
        return evict

    def _fits(self, count: int, used: int) -> bool:
        """Room for one more model beside ``count`` loaded, with ``used`` bytes counting it."""
        return (not self.max_models or count < self.max_models) and (not self.max_bytes or used <= self.max_bytes)

    def _budget(self) -> str:
        parts = [f"--max_loaded_models={self.max_models}"] if self.max_models else []
        if self.max_bytes:
            parts.append(f"--max_loaded_model_memory_mb={self.max_bytes >> 20}")
        return ", ".join(parts)

    def forget(self, name: str) -> None:
        self._recent.pop(name, None)

    @property
    def resident(self) -> list[str]:
        return [*sorted(self.preload), *self._recent]
