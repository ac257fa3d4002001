"""What a Python model costs per request over the same SavedModel served directly.

    python benchmarks/python_model.py [--seconds 5] [--rounds 3]

One server (--enable_python_models) serves four models: TF Serving's half_plus_two and the
tutorial's MNIST export as they are, and each again with a pass-through model.py beside the same
SavedModel (``predict`` calls ``saved_model(signature_name, inputs)``: the least Python can add).
h2load sends batch-1 gRPC Predicts: at 1 connection the p50 latency difference is the overhead of
a call; at 16 connections the throughput ratio is what it costs a busy server. Rounds alternate
the order; medians over rounds are reported, raw figures go to results/python_model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
from _common import free_port, grpc_frame, h2load, stop, wait_ready  # benchmarks/ is on sys.path
from tensorflow_serving.apis import predict_pb2

from pyserving.codecs.tensor_proto import from_numpy
from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
PASS_THROUGH = '''class Model:
    def __init__(self, path, saved_model=None):
        self._saved_model = saved_model

    def predict(self, inputs, signature_name):
        return self._saved_model(signature_name, inputs)
'''


def _request(model: str) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if model.startswith("mnist"):
        request.model_spec.signature_name = "predict_images"
        request.inputs["images"].CopyFrom(from_numpy(np.full((1, 784), 0.5, np.float32)))
    else:
        request.inputs["x"].CopyFrom(from_numpy(np.array([[1.0]], np.float32)))
    return request.SerializeToString()


def _models(work: Path) -> dict[str, Path]:
    hpt = SHARED / "tfs-testdata" / "saved_model_half_plus_two_cpu"
    export_mnist(str(work / "mnist"), 1, load_mnist(str(SHARED / "mnist")), training_iteration=200)
    wrapped = {"half_plus_two_py": hpt / "00000123", "mnist_py": work / "mnist" / "1"}
    for name, version in wrapped.items():  # the same SavedModel, with a model.py beside it
        shutil.copytree(version, work / name / "1")
        (work / name / "1" / "model.py").write_text(PASS_THROUGH)
    return {"half_plus_two": hpt, "half_plus_two_py": work / "half_plus_two_py", "mnist": work / "mnist",
            "mnist_py": work / "mnist_py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "results" / "python_model.json"))
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is needed: apt-get install nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="python-model-bench-"))
    models = _models(work)
    config = work / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }}\n' for n, p in models.items()) + "}\n")
    port, rest = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}", f"--rest_api_port={rest}",
         f"--model_config_file={config}", "--enable_python_models"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING"))
    url = f"http://127.0.0.1:{port}/tensorflow.serving.PredictionService/Predict"
    raw: list[dict] = []
    try:
        for name in models:
            wait_ready(f"http://127.0.0.1:{rest}/v1/models/{name}/ready", server)
        bodies, sizes = {}, {}
        for name in models:
            bodies[name] = work / f"{name}.bin"
            bodies[name].write_bytes(grpc_frame(_request(name)))
            sizes[name] = _response_size(port, name)
            h2load(url, bodies[name], 4, 2, work / "warm.log", sizes[name])  # warm up, learn costs
        for round_ in range(args.rounds):
            order = list(models) if round_ % 2 == 0 else list(models)[::-1]
            for connections in (1, 16):
                for name in order:
                    load = h2load(url, bodies[name], connections, args.seconds, work / "h2load.log", sizes[name])
                    raw.append({"round": round_ + 1, "model": name, "connections": connections,
                                "rps": round(load.rps, 1), "p50_ms": round(load.p50_ms, 4),
                                "p99_ms": round(load.p99_ms, 4), "errors": load.errors})
                    print(f"round {round_ + 1} {name:17s} c={connections:<2d} {load.rps:8.0f} req/s "
                          f"p50 {load.p50_ms:.3f} ms p99 {load.p99_ms:.3f} ms errors {load.errors}", flush=True)
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)
    report = _report(raw)
    print("\n" + report)
    Path(args.json).write_text(json.dumps({"raw": raw, "report": report}, indent=1) + "\n")


def _response_size(port: int, model: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(_request(model), timeout=30)
    return len(grpc_frame(answer))


def _median(raw: list[dict], model: str, connections: int, key: str) -> float:
    return statistics.median(r[key] for r in raw if r["model"] == model and r["connections"] == connections)


def _report(raw: list[dict]) -> str:
    lines = []
    for base in ("half_plus_two", "mnist"):
        wrapped = base + "_py"
        direct_p50, py_p50 = _median(raw, base, 1, "p50_ms"), _median(raw, wrapped, 1, "p50_ms")
        direct_rps, py_rps = _median(raw, base, 16, "rps"), _median(raw, wrapped, 16, "rps")
        lines.append(f"{base}: 1 connection p50 {direct_p50 * 1000:.0f} us direct, {py_p50 * 1000:.0f} us through "
                     f"model.py (+{(py_p50 - direct_p50) * 1000:.0f} us a call); 16 connections {direct_rps:.0f} vs "
                     f"{py_rps:.0f} req/s ({py_rps / direct_rps:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
