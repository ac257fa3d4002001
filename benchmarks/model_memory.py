"""Memory that goes back: RSS across load/unload cycles of a model of ~100 MB of variables.

    python benchmarks/model_memory.py [--megabytes 100] [--cycles 1000] [-- server flags...]

Exports a SavedModel whose variables are MEGABYTES of random float32 weights, configures it under
two names (A, B) and starts the server with --max_loaded_models=1; requests then alternate A, B,
A, ... over gRPC, so each request loads one copy and evicts the other: one load/unload cycle per
request, through the same path as production traffic. Reports the server's RSS along the way
(growth from cycle 10 to the last; the goal: flat within 10%), the model's estimated memory
(:pyserving:model_memory_bytes) against what its first load added to RSS, and the cycle times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import requests
import tensorflow as tf
from _common import percentile, stop  # benchmarks/ is on sys.path
from model_budget import _rss_mib, _start, _timed
from tensorflow_serving.apis import prediction_service_pb2_grpc

HERE = Path(__file__).resolve().parent


def export_weights(path: str, megabytes: int) -> None:
    """y = x + w[0], where w holds ``megabytes`` of random weights (all restored at each load)."""
    module = tf.Module()
    module.w = tf.Variable(np.random.default_rng(0).random(megabytes << 18, dtype=np.float32))
    module.serve = tf.function(lambda x: {"y": x + module.w[0]},
                               input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def _estimate(rest_port: int, name: str) -> float:
    for line in requests.get(f"http://127.0.0.1:{rest_port}/metrics", timeout=30).text.splitlines():
        if line.startswith(f':pyserving:model_memory_bytes{{model_name="{name}"}}'):
            return float(line.split()[-1]) / 2**20
    return float("nan")


def _settled_rss(pid: int) -> dict[str, float]:
    """RSS once the last eviction's unload has surely finished, split as the kernel counts it."""
    time.sleep(3)  # a measurement pause, not synchronisation: nothing waits on it
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Rss", "Anonymous", "Private_Clean", "Shared_Clean"):
                fields[key.lower() + "_mib"] = int(value.split()[0]) / 1024
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--json", default=str(HERE / "results" / "model_memory.json"))
    parser.add_argument("flags", nargs="*", help="more server flags (after --)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    export_weights(str(work / "weights" / "1"), args.megabytes)
    for name in "AB":
        (work / name).symlink_to(work / "weights", target_is_directory=True)
    config = work / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{work / n}" model_platform: "tensorflow" }}\n' for n in "AB") + "}\n")
    (work / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }')
    server, port, rest = _start(config, "--max_loaded_models=1", f"--monitoring_config_file={work / 'monitoring.config'}",
                                *args.flags)
    rss, seconds = [], []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            idle = _rss_mib(server.pid)
            _timed(stub, ["A"])
            first_load = _rss_mib(server.pid) - idle
            estimate = _estimate(rest, "A")
            for cycle in range(args.cycles):
                seconds.append(_timed(stub, ["B" if cycle % 2 == 0 else "A"])[0] / 1000)
                rss.append(_rss_mib(server.pid))
                if cycle % 100 == 99:
                    print(f"cycle {cycle + 1}: RSS {rss[-1]:.0f} MiB", file=sys.stderr)
            settled = _settled_rss(server.pid)
    finally:
        stop(server)
    base = rss[min(9, len(rss) - 1)]
    results = {
        "megabytes": args.megabytes, "cycles": args.cycles, "server_flags": args.flags,
        "rss_mib": {"idle": idle, "after_cycle_10": base, "last": rss[-1], "max": max(rss),
                    "every_100": rss[99::100]},
        "settled": settled,
        "growth_percent_from_cycle_10": 100 * (rss[-1] - base) / base,
        "first_load_added_mib": first_load, "estimated_mib": estimate,
        "cycle_seconds": {"p50": percentile(seconds, 0.5), "p99": percentile(seconds, 0.99)},
    }
    print(json.dumps(results, indent=1))
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
