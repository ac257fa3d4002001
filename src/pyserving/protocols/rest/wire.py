"""HTTP/1.1 on the wire for the native core (http_core.py): the answer's head, the core's own
JSON errors, and the checks of a request's target and headers that llhttp leaves to its caller."""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Iterable

import httptools

Headers = Iterable[tuple[str, str]]

MAX_FIELD_BYTES = 8190  # the request target, or one header's name or value: aiohttp's (400 above it)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def error_bytes(status: int, message: str, date: bytes, extra: Headers = ()) -> bytes:
    """A whole JSON error answer ({"error": message}) that closes the connection."""
    body = json.dumps({"error": message}).encode()
    return head(status, (("Content-Type", "application/json; charset=utf-8"), *extra), len(body), False, date) + body


def head(status: int, headers: Headers, length: int, keep_alive: bool, date: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    lines.extend(f"{k}: {v}\r\n".encode("latin-1", "replace") for k, v in headers)
    lines.append(b"Content-Length: %d\r\nDate: %s\r\n%s\r\n" % (length, date, b"" if keep_alive else
                                                                   b"Connection: close\r\n"))
    return b"".join(lines)


class DateHeader:
    """The Date header's value, formatted once a second rather than once an answer."""

    def __init__(self) -> None:
        self._second, self._value = 0, b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        return self._value


def head_problem(url: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request's target or headers can't be served, or None."""
    if len(url) > MAX_FIELD_BYTES or any(len(n) > MAX_FIELD_BYTES or len(v) > MAX_FIELD_BYTES for n, v in headers):
        return f"the request target or a header is longer than {MAX_FIELD_BYTES} bytes"
    if url.startswith(b"/"):
        return None
    try:  # "*" and authority forms name no resource here
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        parsed = None
    if parsed is None or parsed.schema not in (b"http", b"https") or not parsed.host:
        return f"unsupported request target {url[:100]!r}"
    return None



__all__ = ["DateHeader", "Headers", "MAX_FIELD_BYTES", "error_bytes", "head", "head_problem"]
