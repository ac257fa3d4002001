"""The file-system version source: polls base paths for numbered version folders."""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from ..config import ModelConfig
from .layout import base_path_hint, list_versions
from .manager import ModelManager
from .storage import RemoteVersions, VersionCache, is_remote

log = logging.getLogger("pyserving.source")


class FileSystemSource:
    """Tells the manager which versions each configured model aspires to."""

    def __init__(self, manager: ModelManager, poll_seconds: float, cache: VersionCache | None = None) -> None:
        self._manager = manager
        self._poll_seconds = poll_seconds
        self._models: dict[str, ModelConfig] = {}
        self._warned: set[str] = set()
        self._remote = RemoteVersions()
        self._cache = cache  # local copies of remote versions: the aspired ones are kept
        self._aspired_remote: dict[str, set[str]] = {}

    def set_models(self, models: Iterable[ModelConfig]) -> None:
        new = {m.name: m for m in models}
        for name in set(self._models) - set(new):
            self._manager.remove_model(name)
        for m in new.values():
            self._manager.add_model(m.name, m.base_path)  # labels: ServerCore sets them once loaded
        self._models = new

    async def poll_once(self) -> None:
        for model in list(self._models.values()):
            remote = is_remote(model.base_path)
            try:
                lister = self._remote.list_versions if remote else list_versions
                on_disk = await asyncio.to_thread(lister, model.base_path)
            except OSError as e:
                # Keep what is loaded: a missing or unreadable base path (an outage) may be transient.
                self._warn_once(model.name, f"Cannot list base path {model.base_path} "
                                            f"of model {model.name}: {e.strerror or e}")
                continue
            if not on_disk:
                hint = "" if remote else base_path_hint(model.base_path)
                self._warn_once(model.name, f"No versions of servable {model.name} found "
                                            f"under base path {model.base_path}{hint}")
            elif model.name in self._warned:
                self._warned.discard(model.name)
                log.info("Model %s: versions found under base path %s again", model.name, model.base_path)
            wanted = model.policy.select(list(on_disk))
            if self._models.get(model.name) is model:  # not replaced by a reload meanwhile
                self._manager.set_aspired(model.name, {v: on_disk[v] for v in wanted})
                self._aspired_remote[model.name] = {on_disk[v] for v in wanted} if remote else set()
        if self._cache is not None:
            live = set(self._models)
            self._cache.keep_only({p for name, paths in self._aspired_remote.items() if name in live
                                   for p in paths})

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning(message)

    async def run(self) -> None:
        """Poll forever (or never again, when the poll interval is 0)."""
        if self._poll_seconds <= 0:
            return
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self.poll_once()
