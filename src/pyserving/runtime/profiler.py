"""TensorFlow's profiler, captured on request (what TF Serving's ProfilerService runs).

TensorFlow allows one profiler session per process; ``Profiler`` owns it and
refuses a second capture while one runs. A capture records for a while, then
returns the XSpace that TensorBoard's profile plugin reads (``*.xplane.pb``).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
from typing import Any

from ..errors import Code, ServingError

XPLANE_SUFFIX = ".xplane.pb"


class Profiler:
    """Start and stop TensorFlow's profiler; one capture at a time."""

    def __init__(self) -> None:
        self._busy = threading.Lock()
        self._session: Any = None  # TensorFlow's ProfilerSession while a capture runs
        self._dir = ""

    def start(self, host_tracer_level: int = 2, device_tracer_level: int = 1,
              python_tracer_level: int = 0) -> None:
        """Begin recording, at the tracer levels of TensorFlow's ``ProfileOptions``."""
        from tensorflow.python.profiler.internal import _pywrap_profiler

        if not self._busy.acquire(blocking=False):
            raise ServingError.unavailable("Another profiling session is active; try again when it ends")
        levels = {"host_tracer_level": host_tracer_level, "device_tracer_level": device_tracer_level,
                  "python_tracer_level": python_tracer_level}
        try:
            self._dir = tempfile.mkdtemp(prefix="pyserving-profile-")
            self._session = _pywrap_profiler.ProfilerSession()
            self._session.start(self._dir, levels)
        except Exception as e:  # TF refusing to start (another profiler in the process): nothing left running
            self._release()
            raise ServingError(Code.INTERNAL, f"Cannot start the profiler: {e}") from None

    def stop(self) -> bytes:
        """End the recording; the serialized XSpace (empty when nothing was recorded)."""
        try:
            if self._session is None:
                return b""
            self._session.export_to_tb()  # writes DIR/plugins/profile/RUN/HOST.xplane.pb
            found = glob.glob(os.path.join(self._dir, "plugins", "profile", "*", "*" + XPLANE_SUFFIX))
            if not found:
                return b""
            with open(found[0], "rb") as f:
                return f.read()
        finally:
            self._release()

    def _release(self) -> None:
        self._session = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""
        if self._busy.locked():
            self._busy.release()
