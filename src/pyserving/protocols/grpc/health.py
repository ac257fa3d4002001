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

from pyserving.core.manager import ModelManager

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

    async def refresh(self) -> None:
        # Models come and go with config reloads; ones seen before stay, as NOT_SERVING.
        ready = self._manager.readiness()
        for name in sorted(set(ready) | (set(self._last) - {""})):
            await self._set(name, SERVING if ready.get(name) else NOT_SERVING)

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
