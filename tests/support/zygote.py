"""Server processes forked from one that has already imported TensorFlow: the suite's start-up cost.

A server's start is ~4.5 s of CPU, nearly all of it TensorFlow's import, and the suite starts well
over a hundred of them on two cores. Each test process keeps one zygote: a Python process that ran
what `tensorflow_model_server` runs before its flags matter (TF's log level, TensorFlow's import,
pyserving's server modules), created no thread, session, channel or server, and forks on request.
The child sets the environment, working folder, argv and stdout/stderr the test asked for and runs
the real entry point (`pyserving.cli`), so it is the same server the console script starts, forked
the way `--num_workers` forks its workers. Starts that differ from the zygote in what is read before
or during those imports exec a new process as before: an environment variable the interpreter,
TensorFlow, gRPC or the C libraries read at start (TF_*, PYTHON*, GRPC_*, ...; pyserving itself reads
its environment only when it runs), or a flag that decides what is set before TensorFlow's import (a
budget of loaded models turns oneDNN off). So does every start with PYSERVING_TESTS_EXEC=1.

The zygote reaps its children and reports each exit status back, so a test holds a Popen-like
object (`ForkedProcess`). It ends, killing its children, when the test process goes away.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

# Read by the interpreter, TensorFlow, gRPC, the C and math libraries, or tempfile (TMPDIR, cached by
# the zygote's first temporary file) before a child could set them.
READ_AT_START = ("TF_", "TENSORFLOW", "PYTHON", "LD_", "MALLOC", "GLIBC", "OMP_", "KMP_", "MKL", "ONEDNN",
                 "DNNL", "GRPC_", "CUDA", "XLA_", "TEMP", "TMP", "LANG", "LC_")
# Flags whose effect is decided before TensorFlow's import (runtime/quiet.py's claim_allocator).
BEFORE_IMPORT_FLAGS = ("--max_loaded_models", "--max_loaded_model_memory_mb")
ENTRY_POINTS = {"tensorflow_model_server": "model_server_main", "pyserving": "main"}


def _send(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive(sock: socket.socket) -> dict | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    body = _read_exactly(sock, struct.unpack("!I", header)[0])
    return None if body is None else json.loads(body)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---- the test process's side -----------------------------------------------------------------


class ForkedProcess:
    """What a test uses of subprocess.Popen, for a server the zygote forked."""

    def __init__(self, zygote: "Zygote", pid: int) -> None:
        self._zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.wait_exit(self.pid, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid the zygote has reaped (it may be reused)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen([sys.executable, __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                      env=self.env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL)
        theirs.close()
        self._sock = ours
        self._lock = threading.Lock()  # one start at a time: its answer is the next "pid" message
        self._exits: dict[int, int] = {}
        self._answers: list[dict] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def forkable(self, env: dict[str, str], args: Sequence[str]) -> bool:
        return (all(env.get(k) == self.env.get(k) for k in env.keys() | self.env.keys() if k.startswith(READ_AT_START))
                and not any(a.startswith(BEFORE_IMPORT_FLAGS) for a in args))

    def start(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        request = {"argv": list(args), "env": env, "log": str(log_path), "cwd": os.getcwd()}
        with self._lock, self._changed:
            _send(self._sock, request)
            if not self._changed.wait_for(lambda: self._answers, timeout=60):
                raise AssertionError("the test zygote did not answer a start in 60 s")
            answer = self._answers.pop(0)
        if "pid" not in answer:
            raise AssertionError(f"the test zygote could not fork: {answer}")
        return ForkedProcess(self, answer["pid"])

    def exit_code(self, pid: int) -> int | None:
        with self._changed:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float | None) -> int:
        with self._changed:
            if not self._changed.wait_for(lambda: pid in self._exits, timeout=timeout):
                raise subprocess.TimeoutExpired(f"pid {pid}", timeout)
            return self._exits[pid]

    def _read(self) -> None:
        while (message := self._next()) is not None:
            with self._changed:
                if "exit" in message:
                    self._exits[message["exit"]] = message["code"]
                else:  # a new child: an exit kept for an earlier child with its pid is not its own
                    self._exits.pop(message.get("pid"), None)
                    self._answers.append(message)
                self._changed.notify_all()

    def _next(self) -> dict | None:
        try:
            return _receive(self._sock)
        except OSError:
            return None

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)  # the zygote kills its children and exits on EOF
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


_zygote: list[Zygote] = []  # this test process's one zygote, made at its first start
# The zygote's environment: the test process's own as it began (conftest's settings included, no
# test's changes yet), so a first start that sets TF_* or PYTHON* can't leave every later one exec'd.
_START_ENV = dict(os.environ)


def start(args: Sequence[str], env: dict[str, str], log_path: Path) -> ForkedProcess | None:
    """A forked server, or None where the start must exec (see the module's docstring)."""
    if os.environ.get("PYSERVING_TESTS_EXEC") == "1" or Path(args[0]).name not in ENTRY_POINTS:
        return None
    if not _zygote:
        _zygote.append(Zygote(_START_ENV))
        atexit.register(_zygote[0].close)
    if not _zygote[0].forkable(env, args):
        return None
    return _zygote[0].start(args, env, log_path)


# ---- the zygote's side -------------------------------------------------------------------------


def _prepare() -> None:
    """What the server does before its flags matter, and the imports that cost the seconds."""
    from pyserving.runtime.quiet import claim_log_level, import_tensorflow

    # No device probe: each child probes, as each --num_workers worker does (CUDA can't be forked).
    import_tensorflow(claim_log_level(), probe_devices=False)
    import pyserving.cli  # noqa: F401
    import pyserving.server.process  # noqa: F401
    import pyserving.server.server  # noqa: F401


def _serve_forks(sock: socket.socket) -> dict:
    """Fork a child per request and report each child's exit; returns only in a child, its request."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_read, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is wake_read:
                    os.read(wake_read, 4096)
                    _reap(sock, children)
                    continue
                request = _receive(sock)
                if request is None:  # the test process is gone
                    for pid in children:
                        os.kill(pid, signal.SIGKILL)
                    sys.exit(0)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (wake_read, wake_write):
                        os.close(fd)
                    sock.close()
                    return request
                children.add(pid)
                _send(sock, {"pid": pid})


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _become(request: dict) -> int:
    """In the child: the process a test asked for, then the server's own entry point."""
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = request["argv"]
    from pyserving import cli

    return getattr(cli, ENTRY_POINTS[Path(sys.argv[0]).name])(sys.argv[1:])


if __name__ == "__main__":
    # The path an exec'd console script has (its own folder first), not this file's folder.
    sys.path[0] = str(Path(sys.executable).parent)
    channel = socket.socket(fileno=int(sys.argv[1]))
    _prepare()
    sys.exit(_become(_serve_forks(channel)))
