"""The REST port: RestService served on the native HTTP core (http_core.py, the default) or on
aiohttp's server (--rest_api_http_core=aiohttp), with the same limits, timeouts, TLS and gate."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiohttp import web

from . import timeouts as http_timeouts
from .gate import RestGate
from .http_core import HttpCore, Limits
from .service import CORS_HEADERS, RestService


@dataclass(frozen=True)
class RestSettings:
    host: str
    port: int
    core: str  # "native" or "aiohttp"
    max_body_bytes: int
    header_seconds: float  # 0: no limit, for the three
    body_seconds: float
    idle_seconds: float
    cors: bool = False
    reuse_port: bool = False  # --num_workers: the workers share the port


class RestListener:
    """A started REST port; ``stop`` stops accepting and drains what is in hand."""

    def __init__(self, server: asyncio.AbstractServer, core: HttpCore | None, runner: web.AppRunner | None) -> None:
        self._server, self._core, self._runner = server, core, runner

    async def stop(self, grace: float) -> None:
        self._server.close()  # stop accepting, then drain
        if self._core is not None:
            await self._core.drain(grace)
        if self._runner is not None:
            await self._runner.cleanup()


async def start(service: RestService, settings: RestSettings, ssl_context: ssl.SSLContext | None,
                gate: RestGate | None) -> RestListener:
    s = settings
    core, runner = None, None
    if s.core == "native":
        limits = Limits(s.max_body_bytes, s.header_seconds, s.body_seconds, s.idle_seconds)
        core = HttpCore(service.answer, limits, gate, CORS_HEADERS.items() if s.cors else ())
        factory = core.protocol
    else:
        runner = await _aiohttp_runner(service, s)
        assert runner.server is not None  # made by setup()
        # aiohttp's protocol factory on our own listener, each connection wrapped in a header deadline.
        factory = http_timeouts.connection_factory(runner.server, s.header_seconds, gate)
    server = await asyncio.get_running_loop().create_server(
        factory, s.host, s.port, ssl=ssl_context, reuse_port=s.reuse_port,
        ssl_handshake_timeout=(s.header_seconds or None) if ssl_context else None)
    return RestListener(server, core, runner)


async def _aiohttp_runner(service: RestService, s: RestSettings) -> web.AppRunner:
    app = service.app()
    # Read timeouts (timeouts.py): the tracker outermost, the body deadline inside CORS.
    app.middlewares.insert(0, http_timeouts.request_tracker)
    app.middlewares.append(http_timeouts.body_deadline(s.body_seconds, s.max_body_bytes))
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False,
                           keepalive_timeout=s.idle_seconds)
    await runner.setup()
    return runner


__all__ = ["RestListener", "RestSettings", "start"]
