"""pyserving next to MLServer, serving the same MNIST SavedModel over REST.

Usage: python benchmarks/compare_mlserver.py --mlserver-venv DIR [--requests 1000] [--data-dir DIR]

MLServer has no TensorFlow runtime, so it serves the SavedModel through the
smallest custom runtime (tf.saved_model.load + the predict_images signature,
NumpyCodec in and out), in its own venv (mlserver and tensorflow-cpu installed),
since its pins differ from ours. Both servers run on loopback, one at a time,
with the same one-image request sent one after another and then 8 at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import requests

from _common import free_port, percentile, stop, time_calls, wait_ready  # benchmarks/ is on sys.path when run as a script
from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist

RUNTIME = '''
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TFSavedModel(MLModel):
    async def load(self) -> bool:
        self._loaded = tf.saved_model.load(self.settings.parameters.uri)
        self._predict = self._loaded.signatures["predict_images"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        scores = self._predict(images=tf.constant(images))["scores"].numpy()
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("scores", scores)])
'''


def measure(name: str, post, n: int) -> None:
    samples = time_calls(post, n, warmup=100)
    p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: post(), range(n)))
    rate = n / (time.perf_counter() - start)
    print(f"{name:10s} REST one image: p50 {p50:.2f} ms  p99 {p99:.2f} ms  |  8 in flight: {rate:,.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mlserver-venv", required=True, help="a venv with mlserver and tensorflow-cpu")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    args = parser.parse_args()

    data = load_mnist(args.data_dir)
    image = data.test_images[0].tolist()
    root = Path(tempfile.mkdtemp(prefix="pyserving-vs-mlserver-"))
    export_mnist(str(root / "mnist"), 1, data, training_iteration=200)
    local = threading_local_session()

    port = free_port()
    pyserving = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={free_port()}",
         f"--rest_api_port={port}", "--model_name=mnist", f"--model_base_path={root / 'mnist'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING"))
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/mnist/ready", pyserving)
        body = json.dumps({"signature_name": "predict_images", "instances": [image]})
        url = f"http://127.0.0.1:{port}/v1/models/mnist:predict"
        measure("pyserving", lambda: local().post(url, data=body, timeout=10).raise_for_status(), args.requests)
    finally:
        stop(pyserving)

    served = root / "mlserver"
    served.mkdir()
    (served / "runtime.py").write_text(RUNTIME)
    (served / "model-settings.json").write_text(json.dumps({
        "name": "mnist", "implementation": "runtime.TFSavedModel",
        "parameters": {"uri": str(root / "mnist" / "1")}}))
    port = free_port()
    (served / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}))
    mlserver = subprocess.Popen([str(Path(args.mlserver_venv) / "bin" / "mlserver"), "start", str(served)],
                                cwd=served, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/models/mnist/ready", mlserver)
        body = json.dumps({"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": image}]})
        url = f"http://127.0.0.1:{port}/v2/models/mnist/infer"
        headers = {"Content-Type": "application/json"}
        measure("MLServer", lambda: local().post(url, data=body, headers=headers, timeout=10).raise_for_status(),
                args.requests)
    finally:
        stop(mlserver)


def threading_local_session():
    """One requests.Session per thread (Sessions are not thread-safe)."""
    import threading

    store = threading.local()

    def session() -> requests.Session:
        if not hasattr(store, "session"):
            store.session = requests.Session()
        return store.session
    return session


if __name__ == "__main__":
    main()
