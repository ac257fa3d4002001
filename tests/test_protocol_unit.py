"""Protocol layers on their own: a bug below them still gets an answer in the API's shape."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pyserving.errors import Code, ServingError
from pyserving.protocols.grpc.handlers import _guarded
from pyserving.protocols.rest.service import RestService


class BrokenDataPlane:
    tracing = None  # off

    def status(self, spec):
        raise RuntimeError("boom")

    def resolve(self, spec):
        raise ServingError(Code.NOT_FOUND, "Servable not found for request: Latest(x)")

    def readiness(self):
        return {"x": False}  # configured, nothing loaded


def test_rest_turns_an_unexpected_exception_into_json_500():
    async def body():
        async with TestClient(TestServer(RestService(BrokenDataPlane()).app())) as client:
            r = await client.get("/v1/models/x")
            assert r.status == 500
            assert (await r.json()) == {"error": "Internal error: RuntimeError: boom"}
            ready = await client.get("/v1/models/x/ready")
            assert ready.status == 503 and (await ready.json())["ready"] is False
    asyncio.run(body())


class RecordingContext:
    def __init__(self):
        self.aborted = None

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize("error, code, details", [
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "Internal error: RuntimeError: boom"),
    (ServingError(Code.NOT_FOUND, "nope"), grpc.StatusCode.NOT_FOUND, "nope"),
])
def test_grpc_guard_maps_errors_to_statuses(error, code, details):
    async def handler(request, context):
        raise error

    context = RecordingContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(_guarded(handler)((object(), 0), context))  # (message, wire size), as deserialized
    assert context.aborted == (code, details)
