"""TensorFlow's ProfilerService on the gRPC port, as TF Serving serves it (``--enable_profiler``).

``tf.profiler.experimental.client.trace("grpc://host:port", logdir, ms)`` and
TensorBoard's "capture profile" call ``Profile``; like TensorFlow's own
service, the server records for the requested time and writes
``<repository_root>/<session_id>/<host_name>.xplane.pb``, or returns the XSpace
in the response when the client asks for it (``emit_xspace``).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket


from .errors import ServingError
from .proto_builder import F, build_messages
from .runtime.profiler import XPLANE_SUFFIX, Profiler

SERVICE = "tensorflow.ProfilerService"
MAX_DURATION_MS = 3_600_000  # a capture holds the process's only profiler session
_SAFE_NAME = re.compile(r"^[\w.\-:]+$")

# Field numbers as in tsl/profiler/protobuf/profiler_service.proto and profiler_options.proto;
# fields not declared here pass through as unknown fields.
_M = build_messages("pyserving/profiler_service.proto", "tensorflow", {
    "ProfileOptions": [("host_tracer_level", 2, F.TYPE_UINT32, ""), ("device_tracer_level", 3, F.TYPE_UINT32, ""),
                       ("python_tracer_level", 4, F.TYPE_UINT32, ""), ("duration_ms", 9, F.TYPE_UINT64, "")],
    "ProfileRequest": [("duration_ms", 1, F.TYPE_UINT64, ""), ("opts", 4, F.TYPE_MESSAGE, ".tensorflow.ProfileOptions"),
                       ("repository_root", 5, F.TYPE_STRING, ""), ("session_id", 6, F.TYPE_STRING, ""),
                       ("host_name", 7, F.TYPE_STRING, ""), ("emit_xspace", 9, F.TYPE_BOOL, "")],
    "ProfileResponse": [("empty_trace", 7, F.TYPE_BOOL, ""), ("xspace", 8, F.TYPE_BYTES, "")],
    "TerminateRequest": [("session_id", 1, F.TYPE_STRING, "")],
    "TerminateResponse": [],
})
ProfileRequest, ProfileResponse = _M["ProfileRequest"], _M["ProfileResponse"]
TerminateRequest, TerminateResponse = _M["TerminateRequest"], _M["TerminateResponse"]


class ProfilerServicer:
    """Profile and Terminate; a capture ends early on Terminate or when the client goes away."""

    def __init__(self, profiler: Profiler) -> None:
        self._profiler = profiler
        self._stops: dict[str, asyncio.Event] = {}

    async def Profile(self, request, context):
        duration_ms = request.opts.duration_ms or request.duration_ms
        if duration_ms > MAX_DURATION_MS:
            raise ServingError.invalid_argument(
                f"duration_ms={duration_ms} is over the limit of {MAX_DURATION_MS} ms")
        host = request.host_name or socket.gethostname()
        if not request.emit_xspace:
            for what, value in (("session_id", request.session_id), ("host_name", host)):
                if not _SAFE_NAME.match(value):  # they become a folder and a file name
                    raise ServingError.invalid_argument(f"{what} {value!r} is not a valid file name")
            if not request.repository_root:
                raise ServingError.invalid_argument("repository_root is required to save the trace")
        loop = asyncio.get_running_loop()
        opts = request.opts
        await loop.run_in_executor(None, lambda: self._profiler.start(
            opts.host_tracer_level or 2, opts.device_tracer_level or 1, opts.python_tracer_level))
        stop = self._stops.setdefault(request.session_id, asyncio.Event())
        try:
            await asyncio.wait_for(stop.wait(), duration_ms / 1000)
        except asyncio.TimeoutError:
            pass
        finally:  # also on cancellation: the profiler is never left running
            self._stops.pop(request.session_id, None)
            xspace = await asyncio.shield(loop.run_in_executor(None, self._profiler.stop))
        response = ProfileResponse(empty_trace=not xspace)
        if request.emit_xspace:
            response.xspace = xspace
        elif xspace:
            await loop.run_in_executor(None, _save, request.repository_root, request.session_id, host, xspace)
        return response

    async def Terminate(self, request, context):
        stop = self._stops.get(request.session_id)
        if stop is not None:
            stop.set()
        return TerminateResponse()


def _save(repository_root: str, session_id: str, host: str, xspace: bytes) -> None:
    folder = os.path.join(repository_root, session_id)
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, host + XPLANE_SUFFIX), "wb") as f:
            f.write(xspace)
    except OSError as e:
        raise ServingError.failed_precondition(f"Cannot write the trace to {folder}: {e.strerror}") from None


METHODS = {"Profile": (ProfileRequest, ProfileResponse), "Terminate": (TerminateRequest, TerminateResponse)}
