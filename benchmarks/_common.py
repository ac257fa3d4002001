"""Helpers shared by the benchmark scripts: free ports, readiness, shutdown, timing, percentiles,
and the C load generators (h2load for gRPC, wrk for REST) with their output parsed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile of the samples (nearest rank), NaN when there are none."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def time_calls(call: Callable[[], object], n: int, warmup: int) -> list[float]:
    """Seconds each of ``n`` sequential calls took, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def each_configuration(configurations, measure: Callable, report: Callable, json_path: str | None) -> dict:
    """Measure every (label, server flags) in one run, print each as it comes, save them all."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in configurations:
            results[label] = measure(flags, Path(tmp))
            report(label, results[label])
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll a readiness URL until it answers 200 (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a server started with ``start_new_session=True``, then SIGKILL its whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers it forked and left behind, if any
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@dataclass
class Load:
    """One load-generator run: successful responses, failed ones, seconds measured, latency (ms)."""
    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if not match:
        raise RuntimeError(f"load generator output lacks {pattern!r}:\n{text}")
    return match.group(1)


def h2load(url: str, body_file: Path, connections: int, seconds: float, log_file: Path,
           response_bytes: int) -> Load:
    """gRPC unary calls with h2load, one in flight per connection.

    gRPC failures come back as HTTP 200 with a grpc-status trailer and no DATA, which
    h2load counts as succeeded: a call is OK only if its ``response_bytes`` of DATA arrived
    (every OK answer to the same request has the same size), so OK = DATA bytes / size.
    """
    cmd = ["h2load", "-c", str(connections), "-m", "1", "-D", f"{seconds:g}", "-d", str(body_file),
           "-H", "content-type:application/grpc", "-H", "te:trailers", f"--log-file={log_file}", url]
    log_file.unlink(missing_ok=True)  # h2load overwrites an existing log without truncating it
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1) if finished else 0.0
    done = int(_field(r"requests: .*?(\d+) done", out))
    http_ok = int(_field(r"status codes: (\d+) 2xx", out))
    ok = min(http_ok, int(_field(r"\((\d+)\) data", out)) // response_bytes)
    times = [int(cols[2]) / 1000 for cols in (line.split("\t") for line in log_file.read_text().splitlines())
             if len(cols) == 3 and cols[1].startswith("2")]
    return Load(ok, done - ok, elapsed, percentile(times, 0.5), percentile(times, 0.99))


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "%s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, body: bytes, content_type: str, connections: int, seconds: float, script: Path) -> Load:
    """HTTP/1.1 POSTs with wrk (keep-alive, one in flight per connection); errors are
    non-2xx/3xx answers, socket errors and timeouts; percentiles from wrk's own histogram."""
    script.write_text(WRK_SCRIPT % (body.decode(), content_type))
    cmd = ["wrk", "-c", str(connections), "-t", str(min(connections, 2)), "-d", f"{seconds:g}s",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    done, micros, connect, read, write, status, timeout, p50, p99 = map(
        float, _field(r"RESULT ([\d. ]+)", out).split())
    ok = int(done - status)
    return Load(ok, int(status + connect + read + write + timeout), micros / 1e6, p50 / 1000, p99 / 1000)
