"""REST's native HTTP/1.1 core: llhttp's parser (httptools) on uvloop's libuv I/O, in place of
aiohttp's server. aiohttp's request machinery (its StreamReader, Request and Response objects,
middleware chain and writer) cost about half of a small model's REST request; here a connection
parses in C, buffers the body within the limits and hands one ``BufferedRequest`` to the service.

What aiohttp's server and protocols/rest/timeouts.py did, each connection does itself:
- request line and headers within --rest_api_header_timeout_in_ms from the connection's opening
  or the request's first byte (408 if part of one had come), and no larger than MAX_HEAD_BYTES (431);
- a body within --rest_api_body_timeout_in_ms after its headers (408), and no larger than
  --rest_api_max_request_bytes (413: at once for a declared length, else when the chunks pass
  it; the rest of the body is read and dropped, so the client sees the answer, not a reset);
- ``Expect: 100-continue`` answered 100 only when the declared length is within the limit;
- keep-alive closed after --rest_api_idle_timeout_in_ms idle; pipelined requests answered in order,
  reading paused while PIPELINE_DEPTH wait; a malformed request answered 400 (its input then dropped
  for the linger, after our EOF);
- the REST gate (gate.py) shown a request's first bytes, so a flood's excess is refused unparsed;
- on shutdown (``drain``), idle connections closed, busy ones closed after their answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import httptools
from multidict import CIMultiDict

from pyserving.serving.admission import Token

from .bodies import BodyTooLarge
from .deadline import ConnectionTimer
from .gate import RestGate
from .request import BufferedRequest, HttpVersion
from .wire import (BODY_TIMEOUT_MESSAGE, HEADER_TIMEOUT_MESSAGE, BadHead, DateHeader, Headers, error_bytes, head,
                   origin_target)

log = logging.getLogger("pyserving.rest")

Answer = Callable[[BufferedRequest], Awaitable[tuple[int, Headers, bytes]]]

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together (431 above it)
PIPELINE_DEPTH = 16  # requests a connection may have waiting before it stops reading
LINGER_SECONDS = 5.0  # after a 413 or 408, how long the rest of a body is read and dropped


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    header_seconds: float  # 0: no limit, for each of the three
    body_seconds: float
    idle_seconds: float


class HttpCore:
    """The connections of one REST listener: ``protocol`` for loop.create_server, ``drain`` to stop."""

    def __init__(self, answer: Answer, limits: Limits, gate: RestGate | None = None,
                 extra_headers: Headers = ()) -> None:
        self.answer, self.limits, self.gate = answer, limits, gate
        self.extra_headers = tuple(extra_headers)  # on the core's own answers too (CORS)
        self.connections: set[Connection] = set()
        self.date = DateHeader()
        self.closing = False
        self._idle = asyncio.Event()

    def protocol(self) -> Connection:
        return Connection(self)

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if self.closing and not self.connections:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Idle connections closed now, busy ones after their answer; any left after ``grace``, closed."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.connections:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except asyncio.TimeoutError:
                pass
        for connection in list(self.connections):
            connection.abort()


class Connection(asyncio.Protocol):
    """One client connection: parse, queue complete requests, answer them one at a time in order."""

    def __init__(self, core: HttpCore) -> None:
        self._core = core
        self._limits = core.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: list[BufferedRequest] = []
        self._worker: asyncio.Task | None = None
        self._timer = ConnectionTimer()
        self._token: Token | None = None  # the gate's count of this connection's request in hand
        self._writable: asyncio.Future | None = None  # set while the transport's buffer is full
        self._paused = False
        self._closing = False  # answer what is in hand, then close
        self._dropping = False  # after an early answer (413, 408): the rest of the body is dropped
        self._discarding = False  # after a 400 or 431: the rest is dropped unparsed until the linger ends
        self._early: bytes | None = None  # an early answer waiting for the answers before it
        # the request arriving: its target, headers, body and their sizes
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_seen = 0  # bytes received while this head was incomplete (from the second chunk on)
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_message = False
        self._headers_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._core.connections.add(self)
        self._arm(self._limits.header_seconds, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if self._dropping:  # read to the refused body's end (on_message_complete closes), or until the linger
            try:
                if not self._discarding:
                    self._parser.feed_data(data)
            except httptools.HttpParserError:
                self._transport.close()
            return
        if not self._in_message and not self._queue and self._worker is None:
            if self._core.gate is not None and self._gate_refused(data):
                return
            if self._timer.kind != "header":
                self._arm(self._limits.header_seconds, self._headers_late)
        if self._in_message and not self._headers_done:
            # llhttp hands a header over only once it ends: a value that never ends grows in
            # httptools' buffer unseen, so the bytes of a head still arriving are counted here.
            self._head_seen += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._closing = True  # the request before the upgrade is answered; no protocol switch
        except httptools.HttpParserError as e:
            if not self._dropping:  # (else the error is the refused body's, already answered)
                self._malformed(str(e.args[0] if e.args else e)[:200])
            return
        if not self._headers_done and self._in_message and max(self._head_bytes, self._head_seen) > MAX_HEAD_BYTES:
            self._head_too_large()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._in_message and self._headers_done and not self._dropping:
            # The client went away mid-body: nothing of ours failed, and no one reads an answer.
            log.debug("%s %s: the client closed the connection before its body arrived",
                      self._parser.get_method().decode("latin-1"), self._url[:200].decode("utf-8", "replace"))
        self._timer.cancel()
        self._leave_gate()
        self._transport = None
        self._queue.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._core.forget(self)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def on_message_begin(self) -> None:
        self._in_message, self._headers_done = True, False
        self._url, self._headers, self._head_bytes, self._head_seen = b"", [], 0, 0
        self._body, self._body_bytes = [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._disarm()
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large()
            return
        try:
            self._url = origin_target(self._url, self._headers)
        except BadHead as e:
            self._malformed(str(e))
            return
        length, expect = None, None
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value) if value.strip().isdigit() else None
            elif lowered == b"expect":
                expect = value.strip().lower()
        limit = self._limits.max_body_bytes
        if length is not None and length > limit:
            self._answer_early(413, BodyTooLarge(limit).message)
            return
        if expect is not None and self._parser.get_http_version() == "1.1":
            if expect != b"100-continue":
                self._answer_early(417, "Expectation Failed: only 100-continue is supported")
                return
            if self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._limits.body_seconds > 0 and (length or self._is_chunked()):
            self._arm(self._limits.body_seconds, self._body_late, "body")

    def on_body(self, body: bytes) -> None:
        if self._dropping:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._body = []
            self._answer_early(413, BodyTooLarge(self._limits.max_body_bytes).message)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._dropping:  # an early answer went out; the body it refused has now all arrived
            if self._transport is not None:
                self._transport.close()
            return
        self._disarm()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        headers = CIMultiDict((n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self._headers)
        major, _, minor = self._parser.get_http_version().partition(".")
        request = BufferedRequest(self._parser.get_method().decode("latin-1"),
                                  self._url.decode("utf-8", "surrogateescape"), headers, body,
                                  self._limits.max_body_bytes, self._transport,
                                  HttpVersion(int(major or 1), int(minor or 1)))
        request.keep_alive = self._parser.should_keep_alive()
        self._queue.append(request)
        if len(self._queue) >= PIPELINE_DEPTH and self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._serve())

    def _is_chunked(self) -> bool:
        return any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self._headers)

    async def _serve(self) -> None:
        try:
            while self._queue and self._transport is not None:
                request = self._queue.pop(0)
                if self._paused and len(self._queue) < PIPELINE_DEPTH // 2:
                    self._paused = False
                    self._transport.resume_reading()
                await self._respond(request)
                if self._writable is not None:
                    await self._writable
        finally:
            self._worker = None
            self._leave_gate()
        transport = self._transport
        if transport is None:
            return
        if self._early is not None:
            self._send_early(self._early)
        elif self._in_message:  # the next request's first bytes came during this one's answer
            self._arm(self._limits.header_seconds, self._headers_late)
        elif self._closing or self._core.closing:
            transport.close()
        elif self._limits.idle_seconds > 0:
            self._arm(self._limits.idle_seconds, self._idle_too_long, "idle")

    async def _respond(self, request: BufferedRequest) -> None:
        try:
            status, headers, body = await self._core.answer(request)
        except Exception:  # a bug of ours: still answer in the API's JSON shape
            log.exception("Unexpected error serving %s %s", request.method, request.path)
            status, headers, body = 500, (("Content-Type", "application/json; charset=utf-8"),), \
                b'{"error": "Internal error"}'
        if self._transport is None:
            return
        keep_alive = (request.keep_alive and not self._closing and not self._core.closing
                      and self._limits.idle_seconds != 0)
        if not keep_alive:
            self._closing = True
        data = head(status, headers, len(body), keep_alive, self._core.date())
        if request.method == "HEAD":
            self._transport.write(data)
        elif len(body) < 16384:
            self._transport.write(data + body)
        else:
            self._transport.writelines((data, body))  # no copy of a big answer

    def _answer_early(self, status: int, message: str) -> None:
        """Answer before the request is whole; close once it is, or after LINGER_SECONDS (no reset)."""
        transport = self._transport
        self._dropping, self._closing = True, True
        self._discarding = status in (400, 431)  # the parser can't go on: the rest is dropped unparsed
        self._disarm()
        if transport is None or transport.is_closing():
            return
        log.debug("REST answered %d before the request was whole: %s", status, message)
        answer = self._error(status, message)
        if self._worker is not None:  # after the answers to the requests before it, in order
            self._early = answer
        else:
            self._send_early(answer)

    def _send_early(self, answer: bytes) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(answer)
        if not self._in_message and not self._discarding:
            transport.close()
            return
        if self._discarding and transport.can_write_eof():
            transport.write_eof()
        # Closing with input unread would reset the connection, and the client could lose the answer.
        self._arm(LINGER_SECONDS, transport.close, "linger")

    def _malformed(self, reason: str) -> None:
        log.debug("Malformed HTTP request answered 400: %s", reason)
        self._answer_early(400, f"Malformed HTTP request: {reason}")

    def _head_too_large(self) -> None:
        self._answer_early(431, f"Request line and headers are larger than {MAX_HEAD_BYTES} bytes")

    def _error(self, status: int, message: str) -> bytes:
        return error_bytes(status, message, self._core.date(), self._core.extra_headers)

    def close_if_idle(self) -> None:
        self._closing = True
        if self._worker is None and not self._queue and not self._in_message and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _gate_refused(self, data: bytes) -> bool:
        gate = self._core.gate
        assert gate is not None and self._transport is not None
        refusal = gate.refuse(data)
        if refusal is None:
            if self._token is None:
                self._token = gate.enter()
            return False
        answer, keep_alive = refusal
        self._transport.write(answer)
        if keep_alive:
            self._arm(self._limits.header_seconds, self._headers_late)
        else:
            self._closing = True
            self._transport.close()
        return True

    def _leave_gate(self) -> None:
        if self._token is not None and self._core.gate is not None:
            self._core.gate.leave(self._token)
        self._token = None

    def _arm(self, seconds: float, expired: Callable[[], None], kind: str = "header") -> None:
        self._timer.arm(seconds, expired, kind)

    def _disarm(self) -> None:
        self._timer.disarm()

    def _headers_late(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._worker is not None:
            return
        if self._in_message:
            log.info("Closing a REST connection from %s: request headers not received within %.1f s",
                     transport.get_extra_info("peername"), self._limits.header_seconds)
            transport.write(self._error(408, HEADER_TIMEOUT_MESSAGE))
        transport.close()

    def _body_late(self) -> None:
        log.info("Answering 408: the body did not arrive within %.1f s", self._limits.body_seconds)
        self._answer_early(408, BODY_TIMEOUT_MESSAGE)

    def _idle_too_long(self) -> None:
        if self._transport is not None and not self._in_message and self._worker is None:
            self._transport.close()


__all__ = ["Connection", "HttpCore", "Limits"]
