"""A REST request's server span (tracing on): named and attributed as OpenTelemetry's HTTP
conventions say, its status the response's."""

from __future__ import annotations

import asyncio
import re
from typing import Awaitable, Callable

from aiohttp import web

from pyserving.observability.tracing import CURRENT, Tracing

# The APIs a trace follows: inference and model metadata (not health, status, metrics or the page).
TRACED = frozenset({"predict", "classify", "regress", "infer", "metadata"})
MAX_PATH = 1024  # of a client's path, kept in url.path

def route(request: web.Request, v1: re.Match | None = None) -> str:
    """http.route: the path's template (/v1/models/{model_name}:predict, /v2/models/{name}/infer).
    ``v1``: the match of TF Serving's path the REST service routed by (service._PATH)."""
    if v1 is not None:
        return ("/v1/models/{model_name}" + ("/versions/{version}" if v1["version"] is not None else "")
                + ("/labels/{label}" if v1["label"] is not None else "")
                + (f"/{v1['suffix']}" if v1["suffix"] else f":{v1['verb']}" if v1["verb"] else ""))
    match_info = getattr(request, "match_info", None)
    if isinstance(match_info, dict):  # V2 infer as the native core routes it (service._V2_INFER)
        return "/v2/models/{name}" + ("/versions/{version}" if match_info.get("version") else "") + "/infer"
    resource = getattr(getattr(match_info, "route", None), "resource", None)
    return getattr(resource, "canonical", None) or "/{path}"


async def traced(tracing: Tracing, request: web.Request, model: str,
                 answer: Callable[[], Awaitable[web.Response]], v1: re.Match | None = None) -> web.Response:
    """``answer()`` under a server span; ``model``: the model's label (dataplane.model_label);
    ``v1``: as route() takes it."""
    template = ""

    def name() -> str:  # only for a request the sampler may keep (or must see)
        nonlocal template
        template = route(request, v1)
        return f"{request.method} {template}"

    def attributes() -> dict:
        found = {"http.request.method": request.method, "http.route": template, "url.path": request.path[:MAX_PATH],
                 "url.scheme": "https" if request.secure else "http",
                 "network.protocol.version": f"{request.version.major}.{request.version.minor}"
                 if getattr(request, "version", None) else "1.1"}
        agent = request.headers.get("User-Agent")
        if agent:
            found["user_agent.original"] = agent[:256]
        return found
    span = tracing.start(name, request.headers, attributes)
    if span is None:
        return await answer()
    token = CURRENT.set(span)
    status: int | None = 500  # unless an answer comes back
    try:
        response = await answer()
        status = response.status
        return response
    except asyncio.CancelledError:  # the client went away: no answer, and not the server's failure
        status = None
        span.set("pyserving.outcome", "CANCELLED")
        raise
    finally:
        CURRENT.reset(token)
        span.server.attributes.setdefault("pyserving.model.name", model)
        if status is not None:
            span.set("http.response.status_code", status)
            if status >= 500:
                span.set("error.type", str(status))
        span.finish(status is not None and status >= 500)
