"""Start the real tensorflow_model_server (pyserving) as a process on loopback."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import grpc
import requests

from support import zygote

BIN_DIR = Path(sys.executable).parent
START_TIMEOUT = 120.0


# Ports come from a block of their own per pytest-xdist worker, below Linux's ephemeral range
# (32768+, where the kernel picks clients' ports) and above Ray's worker ports (10002-19999), so
# parallel workers, outgoing connections and a Ray cluster never race for one.
PORT_BLOCK = 2000
FIRST_PORT = 20000


def _port_numbers():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = FIRST_PORT + (index % 6) * PORT_BLOCK
    while True:
        yield from range(start, start + PORT_BLOCK)


_ports = _port_numbers()


def free_port() -> int:
    """A loopback port nothing listens on, from this test process's own block."""
    for _ in range(PORT_BLOCK):
        port = next(_ports)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in this worker's block of {PORT_BLOCK}")


def listeners(port: int) -> list[tuple[str, str]]:
    """The TCP sockets listening on ``port`` here, as (address, socket inode), from /proc/net/tcp
    and tcp6 (gRPC listens on IPv6 sockets, an IPv4 address as ::ffff:a.b.c.d)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            host, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # LISTEN
                continue
            raw = b"".join(struct.pack("<I", int(host[i:i + 8], 16)) for i in range(0, len(host), 8))
            address = ipaddress.ip_address(raw)
            found.append((str(getattr(address, "ipv4_mapped", None) or address), fields[9]))
    return found


def system_tool(name: str) -> str:
    """A program from the system's packages that a test runs: `make test` installs each one
    (tools/ensure-debian-packages.sh); run alone, a test says what is missing instead of erroring."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make test` installs it (tools/ensure-debian-packages.sh)"
    return path


def port_open(port: int) -> bool:
    """Whether something accepts connections on this loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ServerProcess:
    def __init__(self, *flags: str, log_path: Path, rest: bool = True,
                 binary: str = "tensorflow_model_server", env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        self.rest_port = free_port() if rest else 0
        self.log_path = log_path
        args = [str(BIN_DIR / binary)]
        if binary == "pyserving":
            args.append("serve")
        args += [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", *flags]
        self._log = open(log_path, "wb")
        environ = {**os.environ, "PYSERVING_LOG_LEVEL": "INFO", **(env or {})}
        self.proc = zygote.start(args, environ, log_path) or subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=environ)
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        return port_open(self.grpc_port) and (not self.rest_port or port_open(self.rest_port))

    def wait_ready(self) -> "ServerProcess":
        wait_for(self._ready, START_TIMEOUT, "the server to open its ports", interval=0.1)
        return self

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.rest_url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.rest_url + path, timeout=30, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def model_config(models: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """A text ModelServerConfig for name -> base_path (extra: name -> more config text)."""
    parts = []
    for name, path in models.items():
        more = (extra or {}).get(name, "")
        parts.append(f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" {more} }}')
    return "model_config_list {\n  " + "\n  ".join(parts) + "\n}\n"


def serve_models(root: Path, exporters: dict[str, Callable[[str], object]], *flags: str,
                 extra: dict[str, str] | None = None) -> ServerProcess:
    """Export each model as version 1 under root/NAME, list them in a config file, start, wait."""
    for name, export in exporters.items():
        export(str(root / name / "1"))
    config = root / "models.config"
    config.write_text(model_config({name: str(root / name) for name in exporters}, extra))
    return ServerProcess(f"--model_config_file={config}", *flags, log_path=root / "server.log").wait_ready()


TFS_TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "tfs-testdata"
HALF_PLUS_TWO = TFS_TESTDATA / "saved_model_half_plus_two_cpu"


def serve_half_plus_two(log_dir: Path, *flags: str) -> ServerProcess:
    """TF Serving's half_plus_two, read in place from ../shared/tfs-testdata, as model "hpt"."""
    return ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}", *flags,
                         log_path=log_dir / "server.log").wait_ready()


def arrive(base: Path, version: int, write: Callable[[str], object]) -> Path:
    """Write a version beside the base path, then rename it in, so a running server sees it whole.
    (A model that can't load at start stops the server, as in TF Serving: tests that need a broken
    version serving beside others start without it, then let it arrive.)"""
    staging = base.parent / f".staging-{base.name}-{version}"
    write(str(staging))
    base.mkdir(parents=True, exist_ok=True)
    staging.rename(base / str(version))
    return base / str(version)


def wait_state(server: ServerProcess, model: str, version: int, state: str, timeout: float = 60) -> dict:
    """Poll the model's status until ``version`` reaches ``state``; its status entry."""
    found: dict = {}

    def reached() -> bool:
        r = server.get(f"/v1/models/{model}")
        entries = r.json().get("model_version_status", []) if r.status_code == 200 else []
        found.update(next((e for e in entries if e["version"] == str(version)), {}))
        return found.get("state") == state

    wait_for(reached, timeout, f"version {version} of {model} to be {state}")
    return found
