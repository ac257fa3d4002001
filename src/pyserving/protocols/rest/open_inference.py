"""The Open Inference Protocol's REST API on --rest_api_port, beside TF Serving's /v1 routes.

JSON tensors (flat or nested data) and Triton's binary tensor extension: a body whose first
``Inference-Header-Content-Length`` bytes are the JSON request, followed by the raw bytes of each
input that declares ``binary_data_size``, in order; outputs asked for with ``binary_data`` (or
the request's ``binary_data_output``) come back the same way. Errors are the spec's
``{"error": ...}`` with 400 / 404 (service.py's _guard, shared with /v1). The model-repository
extension's index, load and unload are control-plane calls (protocols/control_plane.py).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from pyserving.codecs import open_inference as codec
from pyserving.errors import Code, ServingError
from pyserving.protocols.control_plane import ControlPlane
from pyserving.serving.dataplane import Caller, DataPlane, PredictResult

from .. import open_inference as v2
from .. import triton_extensions as triton
from .bodies import parse_json

HEADER_LENGTH = "Inference-Header-Content-Length"
ReadBody = Callable[[web.Request], Awaitable[tuple[bytes, Caller]]]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
Guard = Callable[[web.Request, str, str, Callable[[], Awaitable[web.Response]]], Awaitable[web.Response]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                        content_type="application/json")


class OpenInferenceRest:
    def __init__(self, dataplane: DataPlane, read_body: ReadBody, guard: Guard,
                 repository: v2.Repository | None = None, control: ControlPlane | None = None) -> None:
        self._dataplane = dataplane
        self._read_body = read_body
        self._guard = guard
        self._repository = repository
        self._control = control or ControlPlane()

    def add_routes(self, app: web.Application, expect: ExpectHandler | None = None) -> None:
        """``expect``: the handler that judges ``Expect: 100-continue`` against the body limit."""
        r = app.router
        r.add_get("/v2", self._server_metadata)
        r.add_get("/v2/", self._server_metadata)
        r.add_get("/v2/health/live", self._live)
        r.add_get("/v2/health/ready", self._ready)
        r.add_get("/v2/models/stats", self._statistics)  # before /v2/models/{name}: every model's
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(prefix, self._model_metadata)
            r.add_get(prefix + "/config", self._model_config)
            r.add_get(prefix + "/stats", self._statistics)
            r.add_get(prefix + "/ready", self._model_ready)
            r.add_post(prefix + "/infer", self.infer, expect_handler=expect)
        r.add_post("/v2/repository/index", self._index, expect_handler=expect)
        r.add_post("/v2/repository/models/{name}/load", self._load, expect_handler=expect)
        r.add_post("/v2/repository/models/{name}/unload", self._unload, expect_handler=expect)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json(v2.server_metadata())

    async def _live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = v2.server_ready(self._dataplane)
        return _json({"ready": ready}, 200 if ready else 400)

    async def _model_metadata(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")

        async def answer() -> web.Response:
            return _json(await v2.model_metadata(self._dataplane, name, version))
        return await self._guard(request, "metadata", name, answer)

    async def _model_config(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")

        async def answer() -> web.Response:
            return _json(await triton.model_config(self._dataplane, name, version))
        return await self._guard(request, "metadata", name, answer)

    async def _statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("name", ""), request.match_info.get("version")

        async def answer() -> web.Response:
            return _json(await triton.model_statistics(self._dataplane, name, version))
        return await self._guard(request, "metadata", name, answer)

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")

        async def answer() -> web.Response:
            ready = v2.model_ready(self._dataplane, name, version, self._repository)
            return _json({"name": name, "ready": ready}, 200 if ready else 400)
        return await self._guard(request, "ready", name, answer)

    async def _index(self, request: web.Request) -> web.Response:
        async def answer() -> web.Response:
            repository = self._repo(request, "")
            raw, _ = await self._read_body(request)
            body = await parse_json(raw) if raw.strip() else {}  # no body: the whole index
            if not isinstance(body, dict):
                raise ServingError.invalid_argument("The request body must be a JSON object")
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise ServingError.invalid_argument("'ready' must be true or false")
            return _json(v2.index_filter(await repository.index(), ready))
        return await self._guard(request, "repository_index", "", answer)

    async def _load(self, request: web.Request) -> web.Response:
        return await self._change(request, "load")

    async def _unload(self, request: web.Request) -> web.Response:
        return await self._change(request, "unload")

    async def _change(self, request: web.Request, action: str) -> web.Response:
        name = request.match_info["name"]

        async def answer() -> web.Response:
            repository = self._repo(request, f"POST /v2/repository/models/{{name}}/{action}")
            await (repository.load(name) if action == "load" else repository.unload(name))
            return _json({"name": name, action: True})
        return await self._guard(request, f"repository_{action}", name, answer)

    def _repo(self, request: web.Request, what: str) -> v2.Repository:
        """The repository, once the control plane lets this caller in (``what``: the change it makes;
        "" for the index, which changes nothing and is open as model status is)."""
        if self._repository is None:
            raise ServingError(Code.UNIMPLEMENTED, "This server has no model repository API")
        if what:
            self._control.check_change(request.headers.get("Authorization"), what, rest=True)
        return self._repository

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._guard(request, "infer", name, lambda: self._run(request, name))

    async def _run(self, request: web.Request, name: str) -> web.Response:
        raw, caller = await self._read_body(request)
        header_length = _header_length(request, len(raw))
        body = await parse_json(raw[:header_length] if header_length is not None else raw)
        if not isinstance(body, dict):
            raise ServingError.invalid_argument("The request body must be a JSON object")
        parameters = _object(body, "parameters", "parameters")
        spec = v2.model_spec(name, request.match_info.get("version"), parameters)
        binary = memoryview(raw)[header_length:] if header_length is not None else memoryview(b"")
        tensors = _tensors(body.get("inputs"), binary)
        binary_default = parameters.get("binary_data_output", False) is True
        outputs = _requested(body.get("outputs", ()), binary_default)
        request_id = body.get("id", "")
        if not isinstance(request_id, str):
            raise ServingError.invalid_argument("'id' must be a string")

        def encode(result: PredictResult) -> tuple[bytes, int | None]:
            return _response(result, outputs, binary_default, request_id)

        payload, json_length = await self._dataplane.predict(
            spec, v2.decoder(spec.name, tensors), list(outputs), encode, caller, api="infer")
        if json_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(json_length)})


def _header_length(request: web.Request, body_length: int) -> int | None:
    text = request.headers.get(HEADER_LENGTH)
    if text is None:
        return None
    length = v2.ascii_number(text.strip())
    if length is None or length > body_length:
        raise ServingError.invalid_argument(
            f"{HEADER_LENGTH} must be the JSON header's length, at most the body's {body_length} bytes")
    return length


def _object(holder: dict, key: str, what: str) -> dict:
    """``holder[key]``, a JSON object ({} when the key is absent; null is not an object)."""
    value = holder.get(key, {})
    if not isinstance(value, dict):
        raise ServingError.invalid_argument(f"'{what}' must be a JSON object")
    return value


def _tensors(inputs: Any, binary: memoryview) -> list[codec.WireTensor]:
    if not isinstance(inputs, list) or not inputs:
        raise ServingError.invalid_argument("'inputs' must be a non-empty list of tensors")
    tensors, at = [], 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ServingError.invalid_argument("Each input must be an object with a 'name'")
        name = tensor["name"]
        datatype, shape = codec.check_header(name, tensor.get("datatype"), tensor.get("shape"))
        size = _object(tensor, "parameters", f"input '{name}' parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or at + size > len(binary):
                raise ServingError.invalid_argument(
                    f"input '{name}': binary_data_size {size!r} is past the {len(binary)} bytes after the header")
            tensors.append(codec.WireTensor(name, datatype, shape, binary[at:at + size], "raw"))
            at += size
        elif "data" in tensor:
            tensors.append(codec.WireTensor(name, datatype, shape, tensor["data"], "json"))
        else:
            raise ServingError.invalid_argument(f"input '{name}' has neither 'data' nor binary_data_size")
    if at != len(binary):
        raise ServingError.invalid_argument(f"{len(binary) - at} bytes after the header belong to no input")
    return tensors


def _requested(outputs: Any, binary_default: bool) -> dict[str, bool]:
    """The outputs asked for, each with whether it goes back as binary data."""
    if not isinstance(outputs, (list, tuple)):
        raise ServingError.invalid_argument("'outputs' must be a list")
    requested: dict[str, bool] = {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ServingError.invalid_argument("Each requested output must be an object with a 'name'")
        parameters = _object(output, "parameters", f"output '{output['name']}' parameters")
        requested[output["name"]] = parameters.get("binary_data", binary_default) is True
    return requested


def _response(result: PredictResult, requested: dict[str, bool], binary_default: bool,
              request_id: str) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    body: dict[str, Any] = {"model_name": result.model_name, "model_version": str(result.version)}
    if request_id:  # a string: _run refused anything else
        body["id"] = request_id
    outputs, blobs = [], []
    for tensor in v2.output_tensors(result.outputs, list(requested)):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if requested.get(tensor.name, binary_default):
            blob = codec.to_raw(tensor.array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = codec.to_json_data(tensor.array, tensor.name)
        outputs.append(entry)
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
