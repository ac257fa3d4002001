"""Ray Serve (pyserving.ray_serve, N replicas behind Ray's proxies) next to the plain pyserving server.

    .venv/bin/python benchmarks/ray_serve.py [--seconds 10] [--connections 8] [--replicas 2]
        [--plain-workers 1,2] [--python-proxies] [--rounds 1] [--out results/ray_serve.json]

The same model (TF Serving's half_plus_two, ../shared/tfs-testdata) and the same load on each
target: gRPC Predict of [1.0, 2.0, 5.0] and REST :predict of {"instances": [1.0, 2.0, 5.0]},
``--connections`` clients with one request in flight each, a short warmup then ``--seconds`` timed.
Targets: tensorflow_model_server with each ``--plain-workers`` count, then a local Ray cluster
(ray.init on this machine, every core) serving ``--replicas`` replicas: on Ray Serve's fast path
(pyserving.ray_serve's default: HAProxy in front, direct ingress) and, with ``--python-proxies``,
a fresh cluster with Ray's Python proxies. Load generators: h2load for
gRPC and wrk for REST when installed, else a Python client with one thread per connection (slower
than the server it measures: its figures say so). Prints a table; writes JSON only with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import grpc
import requests
from _common import (  # benchmarks/ on sys.path
    Load,
    free_port,
    grpc_frame,
    h2load,
    percentile,
    stop_group,
    wait_ready,
    wrk,
)

MODEL = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
BIN = Path(sys.executable).parent / "tensorflow_model_server"
NAME = "hpt"
BODY = b'{"instances": [1.0, 2.0, 5.0]}'
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}


def predict_request():
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from pyserving.codecs.tensor_proto import from_numpy

    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.inputs["x"].CopyFrom(from_numpy(np.array([1.0, 2.0, 5.0], dtype=np.float32)))
    return request


def grpc_call(target: str) -> Callable[[], None]:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
    request = predict_request()

    def call() -> None:
        stub.Predict(request, timeout=30)
    return call


def rest_call(url: str) -> Callable[[], None]:
    session = requests.Session()

    def call() -> None:
        response = session.post(url, data=BODY, headers={"Content-Type": "application/json"}, timeout=30)
        if response.status_code != 200 or response.json() != EXPECTED:
            raise RuntimeError(f"REST {response.status_code}: {response.text[:200]}")
    return call


def python_load(make_call: Callable[[], Callable[[], None]], connections: int, seconds: float) -> Load:
    """One thread per connection, each calling back to back until the time is up."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    calls = [make_call() for _ in range(connections)]
    start = time.perf_counter()
    deadline = start + seconds

    def run(i: int) -> None:
        while (begin := time.perf_counter()) < deadline:
            try:
                calls[i]()
            except Exception:  # noqa: BLE001 -- counted, not raised
                errors[i] += 1
                continue
            latencies[i].append((time.perf_counter() - begin) * 1000)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    merged = [ms for per_thread in latencies for ms in per_thread]
    return Load(len(merged), sum(errors), elapsed, percentile(merged, 0.5), percentile(merged, 0.99))


