"""The Open Inference Protocol's model repository over the server core: an index of the
configured models and their versions, and loads and unloads applied in every worker."""

from __future__ import annotations

import json
from typing import Awaitable, Callable

from pyserving.core.server_core import ServerCore
from pyserving.core.states import VersionState, VersionStatus
from pyserving.errors import ServingError

from .peers import Peers

# Triton's names for a version's state.
_STATES = {VersionState.START: "LOADING", VersionState.LOADING: "LOADING", VersionState.AVAILABLE: "READY",
           VersionState.UNLOADING: "UNLOADING", VersionState.END: "UNAVAILABLE"}
UNLOADED_REASON = "unloaded through the model repository API"
NOT_LOADED_REASON = "not loaded: loads on its first request or a load (a budget of loaded models)"


class ModelRepository:
    def __init__(self, core: ServerCore, status: Callable[[str], Awaitable[list[VersionStatus]]],
                 peers: Peers | None = None) -> None:
        self._core = core
        self._status = status  # a model's versions, merged over the workers
        self._peers = peers

    def unloaded(self) -> set[str]:
        return set(self._core.unloaded)

    async def index(self) -> list[dict[str, str]]:
        entries = []
        for name in sorted({m.name for m in self._core.models}):
            if name in self._core.unloaded:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": UNLOADED_REASON})
                continue
            if self._core.not_loaded(name):
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": NOT_LOADED_REASON})
                continue
            statuses = await self._status(name)
            if not statuses:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "no versions found"})
            for status in sorted(statuses, key=lambda s: s.version):
                entries.append({"name": name, "version": str(status.version), "state": _STATES[status.state],
                                "reason": status.error.message if status.error else ""})
        return entries

    async def load(self, name: str) -> None:
        await self._change("load", name)

    async def unload(self, name: str) -> None:
        await self._change("unload", name)

    async def _change(self, action: str, name: str) -> None:
        change = json.dumps({"action": action, "model": name}).encode()
        if self._peers is None:
            await self.apply(change)
        else:
            await self._peers.repository(change, self.apply, self.unloaded)

    async def apply(self, change: bytes) -> None:
        """One worker's part of a load or unload (a sibling's, over the peer socket, too)."""
        try:
            request = json.loads(change)
            action, name = request["action"], request["model"]
        except (ValueError, KeyError, TypeError):
            raise ServingError.invalid_argument("Malformed model repository change") from None
        await (self._core.load(name) if action == "load" else self._core.unload(name))

    async def unload_all(self, names: list[str]) -> None:
        """A restarted worker's catch-up: the models its siblings have unloaded."""
        configured = {m.name for m in self._core.models}
        for name in names:
            if name in configured:
                await self._core.unload(name)
