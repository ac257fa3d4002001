"""Soak: versions swapped every couple of seconds under steady gRPC and REST traffic.

Usage: python benchmarks/soak_swaps.py [--seconds 40] [--swap-every 2.0] [--data-dir DIR]

Prints requests answered and failed, versions seen, and the server's memory at the
start and end. Loopback only; the loops stop by themselves after --seconds.
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
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import requests
import tensorflow as tf
from _common import free_port, stop, wait_ready  # benchmarks/ is on sys.path when run as a script
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--swap-every", type=float, default=2.0)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    args = parser.parse_args()

    data = load_mnist(args.data_dir)
    root = Path(tempfile.mkdtemp(prefix="pyserving-soak-"))
    template = export_mnist(str(root / "template"), 1, data, training_iteration=100).path
    base = root / "mnist"
    base.mkdir()
    shutil.copytree(template, base / "1")
    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--model_name=mnist", f"--model_base_path={base}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING"))
    answered, failures, versions = Counter(), [], Counter()
    lock, done = threading.Lock(), threading.Event()

    def grpc_traffic() -> None:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "mnist", "predict_images"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(data.test_images[0], shape=[1, 784]))
        while not done.is_set():
            try:
                version = stub.Predict(request, 10).model_spec.version.value
                with lock:
                    answered["grpc"] += 1
                    versions[version] += 1
            except grpc.RpcError as e:
                with lock:
                    failures.append(f"gRPC {e.code().name}: {e.details()}")

    def rest_traffic() -> None:
        session = requests.Session()
        body = json.dumps({"signature_name": "predict_images", "instances": [data.test_images[0].tolist()]})
        url = f"http://127.0.0.1:{rest_port}/v1/models/mnist:predict"
        while not done.is_set():
            r = session.post(url, data=body, timeout=10)
            with lock:
                if r.status_code == 200:
                    answered["rest"] += 1
                else:
                    failures.append(f"REST {r.status_code}: {r.text[:200]}")

    try:
        wait_ready(f"http://127.0.0.1:{rest_port}/v1/models/mnist/ready", server)
        start_rss = rss_mib(server.pid)
        threads = [threading.Thread(target=t) for t in (grpc_traffic, grpc_traffic, rest_traffic)]
        for t in threads:
            t.start()
        deadline, version = time.monotonic() + args.seconds, 1
        while time.monotonic() < deadline:
            time.sleep(args.swap_every)
            version += 1
            staging = root / f"staging-{version}"
            shutil.copytree(template, staging)
            os.rename(staging, base / str(version))
            old = base / str(version - 2)
            if old.exists():
                shutil.rmtree(old)
        done.set()
        for t in threads:
            t.join(30)
        end_rss = rss_mib(server.pid)
    finally:
        done.set()
        stop(server)
    print(f"{args.seconds:.0f} s, a new version every {args.swap_every} s ({version - 1} swaps): "
          f"{sum(answered.values())} answered (gRPC {answered['grpc']}, REST {answered['rest']}), "
          f"{len(failures)} failed, {len(versions)} versions answered")
    print(f"server memory: {start_rss:.0f} MiB at start, {end_rss:.0f} MiB at the end")
    for message in failures[:5]:
        print("  failure:", message)


if __name__ == "__main__":
    main()
