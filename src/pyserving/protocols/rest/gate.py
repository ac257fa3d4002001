"""REST admission at the connection: an overloaded server refuses a request before aiohttp parses it.

Under a flood the refusals must cost far less than serving, or refusing can't make room: a 503
through aiohttp's request machinery, middlewares and handler costs about 60% of serving a small
model. So each connection (http_timeouts.HeaderDeadline) asks the gate when the first bytes of
a request arrive: the gate counts the requests the server has taken and not yet answered,
judges a standing queue on the event loop's own lag (``LoopLag``: requests served on the loop
wait in socket buffers for the loop's next cycle, which no count sees), and when the admission
rules (serving/admission.py, the standing-queue rule in particular) refuse, and the
bytes are exactly one complete ``POST`` (headers and a Content-Length body, as every inference
client sends them), the connection writes a prepared 503 and drops the bytes: a few
microseconds, no parsing, no task. Anything else (a GET, a body still arriving, chunked
encoding, pipelining) goes on to aiohttp as usual, where the data plane's own admission still
applies; health checks and metrics are never refused here.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

from pyserving.observability.monitoring import Metrics
from pyserving.serving.admission import OVERLOADED_MESSAGE, RETRY_AFTER_SECONDS, Admission, Token

from .service import CORS_HEADERS

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,15})[ \t]*(?:\r\n|$)")


def _response(keep_alive: bool, extra_headers: str) -> bytes:
    body = json.dumps({"error": OVERLOADED_MESSAGE}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n{extra_headers}"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + body


def whole_post(data: bytes) -> bool | None:
    """Whether ``data`` is exactly one complete HTTP/1.1 POST: None if not, else its keep-alive."""
    if not data.startswith(b"POST "):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].lower()
    line_end = head.find(b"\r\n")
    if not head[:line_end if line_end >= 0 else end].endswith(b" http/1.1"):
        return None
    if b"\r\ntransfer-encoding:" in head or b"\r\nexpect:" in head or head.count(b"\r\ncontent-length:") > 1:
        return None
    match = _CONTENT_LENGTH.search(head)
    if end + 4 + (int(match[1]) if match else 0) != len(data):
        return None
    return b"\r\nconnection: close" not in head


class LoopLag:
    """How long the event loop has lately kept a ready callback waiting: a timer every
    ``PERIOD_SECONDS`` notes how late it ran, and ``seconds`` is the worst of the last window. When
    requests are served on the loop, that is the cycle each of them waits through, socket buffer
    included, which no count of requests can see."""

    PERIOD_SECONDS = 0.01
    WINDOW_SECONDS = 0.05

    def __init__(self) -> None:
        self.seconds = 0.0
        self._worst = 0.0
        self._due = 0.0
        self._window_end = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(time.perf_counter())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def __call__(self) -> float:
        return self.seconds

    def _schedule(self, now: float) -> None:
        self._due = now + self.PERIOD_SECONDS
        self._handle = asyncio.get_running_loop().call_later(self.PERIOD_SECONDS, self._probe)

    def _probe(self) -> None:
        now = time.perf_counter()
        self._worst = max(self._worst, now - self._due)
        if now >= self._window_end:
            self.seconds, self._worst, self._window_end = self._worst, 0.0, now + self.WINDOW_SECONDS
        self._schedule(now)


@dataclass
class RestGate:
    admission: Admission  # its own, counting every REST request from its first byte
    metrics: Metrics
    cors: bool = False
    lag: LoopLag = field(default_factory=LoopLag)
    _answers: dict[bool, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admission.lag = self.lag
        extra = "".join(f"{k}: {v}\r\n" for k, v in CORS_HEADERS.items()) if self.cors else ""
        self._answers = {keep: _response(keep, extra) for keep in (True, False)}

    def refuse(self, data: bytes) -> tuple[bytes, bool] | None:
        """The 503 to write and whether to keep the connection, when the request in ``data`` is refused."""
        if self.admission.refusal() is None:
            return None
        keep_alive = whole_post(data)
        if keep_alive is None:
            return None
        self.metrics.shed.inc()
        return self._answers[keep_alive], keep_alive

    def enter(self) -> Token:
        return self.admission.enter(time.perf_counter())

    def leave(self, token: Token) -> None:
        self.admission.leave(token)
