"""ServerCore: turns a list of model configs into sources + manager state, and reloads it.

Start-up and every reload (config-file poll or HandleReloadConfigRequest) go
through ``apply``: the source learns the new model list (dropped models unload,
new ones load, unchanged ones keep serving), the core waits for the new
versions to settle, then points the version labels.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from pyserving.config.model_config import ConfigError, ModelConfig

from ..errors import Code, ServingError
from .manager import ModelManager
from .source import FileSystemSource

log = logging.getLogger("pyserving.server_core")


class ServerCore:
    def __init__(self, manager: ModelManager, source: FileSystemSource,
                 on_models: Callable[[list[ModelConfig]], None] | None = None) -> None:
        self._manager = manager
        self._source = source
        self._on_models = on_models  # told every applied config (the request logger)
        self._lock = asyncio.Lock()
        self.models: list[ModelConfig] = []  # as the config says
        self.unloaded: set[str] = set()  # configured, but unloaded through the repository API

    async def apply(self, models: list[ModelConfig], initial: bool = False) -> None:
        """Serve exactly these models. As TF Serving's ReloadConfig, but atomic: a config refused
        (a label naming a version not AVAILABLE) changes nothing; once applied, the call returns
        when the new or changed models' versions are AVAILABLE, or raises UNKNOWN naming those
        that did not become available (the others, and every model the config kept, serve on).
        A model unloaded through the repository API is served again once a config names it."""
        async with self._lock:
            if not initial:
                self._check_labels(models)
            changed = [m.name for m in models if m not in self.models or m.name in self.unloaded]
            self.unloaded -= {m.name for m in models}
            self.models = list(models)
            await self._serve(changed)

    async def unload(self, name: str) -> None:
        """The model repository's unload: every version of a configured model goes, and the model
        stays unloaded until ``load`` or a config names it again."""
        async with self._lock:
            self._configured(name)
            self.unloaded.add(name)
            await self._serve([])

    async def load(self, name: str) -> None:
        """The model repository's load: the model by its version policy, answered once AVAILABLE
        (UNKNOWN naming it if it did not become available)."""
        async with self._lock:
            self._configured(name)
            self.unloaded.discard(name)
            await self._serve([name])
            await self._manager.ensure_resident(name, None)  # --max_loaded_models: loaded now, as asked

    def not_loaded(self, name: str) -> bool:
        return self._manager.not_loaded(name)

    def _configured(self, name: str) -> None:
        if name not in {m.name for m in self.models}:
            raise ServingError.not_found(f"Model '{name}' is not in the model config")

    async def _serve(self, changed: list[str]) -> None:
        served = [m for m in self.models if m.name not in self.unloaded]
        self._source.set_models(served)
        await self._source.poll_once()
        await self._manager.wait_until_settled([m.name for m in served])
        errors = []
        for model in served:
            try:
                self._manager.set_labels(model.name, dict(model.labels))
            except ServingError as e:
                errors.append(e)
        if self._on_models is not None:
            self._on_models(served)
        missing = self._manager.unavailable(changed)
        if missing:
            raise not_available(missing)
        if errors:
            raise errors[0]

    def _check_labels(self, models: list[ModelConfig]) -> None:
        """Before anything changes: labels of models served now must name AVAILABLE versions."""
        served = {m.name for m in self.models}
        for model in models:
            if model.labels and model.name in served:
                self._manager.check_labels(model.name, dict(model.labels))

    async def watch_config_file(self, read: Callable[[], list[ModelConfig]], seconds: float) -> None:
        """Re-read the config file every ``seconds``; a bad file is logged and ignored."""
        last = self.models
        failing = ""  # the error last logged for an unreadable file
        while True:
            await asyncio.sleep(seconds)
            log.debug("Reading the model config file again")
            try:
                models = await asyncio.to_thread(read)
            except ConfigError as e:
                if str(e) != failing:  # once per bad file, not every poll; again if the error changes
                    log.error("Ignoring the new model config (keeping the running one): %s", e)
                    failing = str(e)
                continue
            if failing:
                log.info("The model config file reads again")
                failing = ""
            if models == last:
                continue
            last = models
            log.info("Model config changed: now serving %s", ", ".join(m.name for m in models) or "nothing")
            try:
                await self.apply(models)
            except ServingError as e:
                log.error("Model config applied with an error: %s", e.message)


def not_available(missing: list[tuple[str, int, str]]) -> ServingError:
    """TF Serving's answer when models did not become available, with each one's reason."""
    models = sorted({name for name, _, _ in missing})
    listed = ", ".join(f"{{name: {name} version: {number}}}: {why}" for name, number, why in missing)
    return ServingError(Code.UNKNOWN, f"{len(models)} model(s) did not become available: {{{listed}}}")
