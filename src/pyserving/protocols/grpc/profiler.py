"""TensorFlow's ProfilerService on the gRPC port, as TF Serving serves it (``--enable_profiler``).

``tf.profiler.experimental.client.trace("grpc://host:port", logdir, ms)`` and
TensorBoard's "capture profile" call ``Profile``; like TensorFlow's own
service, the server records for the requested time and writes
``<repository_root>/<session_id>/<host_name>.xplane.pb``, or returns the XSpace
in the response when the client asks for it (``emit_xspace``).

Unlike TensorFlow's service, which writes wherever the client says, traces are written only inside
the operator's ``--profiler_log_dir`` (repository_root must lie in it; a relative one is taken from
it), under validated names, into files created here (never an existing file, never through a
symlink). Without the flag, captures still work with ``emit_xspace``. The service is a control-plane
call (control_plane.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket

from pyserving.config.proto_builder import F, build_messages
from pyserving.errors import Code, ServingError
from pyserving.runtime.profiler import XPLANE_SUFFIX, Profiler
from pyserving.storage.paths import inside

SERVICE = "tensorflow.ProfilerService"
MAX_DURATION_MS = 3_600_000  # a capture holds the process's only profiler session
_SAFE_NAME = re.compile(r"^[\w.\-:]{1,200}$")
FILE_MODE = 0o640

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

    def __init__(self, profiler: Profiler, log_dir: str = "") -> None:
        self._profiler = profiler
        self._log_dir = log_dir  # --profiler_log_dir: the only folder traces are written to
        self._stops: dict[str, asyncio.Event] = {}

    async def Profile(self, request, context):
        duration_ms = request.opts.duration_ms or request.duration_ms
        if duration_ms > MAX_DURATION_MS:
            raise ServingError.invalid_argument(
                f"duration_ms={duration_ms} is over the limit of {MAX_DURATION_MS} ms")
        host = request.host_name or socket.gethostname()
        folder = "" if request.emit_xspace else self._trace_folder(request.repository_root, request.session_id, host)
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
            await loop.run_in_executor(None, _save, self._log_dir, folder, host, xspace)
        return response

    def _trace_folder(self, repository_root: str, session_id: str, host: str) -> str:
        """Where the trace goes, checked before the capture starts: inside --profiler_log_dir."""
        for what, value in (("session_id", session_id), ("host_name", host)):
            # They become a folder and a file name: no separators, and never '.' or '..'.
            if not _SAFE_NAME.match(value) or value.strip(".") == "":
                raise ServingError.invalid_argument(f"{what} {value[:200]!r} is not a valid file name")
        if not repository_root:
            raise ServingError.invalid_argument("repository_root is required to save the trace")
        if not self._log_dir:
            raise ServingError.failed_precondition(
                "This server writes profiler traces only inside --profiler_log_dir (not set): start it "
                "with that flag and a repository_root inside it, or ask for the trace in the response "
                "(emit_xspace)")
        try:
            return inside(self._log_dir, os.path.join(repository_root, session_id))
        except ValueError:
            raise ServingError.invalid_argument(
                f"repository_root {repository_root[:200]!r} is outside --profiler_log_dir={self._log_dir}") from None

    async def Terminate(self, request, context):
        stop = self._stops.get(request.session_id)
        if stop is not None:
            stop.set()
        return TerminateResponse()


def _save(root: str, folder: str, host: str, xspace: bytes) -> None:
    try:
        # Checked again, before the missing folders are made and after: a symlink planted since
        # the request was checked (a capture lasts up to an hour) never has anything made through it.
        _still_inside(root, folder)
        os.makedirs(folder, mode=0o750, exist_ok=True)
        _still_inside(root, folder)
        fd = os.open(os.path.join(folder, host + XPLANE_SUFFIX),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(xspace)
    except FileExistsError:
        raise ServingError(Code.ALREADY_EXISTS, f"A trace of this session and host is in {folder} already: "
                                                "use a new session_id") from None
    except OSError as e:
        raise ServingError.failed_precondition(f"Cannot write the trace to {folder}: {e.strerror or e}") from None


def _still_inside(root: str, folder: str) -> None:
    try:
        inside(root, folder)
    except ValueError:
        raise ServingError.invalid_argument(f"{folder} now resolves outside --profiler_log_dir") from None


METHODS = {"Profile": (ProfileRequest, ProfileResponse), "Terminate": (TerminateRequest, TerminateResponse)}