def measure(grpc_port: int, http_port: int, args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """gRPC then REST on one target: a warmup, then the timed run."""
    target, url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/v1/models/{NAME}:predict"
    request = predict_request()
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    rest_call(url)()  # one correct answer each before any load
    (work / "body").write_bytes(grpc_frame(request.SerializeToString()))
    size = len(grpc_frame(response.SerializeToString()))
    grpc_url = f"http://{target}/tensorflow.serving.PredictionService/Predict"
    loads: dict[str, tuple[str, Callable[[float], Load], Callable[[], Callable[[], None]]]] = {
        "grpc": ("h2load", lambda s: h2load(grpc_url, work / "body", args.connections, s, work / "h2load.log", size),
                 lambda: grpc_call(target)),
        "rest": ("wrk", lambda s: wrk(url, BODY, "application/json", args.connections, s, work / "wrk.lua"),
                 lambda: rest_call(url)),
    }
    results = {}
    for protocol, (tool, generator, call) in loads.items():
        if shutil.which(tool):
            run = generator
        else:  # the Python fallback: one thread a connection
            tool, run = "python threads", (lambda s, call=call: python_load(call, args.connections, s))
        run(args.warmup)
        results[protocol] = {"tool": tool, **_figures(run(args.seconds))}
    return results


def _figures(load: Load) -> dict:
    return {"rps": round(load.rps, 1), "ok": load.ok, "errors": load.errors,
            "p50_ms": round(load.p50_ms, 2), "p99_ms": round(load.p99_ms, 2)}


def plain(workers: int, args: argparse.Namespace, work: Path) -> dict[str, dict]:
    grpc_port, http_port = free_port(), free_port()
    with open(work / f"plain-{workers}.log", "wb") as log:
        proc = subprocess.Popen([str(BIN), f"--port={grpc_port}", f"--rest_api_port={http_port}",
                                 f"--model_name={NAME}", f"--model_base_path={MODEL}", f"--num_workers={workers}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/v1/models/{NAME}/ready", proc)
        return measure(grpc_port, http_port, args, work)
    finally:
        stop_group(proc)


def on_ray(args: argparse.Namespace, work: Path, fast: bool) -> dict[str, dict]:
    import ray
    from ray import serve

    from pyserving import ray_serve

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's Unix sockets live there
    grpc_port, http_port = free_port(), free_port()
    env, mode = ray_serve.fast_path(fast, (grpc_port, http_port))
    if env:  # only Ray's HAProxy in front: a stopping replica needn't wait 30 s for an outer balancer
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    print(mode, flush=True)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=temp_dir, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    try:
        ray_serve.start_proxies(grpc_port, http_port, host="127.0.0.1", env=env)
        replicas = {"num_replicas": args.replicas,
                    "ray_actor_options": {"num_cpus": (os.cpu_count() or 1) / args.replicas}}
        serve.run(ray_serve.build_app({"model_name": NAME, "model_base_path": str(MODEL), **replicas}))
        return measure(grpc_port, http_port, args, work)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="whole seconds (h2load -D)")
    parser.add_argument("--warmup", type=int, default=2, help="whole seconds")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--plain-workers", default="1,2", help="comma-separated --num_workers counts")
    parser.add_argument("--python-proxies", action="store_true",
                        help="also Ray Serve without its fast path (Ray's Python proxies), on a fresh cluster")
    parser.add_argument("--rounds", type=int, default=1, help="every target again, in the same order")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    plain_workers = [int(w) for w in args.plain_workers.split(",") if w]
    rounds: list[dict[str, dict[str, dict]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(args.rounds):
            rows: dict[str, dict[str, dict]] = {}
            for workers in plain_workers:
                rows[f"plain --num_workers={workers}"] = plain(workers, args, work)
            rows[f"ray serve, {args.replicas} replicas"] = on_ray(args, work, fast=True)
            if args.python_proxies:
                rows[f"ray, {args.replicas}, python proxies"] = on_ray(args, work, fast=False)
            rounds.append(rows)
    print(f"\nhalf_plus_two, {args.connections} connections, {args.seconds:g} s each, {os.cpu_count()} cores")
    print(f"{'round':5} {'target':30} {'protocol':8} {'tool':14} {'req/s':>9} {'/plain':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6}")
    for number, rows in enumerate(rounds, 1):
        base = rows[f"plain --num_workers={plain_workers[-1]}"]  # the ratios' denominator
        for target, protocols in rows.items():
            for protocol, f in protocols.items():
                ratio = f["rps"] / base[protocol]["rps"] if base[protocol]["rps"] else 0.0
                print(f"{number:5d} {target:30} {protocol:8} {f['tool']:14} {f['rps']:9.1f} {ratio:6.2f} "
                      f"{f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {f['errors']:6d}")
    if args.out:
        args.out.write_text(json.dumps({"seconds": args.seconds, "connections": args.connections,
                                        "cores": os.cpu_count(), "rounds": rounds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
