"""The file-system version source: polls base paths for numbered version folders."""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from pyserving.config.model_config import ModelConfig
from pyserving.storage.files import RemoteVersions, VersionCache, is_remote
from pyserving.storage.layout import base_path_hint, list_versions

from .manager import ModelManager

log = logging.getLogger("pyserving.source")


class FileSystemSource:
    """Tells the manager which versions each configured model aspires to."""

    def __init__(self, manager: ModelManager, poll_seconds: float, cache: VersionCache | None = None) -> None:
        self._manager = manager
        self._poll_seconds = poll_seconds
        self._models: dict[str, ModelConfig] = {}
        self._warned: set[str] = set()
        self._ignored: dict[str, dict[str, str]] = {}  # model -> numbered folders left out, logged once
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
            ignored: dict[str, str] = {}
            try:
                if remote:
                    on_disk, why_empty = await asyncio.to_thread(self._remote.list_versions, model.base_path), ""
                else:
                    on_disk, why_empty = await asyncio.to_thread(_local_listing, model.base_path, ignored)
            except OSError as e:
                # Keep what is loaded: a missing or unreadable base path (an outage) may be transient.
                self._warn_once(model.name, f"Cannot list base path {model.base_path} "
                                            f"of model {model.name}: {e.strerror or e}")
                if not remote:
                    why = await asyncio.to_thread(base_path_hint, model.base_path)
                    if self._models.get(model.name) is model:
                        self._manager.explain_empty(model.name, why)
                continue
            self._log_ignored(model, ignored)
            if not on_disk:
                self._warn_once(model.name, f"No versions of servable {model.name} found "
                                            f"under base path {model.base_path}{why_empty}")
            elif model.name in self._warned:
                self._warned.discard(model.name)
                log.info("Model %s: versions found under base path %s again", model.name, model.base_path)
            wanted = model.policy.select(list(on_disk))
            if self._models.get(model.name) is model:  # not replaced by a reload meanwhile
                self._manager.explain_empty(model.name, why_empty)
                self._manager.set_aspired(model.name, {v: on_disk[v] for v in wanted})
                self._aspired_remote[model.name] = {on_disk[v] for v in wanted} if remote else set()
        if self._cache is not None:
            live = set(self._models)
            self._cache.keep_only({p for name, paths in self._aspired_remote.items() if name in live
                                   for p in paths})

    def _log_ignored(self, model: ModelConfig, ignored: dict[str, str]) -> None:
        """The numbered folders left out, in one line when they change (a few named, with why)."""
        before = self._ignored.get(model.name, {})
        new = {folder: reason for folder, reason in sorted(ignored.items()) if before.get(folder) != reason}
        self._ignored[model.name] = ignored
        if new:
            shown = "; ".join(f"{_printable(folder)}: {reason}" for folder, reason in list(new.items())[:3])
            more = f" (and {len(new) - 3} more)" if len(new) > 3 else ""
            log.warning("Model %s: ignoring %d numbered folder%s under %s: %s%s", model.name, len(new),
                        "" if len(new) == 1 else "s", model.base_path, shown, more)

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


def _local_listing(base_path: str, ignored: dict[str, str]) -> tuple[dict[int, str], str]:
    """The versions under a local base path and, when there are none, why (in the listing's thread:
    the hint reads the folder too)."""
    versions = list_versions(base_path, ignored)
    return versions, "" if versions else base_path_hint(base_path)


def _printable(name: str) -> str:
    return name if len(name) <= 40 else name[:37] + "..."
