"""Which models may have versions loaded when there are more models than room: --max_loaded_models.

With a budget, configured models are not loaded at start (but those named to preload): a model
becomes resident on its first request, and when that would pass the budget the least recently
used resident models that no request is using (and that are not loading) are evicted first. All
of a model's versions count as one model. Only the event loop thread calls this, as the manager.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ServingError


@dataclass
class Residency:
    max_models: int  # > 0
    preload: frozenset[str] = frozenset()  # always resident, never evicted
    _recent: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first

    def is_resident(self, name: str) -> bool:
        return name in self.preload or name in self._recent

    def touch(self, name: str) -> None:
        if name in self._recent:
            self._recent.move_to_end(name)

    def admit(self, name: str, busy: Callable[[str], bool]) -> list[str]:
        """Make ``name`` resident; the models to evict for it, least recently used first
        (UNAVAILABLE when every resident model is busy and there is no room)."""
        evict = []
        room = self.max_models - len(self.preload)
        for other in list(self._recent):
            if len(self._recent) - len(evict) < room:
                break
            if not busy(other):
                evict.append(other)
        if len(self._recent) - len(evict) >= room:
            raise ServingError.unavailable(
                f"Model {name} is not loaded and all {self.max_models} loaded models are in use "
                "(--max_loaded_models); retry")
        for other in evict:
            del self._recent[other]
        self._recent[name] = None
        return evict

    def forget(self, name: str) -> None:
        self._recent.pop(name, None)

    @property
    def resident(self) -> list[str]:
        return [*sorted(self.preload), *self._recent]
