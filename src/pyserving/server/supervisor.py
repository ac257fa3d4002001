"""--num_workers: one supervisor process forks N serving workers that share the ports.

Each worker is a whole Server (its own TensorFlow, models and event loop) listening on the same
ports with SO_REUSEPORT, so the kernel spreads connections over them and Python's GIL stops
being the ceiling. What must stay one server across them (reloads, model status, metrics) goes
through peers.py over private UNIX sockets in a run folder made here. The supervisor itself never
imports TensorFlow or gRPC: it forks before either exists, relays signals, restarts a worker that
dies after it has served, and ends the server when one dies while starting.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("pyserving.supervisor")

# A worker that dies sooner than this after its start is failing to start (a port in use, a
# model that crashes TensorFlow on load): restarting it would loop, so the server stops instead.
RESTART_AFTER_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSlot:
    """What a worker knows of its place: its index, how many there are, and the run folder."""

    index: int
    count: int
    run_dir: str

    def socket_path(self, index: int) -> str:
        return os.path.join(self.run_dir, f"worker-{index}.sock")

    @property
    def peer_indexes(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    @property
    def config_path(self) -> str:
        """The last config applied by a reload, for a worker that restarts after it."""
        return os.path.join(self.run_dir, "reloaded-config.pb")

    @property
    def unloaded_path(self) -> str:
        """The models unloaded through the repository API, for a worker that restarts after it."""
        return os.path.join(self.run_dir, "unloaded-models.json")

    @property
    def lock_path(self) -> str:
        return os.path.join(self.run_dir, "reload.lock")


WorkerMain = Callable[[WorkerSlot], int]


class Supervisor:
    def __init__(self, count: int, worker_main: WorkerMain) -> None:
        self._count = count
        self._worker_main = worker_main
        self._run_dir = tempfile.mkdtemp(prefix="pyserving-workers-")
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (index, start time)
        self._stopping = False
        self._code = 0

    def run(self) -> int:
        """Fork the workers, wait for them all to end; the first non-zero worker code, else 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for index in range(self._count):
                self._spawn(index)
            log.info("Started %d serving workers sharing the ports", self._count)
            while self._children:
                self._reap(*os.waitpid(-1, 0))
        finally:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        return self._code

    def _on_signal(self, signum: int, _frame) -> None:
        if not self._stopping:
            log.info("Received %s: stopping %d workers", signal.Signals(signum).name, len(self._children))
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        self._stopping = True
        for pid in list(self._children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self, pid: int, status: int) -> None:
        if pid not in self._children:
            return
        index, started = self._children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
        if self._stopping:
            self._code = self._code or code
            return
        uptime = time.monotonic() - started
        if uptime >= RESTART_AFTER_SECONDS:
            log.error("Worker %d (pid %d) exited with code %d after %.0f s of serving: starting it again",
                      index, pid, code, uptime)
            self._spawn(index)
            return
        log.error("Worker %d (pid %d) exited with code %d while starting: stopping the server",
                  index, pid, code)
        self._code = code or 1
        self._stop(signal.SIGTERM)

    def _spawn(self, index: int) -> None:
        slot = WorkerSlot(index, self._count, self._run_dir)
        pid = os.fork()
        if pid:
            self._children[pid] = (index, time.monotonic())
            return
        code = 1
        try:
            _become_worker(slot)
            code = self._worker_main(slot)
        except BaseException:  # nothing may unwind into the supervisor's code in the child
            traceback.print_exc()
        finally:
            os._exit(code)


def _become_worker(slot: WorkerSlot) -> None:
    """In the forked child: the supervisor's handlers off, its own process group (a terminal's
    Ctrl-C reaches the supervisor once, which relays it), ended if the supervisor dies."""
    supervisor = os.getppid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned worker outlives a SIGKILLed supervisor
    if os.getppid() != supervisor:  # the supervisor died before prctl took effect
        os._exit(1)
    from pyserving.observability import logs

    logs.set_worker(slot.index)


def worker_count(requested: int) -> int:
    return requested or os.cpu_count() or 1
