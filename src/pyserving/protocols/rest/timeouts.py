"""REST read timeouts: slow request headers, slow bodies, idle keep-alive connections.

aiohttp closes idle keep-alive connections itself (``keepalive_timeout``, set from
--rest_api_idle_timeout_in_ms by the server). It has no server-side read timeouts, so this
module adds the other two:

* header timeout: every connection is wrapped in a ``HeaderDeadline`` protocol. From the moment a
  connection opens, and again from the first byte of each later request, the request line and
  headers must be complete within the timeout; otherwise the connection is closed (after a 408
  with TF Serving's ``{"error": ...}`` body when part of a request had arrived). A client that
  trickles a header byte at a time is closed as surely as one that sends nothing.
* body timeout: ``body_deadline`` reads the body of each request (aiohttp keeps it for the
  handler's own ``request.read()``) and answers 408 if it has not all arrived within the timeout.
  504 stays for a model call past --rest_api_timeout_in_ms.

``request_tracker`` tells a connection's ``HeaderDeadline`` when a request has begun (its headers
are complete) and when it is done, so the header clock runs only while a request is arriving.

The same wrapper asks the REST gate (gate.py) about each request's first bytes, so an
overloaded server refuses a flood's excess before aiohttp spends anything on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiohttp import http_exceptions, web

from pyserving.serving.admission import Token

from .bodies import body_too_large
from .gate import RestGate
from .wire import BODY_TIMEOUT_MESSAGE, HEADER_TIMEOUT_MESSAGE, DateHeader, error_bytes

log = logging.getLogger("pyserving.rest")


class HeaderDeadline(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, plus a deadline on request headers."""

    def __init__(self, inner: asyncio.Protocol, seconds: float, gate: RestGate | None = None) -> None:
        self._inner = inner
        self._seconds = seconds
        self._gate = gate
        self._token: Token | None = None  # the gate's count of this connection's request
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a request's headers are complete and it is being handled
        self._partial = False  # bytes of a request whose headers are not complete yet
        self._closing = False

    # -- asyncio.Protocol, passed on to aiohttp ------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy and not self._closing:
            if not self._partial and self._gate is not None:  # the first bytes of a request
                refusal = self._gate.refuse(data)
                if refusal is not None:
                    self._refuse(*refusal)
                    return
                if self._token is None:
                    self._token = self._gate.enter()
            self._partial = True
            if self._timer is None:  # the first bytes of the next request on this connection
                self._arm()
        self._inner.data_received(data)

    def _refuse(self, answer: bytes, keep_alive: bool) -> None:
        """The gate refused the whole request in hand: answer it here; aiohttp never sees it."""
        assert self._transport is not None
        self._transport.write(answer)
        self._disarm()
        if keep_alive:
            self._arm()  # aiohttp saw nothing: the next request must start in time, or we close
        else:
            self._closing = True
            self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._leave_gate()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- from request_tracker ---------------------------------------------------------

    def request_started(self) -> None:
        self._busy, self._partial = True, False
        self._disarm()

    def request_finished(self, keep_alive: bool) -> None:
        self._busy = False
        self._closing = self._closing or not keep_alive
        self._leave_gate()

    def _leave_gate(self) -> None:
        if self._token is not None and self._gate is not None:
            self._gate.leave(self._token)
            self._token = None

    # -- the deadline -------------------------------------------------------------------

    def _arm(self) -> None:
        if self._seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if self._busy or self._closing or transport is None or transport.is_closing():
            return
        self._closing = True
        if self._partial and transport.get_write_buffer_size() == 0:
            log.info("Closing a REST connection from %s: request headers not received within %.1f s",
                     transport.get_extra_info("peername"), self._seconds)
            transport.write(error_bytes(408, HEADER_TIMEOUT_MESSAGE, DateHeader()()))
        transport.close()  # aiohttp's connection_lost cleans up its side


def connection_factory(protocol_factory: Callable[[], asyncio.Protocol], header_seconds: float,
                       gate: RestGate | None = None) -> Callable[[], asyncio.Protocol]:
    """For loop.create_server: aiohttp's protocol (``runner.server``) wrapped in a HeaderDeadline."""
    return lambda: HeaderDeadline(protocol_factory(), header_seconds, gate)


def _connection(request: web.Request) -> HeaderDeadline | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, HeaderDeadline) else None


@web.middleware
async def request_tracker(request: web.Request, handler) -> web.StreamResponse:
    """Outermost middleware: stops the header clock while a request is handled."""
    connection = _connection(request)
    if connection is not None:
        connection.request_started()
    keep_alive = True
    try:
        response = await handler(request)
        keep_alive = response.keep_alive is not False  # False: force_close(), e.g. a 408
        return response
    finally:
        if connection is not None:
            connection.request_finished(keep_alive)


def body_deadline(seconds: float, max_body_bytes: int):
    """Middleware: the request body must arrive within ``seconds`` (0: no limit), else 408."""

    @web.middleware
    async def read_body_in_time(request: web.Request, handler) -> web.StreamResponse:
        # Most bodies arrived with their headers: only a body still on its way is waited for.
        if seconds > 0 and request.body_exists and not request.content.is_eof():
            try:
                # Kept by aiohttp: the handler's own request.read() returns these bytes.
                await asyncio.wait_for(request.read(), seconds)
            except asyncio.TimeoutError:
                log.info("Answering 408 to %s %s: the body did not arrive within %.1f s",
                         request.method, request.path, seconds)
                response = web.json_response({"error": BODY_TIMEOUT_MESSAGE}, status=408)
                response.force_close()  # the rest of the body may still be on its way
                return response
            except web.HTTPRequestEntityTooLarge:
                return body_too_large(max_body_bytes)
            except (ConnectionError, http_exceptions.HttpProcessingError):
                # A client gone mid-body, or a malformed body: the handler's own read raises it
                # again and answers it (rest_service.dispatch), not aiohttp's 500 and traceback.
                pass
        return await handler(request)

    return read_body_in_time


__all__ = ["HeaderDeadline", "body_deadline", "connection_factory", "request_tracker"]
