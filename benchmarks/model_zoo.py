"""The model zoo (tests/support/zoo.py): each family's load time and one call's latency.

    python benchmarks/model_zoo.py [--calls 200] [--json FILE]

Exports every family with random weights, serves them all from one server, and measures, one
call at a time (latency, not throughput): the p50 of TF Serving's REST predict and gRPC Predict
for the family's request, next to the same signature called in-process (``tf.saved_model.load``)
on the same inputs; and the load time the server logs for each version. The server's idle RSS
is reported too: with every op library it registers (TF Text's among them).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc  # noqa: E402
import requests  # noqa: E402
import tensorflow as tf  # noqa: E402
from _common import free_port, percentile, stop, time_calls, wait_ready  # noqa: E402
from support import zoo  # noqa: E402
from support.server import model_config  # noqa: E402
from support.zoo_checks import _json_value  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(root: Path, calls: int) -> dict:
    for name, family in zoo.FAMILIES.items():
        family.export(str(root / name / "1"))
    (root / "models.config").write_text(model_config({name: str(root / name) for name in zoo.FAMILIES}))
    port, rest = free_port(), free_port()
    log = root / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}",
             f"--rest_api_port={rest}", f"--model_config_file={root / 'models.config'}"],
            stdout=out, stderr=subprocess.STDOUT, env={"PYSERVING_LOG_LEVEL": "INFO", "PATH": "/usr/bin:/bin"})
    results = {}
    try:
        wait_ready(f"http://127.0.0.1:{rest}/v1/models/resnet50/ready", server)
        loads = dict(re.findall(r"Loaded \S+/(\w+)/1 with the \S+ runtime in ([\d.]+) s", log.read_text()))
        results["server_rss_mib"] = round(_rss_mib(server.pid))
        session = requests.Session()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for name, family in zoo.FAMILIES.items():
                n = calls // 4 if family.heavy else calls
                inputs = family.inputs()
                signature = tf.saved_model.load(str(root / name / "1")).signatures["serving_default"]
                tensors = {k: tf.constant(v) for k, v in inputs.items()}
                body = json.dumps({"inputs": {k: _json_value(v) for k, v in inputs.items()}})
                request = predict_pb2.PredictRequest()
                request.model_spec.name = name
                for key, value in inputs.items():
                    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
                url = f"http://127.0.0.1:{rest}/v1/models/{name}:predict"
                results[name] = {
                    "load_s": float(loads.get(name, "nan")),
                    "in_process_p50_ms": 1e3 * percentile(time_calls(lambda: signature(**tensors), n, 10), 0.5),
                    "rest_p50_ms": 1e3 * percentile(time_calls(
                        lambda: session.post(url, data=body).raise_for_status(), n, 10), 0.5),
                    "grpc_p50_ms": 1e3 * percentile(time_calls(lambda: stub.Predict(request, 60), n, 10), 0.5)}
                print(name, json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
    finally:
        stop(server)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp), args.calls)
    print(f"server RSS with every zoo model loaded: {results['server_rss_mib']} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
