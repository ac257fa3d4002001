"""pyserving's REST Predict against the bare Python ceilings, on both of its HTTP cores, side by side.

Usage: python benchmarks/rest_ceiling.py [--seconds 5] [--rounds 3] [--concurrency 1,4,16,64]
                                         [--workers 2] [--model DIR] [--out DIR]

Servers, all on TF Serving's half_plus_two (POST /v1/models/half_plus_two:predict, {"instances": [1.0]}),
started once; only the one measured gets traffic, and the order reverses each round:
- pyserving: tensorflow_model_server, one process, the native HTTP core (the default);
- pyserving-aiohttp: the same, --rest_api_http_core=aiohttp;
- bare-aiohttp: benchmarks/bare_reference.py, one process: an aiohttp handler that parses, runs the
  Session callable and answers, nothing else (issue 30's reference);
- bare-httptools: the same answer from an asyncio protocol on httptools and uvloop, one process;
- with --workers N (N > 1): pyserving and pyserving-aiohttp at --num_workers=N too.
Load: wrk (HTTP/1.1 keep-alive, one request in flight per connection) at each concurrency; the table
shows the median [min-max] over rounds and each row's ratio to bare-aiohttp; raw figures go to
benchmarks/results/rest_ceiling.json. wrk shares the machine's cores with the server: compare ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import free_port, stop_group, wait_ready, wrk  # benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent
NAME = "half_plus_two"
BODY = b'{"instances": [1.0]}'
BASE = "bare-aiohttp"


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int


def _spawn(name: str, cmd: list[str], work: Path) -> subprocess.Popen:
    with open(work / f"{name}.log", "wb") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING", TF_CPP_MIN_LOG_LEVEL="2"))


def start_pyserving(name: str, model: str, work: Path, flags: list[str]) -> Server:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={free_port()}",
           f"--rest_api_port={port}", f"--model_name={NAME}", f"--model_base_path={model}", *flags]
    proc = _spawn(name, cmd, work)
    wait_ready(f"http://127.0.0.1:{port}/v1/models/{NAME}/ready", proc)
    return Server(name, proc, port)


def start_bare(name: str, model: str, work: Path, rest_server: str) -> Server:
    port = free_port()
    cmd = [sys.executable, str(HERE / "bare_reference.py"), f"--grpc-port={free_port()}", f"--rest-port={port}",
           f"--model={model}", "--processes=1", f"--rest-server={rest_server}"]
    proc = _spawn(name, cmd, work)
    deadline = time.monotonic() + 180
    while (work / f"{name}.log").read_text(errors="replace").find("ready") < 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start: see {work / f'{name}.log'}")
        time.sleep(0.2)
    return Server(name, proc, port)


def measure(server: Server, connections: int, seconds: float, warmup: float, script: Path) -> dict:
    url = f"http://127.0.0.1:{server.port}/v1/models/{NAME}:predict"
    wrk(url, BODY, "application/json", connections, warmup, script)
    load = wrk(url, BODY, "application/json", connections, seconds, script)
    return {"rps": round(load.rps, 1), "errors": load.errors, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms}


def table(results: dict, names: list[str], concurrency: list[int]) -> str:
    lines = [f"{'server':<22}" + "".join(f"{f'c={c}':>26}" for c in concurrency)]
    for name in names:
        cells = []
        for c in concurrency:
            rates = [r["rps"] for r in results[name][str(c)]]
            base = statistics.median(r["rps"] for r in results[BASE][str(c)])
            median = statistics.median(rates)
            cells.append(f"{median:>8.0f} [{min(rates):.0f}-{max(rates):.0f}] {median / base:4.2f}x")
        lines.append(f"{name:<22}" + "".join(f"{cell:>26}" for cell in cells))
    return "\n".join(lines)


def main() -> None:
    repo = HERE.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(repo.parent / "shared/tfs-testdata/saved_model_half_plus_two_cpu"))
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--workers", type=int, default=2, help="also --num_workers=N rows (1: none)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    starts = [("pyserving", lambda w: start_pyserving("pyserving", args.model, w, [])),
              ("pyserving-aiohttp", lambda w: start_pyserving("pyserving-aiohttp", args.model, w,
                                                              ["--rest_api_http_core=aiohttp"])),
              (BASE, lambda w: start_bare(BASE, args.model, w, "aiohttp")),
              ("bare-httptools", lambda w: start_bare("bare-httptools", args.model, w, "httptools"))]
    if args.workers > 1:
        n = args.workers
        starts += [(f"pyserving x{n}", lambda w: start_pyserving(f"pyserving-x{n}", args.model, w,
                                                                  [f"--num_workers={n}"])),
                   (f"pyserving-aiohttp x{n}", lambda w: start_pyserving(
                       f"pyserving-aiohttp-x{n}", args.model, w, [f"--num_workers={n}", "--rest_api_http_core=aiohttp"]))]
    names = [name for name, _ in starts]
    results: dict = {name: {str(c): [] for c in concurrency} for name in names}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyserving-bench-") as tmp:
        work = Path(tmp)
        servers = {}
        try:
            for name, start in starts:
                servers[name] = start(work)
            for round_ in range(args.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for c in concurrency:
                    for name in order:
                        results[name][str(c)].append(measure(servers[name], c, args.seconds, args.warmup,
                                                             work / "post.lua"))
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            for server in servers.values():
                stop_group(server.proc)
    text = table(results, names, concurrency)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rest_ceiling.json").write_text(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "measured_seconds": round(time.monotonic() - started),
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform()},
        "flags": vars(args), "base": BASE, "table": text.splitlines(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
