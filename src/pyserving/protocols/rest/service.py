"""REST: TF Serving's /v1/models API on aiohttp, thin over the DataPlane."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Awaitable, Callable, Mapping, cast

from aiohttp import http_exceptions, web
from aiohttp.web_urldispatcher import _default_expect_handler

from pyserving.codecs import json_codec
from pyserving.codecs.examples import examples_from_json
from pyserving.errors import Code, ServingError, http_status
from pyserving.observability.monitoring import DEFAULT_PATH as PROMETHEUS_PATH
from pyserving.observability.tracing import CURRENT
from pyserving.protocols import open_inference as v2
from pyserving.protocols.control_plane import ControlPlane
from pyserving.serving.dataplane import Caller, DataPlane, ModelSpec, PredictResult
from pyserving.serving.inline import SMALL_REQUEST_BYTES
from pyserving.serving.responses import SIGNATURE_DEF_FIELD, metadata_json, status_response, to_json_dict

from . import openapi, status_html, status_page, traced
from .bodies import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    INLINE_INFLATE_BYTES,
    BodyTooLarge,
    body_too_large,
    decompress,
    parse_json,
)
from .deadline import Deadline
from .open_inference import OpenInferenceRest
from .request import BufferedRequest

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<suffix>metadata|ready)|:(?P<verb>predict|classify|regress))?$")

_V2_INFER = re.compile(r"^/v2/models/(?P<name>[^{}/]+)(?:/versions/(?P<version>[^{}/]+))?/infer$")

log = logging.getLogger("pyserving.rest")


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad request line or header: the client's mistake,
    answered 400) as "Error handling request" at ERROR with a traceback. Those go to DEBUG, one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, http_exceptions.HttpProcessingError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "Malformed HTTP request answered %s: %s", (error.code, error.message[:200])
        record.exc_info, record.exc_text = None, None
        return True


def _malformed_http_at_debug() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedHttpFilter) for f in server_log.filters):
        server_log.addFilter(_MalformedHttpFilter())


CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Authorization"}


def _error(code: Code, message: str, retry_after: int | None = None) -> web.Response:
    log.debug("REST answered %s: %s", code.name, message)  # a client's mistake: DEBUG, never louder
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": message}, status=http_status(code), headers=headers)


class RestService:
    def __init__(self, dataplane: DataPlane, timeout_ms: int = 30000, cors: bool = False,
                 max_body_bytes: int = 1 << 30,
                 metrics_route: tuple[str, Callable[[], Awaitable[bytes]]] | None = None,
                 status: status_page.StatusPage | None = None,
                 max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
                 repository: v2.Repository | None = None, control: ControlPlane | None = None) -> None:
        self._dataplane = dataplane
        self._open_inference = OpenInferenceRest(dataplane, self.read_body, self._guard, repository, control)
        self._status_page = status or status_page.StatusPage(dataplane)
        self._metrics_route = metrics_route
        self._max_body_bytes = max_body_bytes
        self._inflated_limit = (min(max_body_bytes, max_decompressed_bytes), "rest_api_max_decompressed_bytes"
                                if max_decompressed_bytes <= max_body_bytes else "rest_api_max_request_bytes")
        self._timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self._cors = cors

    def app(self) -> web.Application:
        _malformed_http_at_debug()
        middlewares = [self._cors_middleware] if self._cors else []
        app = web.Application(client_max_size=self._max_body_bytes, middlewares=middlewares)
        if self._metrics_route:
            path, exposition = self._metrics_route

            async def metrics(_request: web.Request) -> web.Response:
                return web.Response(body=await exposition(), content_type="text/plain",
                                    charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})
            app.router.add_get(path, metrics)
        else:  # TF Serving's 404 there, saying what turns the page on
            app.router.add_get(PROMETHEUS_PATH, _metrics_off)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/openapi.json", self._openapi)
        app.router.add_get("/", self._page)
        app.router.add_get(status_page.JSON_PATH, self._status_summary)
        self._open_inference.add_routes(app, expect=self._expect)
        # [\s\S]: a path with a newline (%0A) still gets the API's JSON error, not aiohttp's text 404.
        app.router.add_route("*", "/{tail:[\\s\\S]*}", self.dispatch, expect_handler=self._expect)
        return app

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: a declared length over the limit is refused (413) before the
        client sends the body; aiohttp's own handler answers 100 Continue to any length."""
        if request.content_length is not None and request.content_length > self._max_body_bytes:
            return body_too_large(self._max_body_bytes)
        return await _default_expect_handler(request)

    @web.middleware
    async def _cors_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        response.headers.update(CORS_HEADERS)
        return response

    @cached_property
    def _routing(self) -> web.Application:
        return self.app()  # for handle(): its router and middlewares, never served by aiohttp

    async def handle(self, request: BufferedRequest) -> web.StreamResponse:
        """One request whose body has arrived whole, through app()'s routes, middlewares and
        handlers, without aiohttp's server: for the native HTTP core and Ray Serve's proxy."""
        app = self._routing
        match = await app.router.resolve(cast(web.Request, request))
        request.match_info = match
        handler = match.handler
        for middleware in reversed(app.middlewares):
            handler = partial(middleware, handler=handler)
        try:
            return await handler(request)
        except web.HTTPException as e:  # the router's own 404 / 405
            return e

    async def answer(self, request: BufferedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        """handle()'s answer as the native core sends it: status, headers (no Content-Length), body.
        The inference routes skip aiohttp's router (a tenth of a small request), on paths it would
        match alike: plain characters only, so its unquoting can't differ."""
        path, direct = request.path, None
        if request.method == "POST" and not self._cors and "%" not in path:
            if path.startswith("/v1/models/"):
                direct = self.dispatch
            elif (infer := _V2_INFER.match(path)) is not None:
                request.match_info, direct = infer.groupdict(), self._open_inference.infer
        response = await (direct(request) if direct is not None else self.handle(request))
        payload = (response.body or b"") if isinstance(response, web.Response) else None
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"REST handlers answer bytes, not {type(payload).__name__}")
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return response.status, headers, payload

    async def respond(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> RestAnswer:
        """handle() for Ray Serve's HTTP proxy (ray_serve.py), which hands over a decoded path."""
        request = BufferedRequest(method, path, headers, body, self._max_body_bytes, decoded=True)
        status, answer_headers, payload = await self.answer(request)
        return RestAnswer(status, b"" if method == "HEAD" else bytes(payload), dict(answer_headers))

    async def dispatch(self, request: web.Request) -> web.Response:
        match = _PATH.match(request.path)
        method = request.method
        if match is None or (method == "GET") == bool(match["verb"]) or method not in ("GET", "POST"):
            return _error(Code.NOT_FOUND, f"Malformed request: {method} {request.path}")
        api = match["verb"] or ("metadata" if match["suffix"] == "metadata" else None)
        return await self._guard(request, api, match["name"], partial(self._route, match, request), match)

    async def _route(self, match: re.Match, request: web.Request) -> web.Response:
        spec = ModelSpec(name=match["name"], version=_version(match["version"]), label=match["label"])
        if request.method == "GET":
            return await self._get(spec, match["suffix"])
        if match["suffix"]:
            return _error(Code.NOT_FOUND, f"Malformed request: {request.method} {request.path}")
        verb = self._predict if match["verb"] == "predict" else self._example_verb(match["verb"])
        return await verb(spec, request)

    async def _guard(self, request: web.Request, api: str | None, model: str,
                     answer: Callable[[], Awaitable[web.Response]], v1: re.Match | None = None) -> web.Response:
        """``answer()`` within --rest_api_timeout_in_ms, its failures as the API's JSON errors (with
        the access line of a request refused before the data plane saw it), traced if tracing is on
        (``v1``: the match of _PATH, for the span's route)."""
        tracing = self._dataplane.tracing
        if tracing is not None and api in traced.TRACED:
            return await traced.traced(tracing, request, self._dataplane.model_label(model),
                                       partial(self._answer, request, api, model, answer), v1)
        return await self._answer(request, api, model, answer)

    async def _answer(self, request: web.Request, api: str | None, model: str,
                      answer: Callable[[], Awaitable[web.Response]]) -> web.Response:
        start = time.perf_counter()
        try:
            # A timer on this task, not wait_for: wait_for's inner task and its failure's traceback
            # form a cycle that kept a rejected request's body and tensors until the next GC.
            with Deadline(self._timeout):
                return await answer()
        except asyncio.TimeoutError:  # the data plane's own access line says CANCELLED
            return _error(Code.DEADLINE_EXCEEDED, "Request timed out (--rest_api_timeout_in_ms)")
        except Exception as e:
            # Only plain values leave this block: the traceback holds the request's body and tensors.
            response, refused = self._failure(e, request)
            span = CURRENT.get()
            if span is not None:
                span.reason = span.reason or refused.message
            if request.method == "POST" and self._dataplane.access_log and not getattr(e, "accounted", False):
                self._dataplane.log_refused("REST", api, model, refused, time.perf_counter() - start,
                                            _peer(request), response.status)
            return response

    def _failure(self, e: Exception, request: web.Request) -> tuple[web.Response, ServingError]:
        """The answer to a request that failed, and a fresh error (no traceback) for the access log."""
        if isinstance(e, ServingError):
            return _error(e.code, e.message, e.retry_after), ServingError(e.code, e.message)
        if isinstance(e, (web.HTTPRequestEntityTooLarge, BodyTooLarge)):
            message = (e if isinstance(e, BodyTooLarge) else BodyTooLarge(self._max_body_bytes)).message
            return web.json_response({"error": message}, status=413), ServingError(Code.RESOURCE_EXHAUSTED, message)
        if isinstance(e, ConnectionError):
            # The client went away mid-body: nothing of ours failed, and no one reads an answer.
            log.debug("%s %s: the client closed the connection before its body arrived", request.method, request.path)
            error = ServingError.invalid_argument("Request body incomplete: the connection was closed")
        elif isinstance(e, http_exceptions.HttpProcessingError):  # a malformed body (chunking, length)
            error = ServingError.invalid_argument(f"Malformed request body: {e.message}")
        else:  # a bug of ours: still answer in the API's JSON shape
            log.exception("Unexpected error serving %s %s", request.method, request.path)
            error = ServingError(Code.INTERNAL, f"Internal error: {type(e).__name__}: {e}")
        return _error(error.code, error.message), error

    async def _get(self, spec: ModelSpec, suffix: str | None) -> web.Response:
        if suffix == "metadata":
            return await self._metadata(spec)
        if suffix == "ready":
            return self._ready(spec)
        return await self._status(spec)

    def _ready(self, spec: ModelSpec) -> web.Response:
        """For load balancers and Kubernetes probes: 200 only while a matching version serves."""
        try:
            version = self._dataplane.resolve(spec)
        except ServingError as e:
            if spec.name not in self._dataplane.readiness():  # not configured: as the status API says
                return _error(Code.NOT_FOUND, e.message)
            return web.json_response({"ready": False, "error": e.message}, status=503)
        return web.json_response({"ready": True, "model_spec": {"name": spec.name, "version": str(version)}})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """200 once every configured model has an AVAILABLE version."""
        ready = self._dataplane.readiness()
        waiting = sorted(name for name, ok in ready.items() if not ok)
        body = {"ready": not waiting, "models": ready}
        return web.json_response(body, status=503 if waiting else 200)

    async def _list_models(self, _request: web.Request) -> web.Response:
        """KServe v1's model list ({"models": [names]}), with each model's versions and states in
        the shape of TF Serving's model status, and each model's state as a whole."""
        names = sorted(self._dataplane.readiness())
        versions, states = {}, {}
        for name in names:
            statuses = await self._dataplane.listed_status(name)
            versions[name] = to_json_dict(status_response(statuses)).get("model_version_status", [])
            states[name] = self._dataplane.model_state(name, statuses)
        return web.json_response({"models": names, "model_version_status": versions, "model_state": states})

    async def _openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def _page(self, _request: web.Request) -> web.Response:
        """The status page (status_page.py); not a model request, so in no request metric."""
        return web.Response(text=status_html.render(await self._status_page.summary()),
                            content_type="text/html", headers=status_html.HEADERS)

    async def _status_summary(self, request: web.Request) -> web.Response:
        """Every model in a line; ?model=NAME: that model's versions, labels and signatures."""
        name = request.query.get("model")
        try:
            body = await (self._status_page.details(name) if name is not None else self._status_page.summary())
        except ServingError as e:
            return _error(e.code, e.message)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _status(self, spec: ModelSpec) -> web.Response:
        return web.json_response(to_json_dict(status_response(await self._dataplane.status(spec))))

    async def _metadata(self, spec: ModelSpec) -> web.Response:
        await self._dataplane.ensure_loaded(spec, self._timeout)
        response = self._dataplane.metadata(spec, [SIGNATURE_DEF_FIELD])
        return web.json_response(metadata_json(response))

    async def _body(self, request: web.Request) -> tuple[Any, Caller]:
        """The parsed JSON body, and the caller as the data plane sees it."""
        raw, caller = await self.read_body(request)
        return await parse_json(raw), caller

    async def read_body(self, request: web.Request) -> tuple[bytes, Caller]:
        """The body's bytes, inflated within the limits, and the caller as the data plane sees it."""
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            if len(raw) > INLINE_INFLATE_BYTES:  # never seconds of inflating on the event loop
                raw = await asyncio.to_thread(decompress, raw, encoding, *self._inflated_limit)
            else:
                raw = decompress(raw, encoding, *self._inflated_limit)
        small = len(raw) <= SMALL_REQUEST_BYTES
        return raw, Caller("REST", self._timeout, small, _peer(request) if self._dataplane.access_log else "",
                           span=CURRENT.get())

    def _example_verb(self, verb: str):
        async def handle(spec: ModelSpec, request: web.Request) -> web.Response:
            body, caller = await self._body(request)
            if not isinstance(body, dict):
                raise ServingError.invalid_argument("JSON Value: request body must be a JSON object")
            signature_name = body.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise ServingError.invalid_argument("'signature_name' key must be a string value")
            spec = ModelSpec(spec.name, spec.version, spec.label, signature_name)
            run = self._dataplane.classify if verb == "classify" else self._dataplane.regress
            response = await run(spec, lambda: examples_from_json(body), caller)
            return web.json_response({"results": _results_json(response.result, verb)})
        return handle

    async def _predict(self, spec: ModelSpec, request: web.Request) -> web.Response:
        parsed, caller = await self._body(request)
        body = json_codec.parse_predict_body(parsed)
        spec = ModelSpec(spec.name, spec.version, spec.label, body.signature_name)

        def decode(signature):
            dtypes = {alias: t.dtype for alias, t in signature.inputs.items()}
            return json_codec.decode_inputs(body, dtypes)

        def encode(result: PredictResult) -> bytes:
            return json_codec.encode_outputs(result.outputs, body.row_format)

        payload = await self._dataplane.predict(spec, decode, (), encode, caller)
        return web.Response(body=payload, content_type="application/json")


@dataclass(frozen=True)
class RestAnswer:
    """RestService.respond's answer, for a transport to send."""

    status: int
    body: bytes
    headers: dict[str, str]


def _peer(request: web.Request) -> str:
    """host:port of the client, for the access log ("" where the transport doesn't say)."""
    transport = getattr(request, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""


def _version(text: str | None) -> int | None:
    """A URL's version as TF Serving reads it: an int64, else 400 in TF Serving's words (and never
    Python's int() of thousands of digits, whose conversion limit is a ValueError)."""
    if text is None:
        return None
    digits = text.lstrip("-").lstrip("0") or "0"  # int() counts leading zeros toward its limit
    if len(digits) <= 19:
        value = -int(digits) if text.startswith("-") else int(digits)
        if -(2**63) <= value < 2**63:
            return value
    shown = text if len(text) <= 64 else text[:64] + "..."
    raise ServingError.invalid_argument(f"Failed to convert version: {shown} to numeric.")


def _results_json(result, verb: str) -> list:
    if verb == "classify":
        return [[[c.label, c.score] for c in classification.classes]
                for classification in result.classifications]
    return [r.value for r in result.regressions]


async def _metrics_off(request: web.Request) -> web.Response:
    return _error(Code.NOT_FOUND, f"Malformed request: GET {request.path}: Prometheus metrics are off; start "
                  "the server with --monitoring_config_file naming a file that holds "
                  "prometheus_config { enable: true }")
