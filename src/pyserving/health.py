"""The standard grpc.health.v1.Health service (--enable_grpc_healthcheck_service).

Service "" is SERVING once the server has started and NOT_SERVING from the moment
shutdown begins. Each configured model (reloads included) is a service of its own name: SERVING while
it has at least one AVAILABLE version, NOT_SERVING otherwise. Model statuses are
refreshed from the manager periodically, so a model that becomes available (or
loses its last version) is reported within a refresh interval.
"""

from __future__ import annotations

import asyncio
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .core.manager import ModelManager
from .core.states import VersionState
from .errors import ServingError

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

REFRESH_SECONDS = 1.0


class HealthReporter:
    def __init__(self, manager: ModelManager, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._manager = manager
        self._refresh_seconds = refresh_seconds
        self._last: dict[str, int] = {}
        self.servicer = health_aio.HealthServicer()

    def register(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def _set(self, service: str, status: int) -> None:
        if self._last.get(service) != status:
            self._last[service] = status
            await self.servicer.set(service, status)

    def _model_status(self, name: str) -> int:
        if not self._manager.has_model(name):  # dropped by a config reload
            return NOT_SERVING
        try:
            versions = self._manager.status(name)
        except ServingError:
            return NOT_SERVING
        return SERVING if any(v.state == VersionState.AVAILABLE for v in versions) else NOT_SERVING

    async def refresh(self) -> None:
        # Models come and go with config reloads; ones seen before stay, as NOT_SERVING.
        names = set(self._manager.model_names()) | (set(self._last) - {""})
        for name in sorted(names):
            await self._set(name, self._model_status(name))

    async def start(self) -> None:
        """The server is up: every model's status, and "" SERVING."""
        await self.refresh()
        await self._set("", SERVING)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            await self.refresh()

    async def shutdown(self) -> None:
        """Everything NOT_SERVING, for good (later updates are ignored)."""
        await self.servicer.enter_graceful_shutdown()
