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

from ..config import ConfigError, ModelConfig
from ..errors import ServingError
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
        self.models: list[ModelConfig] = []

    async def apply(self, models: list[ModelConfig]) -> None:
        """Serve exactly these models; raises ServingError if a label can't be set."""
        async with self._lock:
            self._source.set_models(models)
            await self._source.poll_once()
            await self._manager.wait_until_settled([m.name for m in models])
            errors = []
            for model in models:
                try:
                    self._manager.set_labels(model.name, dict(model.labels))
                except ServingError as e:
                    errors.append(e)
            self.models = list(models)
            if self._on_models is not None:
                self._on_models(self.models)
            if errors:
                raise errors[0]

    async def watch_config_file(self, read: Callable[[], list[ModelConfig]], seconds: float) -> None:
        """Re-read the config file every ``seconds``; a bad file is logged and ignored."""
        last = self.models
        while True:
            await asyncio.sleep(seconds)
            try:
                models = await asyncio.to_thread(read)
            except ConfigError as e:
                log.error("Ignoring the new model config (keeping the running one): %s", e)
                continue
            if models == last:
                continue
            last = models
            log.info("Model config changed: now serving %s", ", ".join(m.name for m in models) or "nothing")
            try:
                await self.apply(models)
            except ServingError as e:
                log.error("Model config applied with an error: %s", e.message)
