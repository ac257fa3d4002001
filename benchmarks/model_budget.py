"""--max_loaded_models: what a cold start costs, and that warm requests cost what they did.

    python benchmarks/model_budget.py [--models 50] [--budget 5] [--requests 300]

Two servers serve N links to TF Serving's half_plus_two: one with --max_loaded_models=B, one
without (every model loaded at start). Measured one request at a time over gRPC (official stub):
- cold: requests cycling through all N models on the budget server, so each one finds its model
  evicted (N > B) and waits for its load;
- warm: requests to one loaded model, on each server.
Reports p50/p99 of each, and the budget server's RSS before and after the cold cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
from _common import free_port, percentile, stop, wait_ready  # benchmarks/ is on sys.path
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.codecs.tensor_proto import from_numpy

HERE = Path(__file__).resolve().parent
HALF_PLUS_TWO = HERE.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"


def _start(config: Path, *flags: str) -> tuple[subprocess.Popen, int, int]:
    port, rest = free_port(), free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}",
                             f"--rest_api_port={rest}", f"--model_config_file={config}", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING"))
    wait_ready(f"http://127.0.0.1:{rest}/readyz", proc)
    return proc, port, rest


def _timed(stub, models: list[str]) -> list[float]:
    samples = []
    for name in models:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs["x"].CopyFrom(from_numpy(np.array([[1.0]], np.float32)))
        start = time.perf_counter()
        stub.Predict(request, 60)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--budget", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", default=str(HERE / "results" / "model_budget.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="budget-bench-"))
    names = [f"m{i:03d}" for i in range(args.models)]
    for name in names:
        (work / name).symlink_to(HALF_PLUS_TWO, target_is_directory=True)
    config = work / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{work / n}" model_platform: "tensorflow" }}\n' for n in names) + "}\n")
    results = {}
    budget, budget_port, _ = _start(config, f"--max_loaded_models={args.budget}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{budget_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            _timed(stub, names[:1] * 20)  # the first load, and the call paths warm
            rss_before = _rss_mib(budget.pid)
            cold = _timed(stub, [names[1 + i % (args.models - 1)] for i in range(args.requests)])
            rss_after = _rss_mib(budget.pid)
            warm_budget = _timed(stub, names[:1] * args.requests)
    finally:
        stop(budget)
    full, full_port, _ = _start(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{full_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            _timed(stub, names[:1] * 20)
            warm_full = _timed(stub, names[:1] * args.requests)
    finally:
        stop(full)
    for label, samples in (("cold start (budget server)", cold), ("warm (budget server)", warm_budget),
                           ("warm (no budget)", warm_full)):
        results[label] = {"p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99)}
        print(f"{label:28s} p50 {results[label]['p50_ms']:.2f} ms  p99 {results[label]['p99_ms']:.2f} ms")
    results["rss_mib"] = {"before_cold_cycles": rss_before, "after": rss_after, "cold_requests": args.requests}
    print(f"budget server RSS: {rss_before:.0f} MiB before {args.requests} cold starts, {rss_after:.0f} MiB after")
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
