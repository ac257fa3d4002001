"""Round-trip latency and throughput of Predict, gRPC and REST, on the MNIST model.

Usage: python benchmarks/predict_latency.py [--requests 2000] [--concurrency 8] [--data-dir DIR] [--batching]

Exports the tutorial's model (pyserving mnist export), starts tensorflow_model_server
(pyserving) on loopback, and prints latency percentiles for one-image requests sent
one at a time, then throughput with several requests in flight. Loopback only;
every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import requests
import tensorflow as tf
from _common import (  # benchmarks/ is on sys.path when run as a script
    free_port,
    percentile,
    stop,
    time_calls,
    wait_ready,
)
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist


def percentiles(samples: list[float]) -> str:
    pick = lambda q: percentile(samples, q) * 1000
    return (f"p50 {pick(0.50):.3f} ms  p90 {pick(0.90):.3f} ms  p99 {pick(0.99):.3f} ms  "
            f"mean {statistics.fmean(samples) * 1000:.3f} ms")


def bench(name: str, call, n: int, concurrency: int) -> None:
    samples = time_calls(call, n, warmup=min(200, n))
    print(f"{name:5s} sequential ({n} requests): {percentiles(samples)}")
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: call(), range(n)))
    elapsed = time.perf_counter() - start
    print(f"{name:5s} concurrency {concurrency}: {n / elapsed:,.0f} requests/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--batching", action="store_true", help="start the server with --enable_batching")
    args = parser.parse_args()

    data = load_mnist(args.data_dir)
    root = Path(tempfile.mkdtemp(prefix="pyserving-bench-"))
    export_mnist(str(root / "mnist"), 1, data, training_iteration=200)
    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--model_name=mnist", f"--model_base_path={root / 'mnist'}"]
        + (["--enable_batching"] if args.batching else []),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING"))
    try:
        wait_ready(f"http://127.0.0.1:{rest_port}/v1/models/mnist/ready", server)
        image = data.test_images[0]
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.model_spec.signature_name = "predict_images"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(image, shape=[1, 784]))
        bench("gRPC", lambda: stub.Predict(request, 10), args.requests, args.concurrency)

        body = json.dumps({"signature_name": "predict_images", "instances": [image.tolist()]})
        session = requests.Session()
        url = f"http://127.0.0.1:{rest_port}/v1/models/mnist:predict"
        rest_call = lambda: session.post(url, data=body, timeout=10).raise_for_status()
        bench("REST", rest_call, args.requests // 2, 1)

        # Big bodies: 100 images per request, where JSON encoding dominates.
        big = json.dumps({"signature_name": "predict_images", "instances": data.test_images[:100].tolist()})
        samples = []
        for _ in range(50):
            start = time.perf_counter()
            session.post(url, data=big, timeout=30).raise_for_status()
            samples.append(time.perf_counter() - start)
        print(f"REST  100 images per request (50 requests): {percentiles(samples)}")
        channel.close()
    finally:
        stop(server)


if __name__ == "__main__":
    main()
