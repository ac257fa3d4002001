"""`pyserving mnist demo`: the whole TF Serving tutorial, end to end, on this machine.

Export version 1, start tensorflow_model_server (pyserving), run the client,
export version 2 while requests keep flowing, show the server switching to it
with no failed request, run the client again, stop the server.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .client import format_result, run_client
from .data import MnistData
from .export import export_mnist

READY_TIMEOUT = 120.0
SWITCH_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class _Traffic:
    """Steady Predict calls during the version switch, counting answers by version."""

    target: str
    image: object
    versions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "mnist"
            request.model_spec.signature_name = "predict_images"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(self.image, shape=[1, 784]))
            deadline = time.monotonic() + SWITCH_TIMEOUT
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    self.versions[stub.Predict(request, 10).model_spec.version.value] += 1
                except grpc.RpcError as e:
                    self.failures.append(f"{e.code().name}: {e.details()}")


def _serving_version(rest_url: str) -> dict[int, str]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{rest_url}/v1/models/mnist", timeout=5) as r:
        body = json.load(r)
    return {int(s["version"]): s["state"] for s in body["model_version_status"]}


def run_demo(data: MnistData, workdir: str | None = None, num_tests: int = 1000,
             concurrency: int = 4) -> int:
    root = Path(workdir or tempfile.mkdtemp(prefix="pyserving-demo-"))
    base = root / "models" / "mnist"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    print(f"== 1. Train and export version 1 to {base}/1", flush=True)
    result = export_mnist(str(base), 1, data)
    print(f"   training accuracy {result.test_accuracy:.4f}", flush=True)

    grpc_port, rest_port = _free_port(), _free_port()
    server_bin = Path(sys.executable).parent / "tensorflow_model_server"
    command = [str(server_bin), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
               "--model_name=mnist", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"]
    print(f"== 2. Start the server: {' '.join(command[:1] + command[1:])}", flush=True)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        _wait(lambda: _port_open(rest_port) or server.poll() is not None, READY_TIMEOUT, "the server")
        if server.poll() is not None:
            print(log_path.read_text(), file=sys.stderr)
            return 1
        print(f"   serving versions: {_serving_version(rest_url)}", flush=True)

        print(f"== 3. Run the client: {num_tests} test images, concurrency {concurrency}", flush=True)
        first = run_client(f"127.0.0.1:{grpc_port}", data, num_tests=num_tests, concurrency=concurrency)
        print("   " + format_result(first), flush=True)

        print("== 4. Export version 2 while requests keep flowing", flush=True)
        traffic = _Traffic(f"127.0.0.1:{grpc_port}", data.test_images[0])
        thread = threading.Thread(target=traffic.run, daemon=True)
        thread.start()
        export_mnist(str(base), 2, data, training_iteration=2000, seed=1)
        _wait(lambda: _serving_version(rest_url) == {1: "END", 2: "AVAILABLE"}, SWITCH_TIMEOUT,
              "the server to switch to version 2")
        _wait(lambda: traffic.versions[2] >= 20, SWITCH_TIMEOUT, "answers from version 2")
        traffic.stop.set()
        thread.join()
        print(f"   serving versions: {_serving_version(rest_url)}", flush=True)
        print(f"   during the switch: {sum(traffic.versions.values())} requests answered "
              f"(by version: {dict(sorted(traffic.versions.items()))}), "
              f"{len(traffic.failures)} failed", flush=True)

        print("== 5. Run the client against version 2", flush=True)
        second = run_client(f"127.0.0.1:{grpc_port}", data, num_tests=num_tests, concurrency=concurrency)
        print("   " + format_result(second), flush=True)
    finally:
        print("== 6. Stop the server (SIGTERM)", flush=True)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        code = server.wait(60)
        print(f"   server exited with {code}; its log is {log_path}", flush=True)
    failed = first.num_failures + second.num_failures + len(traffic.failures)
    print(f"Inference error rate: {100 * second.error_rate:.1f}%")
    return 0 if failed == 0 and code == 0 else 1


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
