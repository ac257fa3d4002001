"""A REST request whose body has arrived whole: what the router and handlers read of an aiohttp
request, for the native HTTP core (http_core.py) and Ray Serve's proxy (ray_serve.py)."""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Any, Mapping, NamedTuple

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL


class HttpVersion(NamedTuple):
    major: int
    minor: int


HTTP_11 = HttpVersion(1, 1)


class BufferedRequest:
    """``target``: the request's path and query as sent (percent-encoded), or the path alone with
    ``decoded`` (what Ray's proxy hands over)."""

    match_info: Any = None  # set by RestService once the router has matched the path
    keep_alive = True  # the client's wish, as its HTTP version and Connection header say

    def __init__(self, method: str, target: str, headers: Mapping[str, str] | CIMultiDict, body: bytes, limit: int,
                 transport: asyncio.Transport | None = None, version: HttpVersion = HTTP_11,
                 decoded: bool = False) -> None:
        self.method, self._target, self._body, self._limit = method, target, body, limit
        self.transport, self.version, self._decoded = transport, version, decoded
        proxy = headers if isinstance(headers, CIMultiDict) else CIMultiDict(headers)
        self.headers = CIMultiDictProxy(proxy)

    @cached_property
    def rel_url(self) -> URL:
        if self._decoded:
            return URL.build(path=self._target)
        path, _, query = self._target.partition("?")  # as aiohttp's parser builds it
        return URL.build(path=path, query_string=query, encoded=True)

    @cached_property
    def path(self) -> str:
        target = self._target
        if self._decoded or ("%" not in target and "?" not in target and target.startswith("/")):
            return target  # the common case, without building a URL
        return self.rel_url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.rel_url.query

    @property
    def secure(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is not None

    @property
    def content_length(self) -> int | None:
        return len(self._body)

    async def read(self) -> bytes:
        if len(self._body) > self._limit:  # as aiohttp's read() past client_max_size
            raise web.HTTPRequestEntityTooLarge(max_size=self._limit, actual_size=len(self._body))
        return self._body


__all__ = ["BufferedRequest", "HTTP_11", "HttpVersion"]
