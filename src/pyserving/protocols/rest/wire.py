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
# The 408s' words, on either HTTP core (timeouts.py is aiohttp's).
HEADER_TIMEOUT_MESSAGE = "Request headers not received in time (--rest_api_header_timeout_in_ms)"
BODY_TIMEOUT_MESSAGE = "Request body not received in time (--rest_api_body_timeout_in_ms)"
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


class BadHead(Exception):
    """A request target or header that can't be served (400), with the reason."""


def origin_target(url: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request's path and query, from an origin- or absolute-form target; raises BadHead for
    an oversized field, or a target naming no resource here ("*", authority form)."""
    if len(url) > MAX_FIELD_BYTES or any(len(n) > MAX_FIELD_BYTES or len(v) > MAX_FIELD_BYTES for n, v in headers):
        raise BadHead(f"the request target or a header is longer than {MAX_FIELD_BYTES} bytes")
    if url.startswith(b"/"):
        return url
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        parsed = None
    if parsed is None or parsed.schema not in (b"http", b"https") or not parsed.host:
        raise BadHead(f"unsupported request target {url[:100]!r}")
    return (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")


__all__ = ["BODY_TIMEOUT_MESSAGE", "BadHead", "DateHeader", "HEADER_TIMEOUT_MESSAGE", "Headers",
           "MAX_FIELD_BYTES", "error_bytes", "head", "origin_target"]
