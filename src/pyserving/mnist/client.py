"""The TF Serving tutorial's MNIST client: send test images, measure the error rate.

gRPC mode mirrors the tutorial (PredictionService stubs, asynchronous futures with a
bounded number in flight); REST mode sends the same requests as JSON to /v1/models.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyserving.mnist.data import MnistData

MAX_FAILURE_MESSAGES = 5


@dataclass
class ClientResult:
    num_tests: int
    num_errors: int
    num_failures: int
    error_rate: float
    failure_messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _ResultCounter:
    """Tallies answers and caps in-flight requests; callbacks arrive on gRPC threads."""

    def __init__(self, num_tests: int, concurrency: int) -> None:
        self._num_tests = num_tests
        self._concurrency = max(1, concurrency)
        self._condition = threading.Condition()
        self._active = 0
        self._done = 0
        self.errors = 0
        self.failures = 0
        self.failure_messages: list[str] = []

    def throttle(self) -> None:
        """Block until a request slot is free, then take it."""
        with self._condition:
            while self._active >= self._concurrency:
                self._condition.wait()
            self._active += 1

    def record(self, correct: bool | None, failure: str | None = None) -> None:
        """One answer: correct True/False, or None with a failure message."""
        with self._condition:
            if failure is not None:
                self.failures += 1
                if len(self.failure_messages) < MAX_FAILURE_MESSAGES:
                    self.failure_messages.append(failure)
            elif not correct:
                self.errors += 1
            self._done += 1
            self._active -= 1
            self._condition.notify_all()

    def wait_all(self) -> None:
        with self._condition:
            while self._done < self._num_tests:
                self._condition.wait()


def _test_cases(data: MnistData, num_tests: int) -> list[tuple[np.ndarray, int]]:
    """The first num_tests test images (cycling if more are asked than exist)."""
    count = len(data.test_images)
    return [
        (np.asarray(data.test_images[i % count], dtype=np.float32), int(data.test_labels[i % count]))
        for i in range(num_tests)
    ]


def _scores(tensor: Any) -> np.ndarray:
    """Scores as the tutorial reads them (float_val), or from packed tensor_content.

    TensorFlow Serving fills float_val; other servers may send the packed form,
    which would otherwise look like an empty answer.
    """
    if tensor.float_val:
        return np.array(tensor.float_val)
    import tensorflow as tf

    return tf.make_ndarray(tensor).reshape(-1)


def _grpc_callback(counter: _ResultCounter, label: int) -> Any:
    def done(result_future: Any) -> None:
        exception = result_future.exception()
        if exception is not None:
            # RpcError's str() is verbose; code and details are what a user needs.
            code = getattr(exception, "code", lambda: None)()
            details = getattr(exception, "details", lambda: str(exception))()
            counter.record(None, f"{code}: {details}" if code is not None else str(exception))
            return
        try:
            scores = _scores(result_future.result().outputs["scores"])
            correct = int(np.argmax(scores)) == label
        except Exception as exc:  # noqa: BLE001 - an unrecorded answer would hang wait_all
            counter.record(None, f"unreadable response: {exc}")
            return
        counter.record(correct)

    return done


def _run_grpc(
    server: str, cases: list[tuple[np.ndarray, int]], counter: _ResultCounter, model_name: str,
    signature_name: str, timeout: float,
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for image, label in cases:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(image, shape=[1, image.size]))
            counter.throttle()
            try:
                result_future = stub.Predict.future(request, timeout)
            except Exception as exc:  # noqa: BLE001 - the slot must be released
                counter.record(None, f"request not sent: {exc}")
                continue
            result_future.add_done_callback(_grpc_callback(counter, label))
        # Keep the channel open until every callback has fired.
        counter.wait_all()


def _rest_predict(
    url: str, payload: dict[str, Any], timeout: float, local: threading.local
) -> tuple[list[float] | None, str | None]:
    import requests

    # One Session per worker thread: Sessions reuse connections but aren't thread-safe.
    if not hasattr(local, "session"):
        local.session = requests.Session()
    try:
        response = local.session.post(url, json=payload, timeout=timeout)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}: {_error_text(response)}"
    try:
        return response.json()["predictions"][0], None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return None, f"malformed response ({exc}): {response.text[:200]}"


def _error_text(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    # TF Serving's REST errors are {"error": "..."}; show anything else verbatim.
    return str(body["error"]) if isinstance(body, dict) and "error" in body else response.text[:200]


def _run_rest(
    server: str, cases: list[tuple[np.ndarray, int]], counter: _ResultCounter, concurrency: int,
    model_name: str, signature_name: str, timeout: float,
) -> None:
    url = f"http://{server}/v1/models/{model_name}:predict"
    local = threading.local()

    def one(case: tuple[np.ndarray, int]) -> None:
        image, label = case
        payload = {"signature_name": signature_name, "instances": [image.tolist()]}
        scores, failure = _rest_predict(url, payload, timeout, local)
        if failure is not None:
            counter.record(None, failure)
            return
        try:
            correct = int(np.argmax(np.asarray(scores, dtype=np.float64))) == label
        except (TypeError, ValueError) as exc:
            counter.record(None, f"unreadable prediction: {exc}")
            return
        counter.record(correct)

    # Taking a slot before submitting keeps the pool's queue short instead of
    # materialising every request up front; the pool size is the real bound.
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for case in cases:
            counter.throttle()
            pool.submit(one, case)
    counter.wait_all()


def run_client(
    server: str,
    data: MnistData,
    num_tests: int = 100,
    concurrency: int = 1,
    rest: bool = False,
    model_name: str = "mnist",
    signature_name: str = "predict_images",
    timeout: float = 10.0,
) -> ClientResult:
    """Send num_tests test images to the server and count wrong and failed answers."""
    if num_tests <= 0:
        raise ValueError(f"num_tests must be positive, got {num_tests}")
    cases = _test_cases(data, num_tests)
    counter = _ResultCounter(num_tests, concurrency)
    started = time.monotonic()
    if rest:
        _run_rest(server, cases, counter, concurrency, model_name, signature_name, timeout)
    else:
        _run_grpc(server, cases, counter, model_name, signature_name, timeout)
    return ClientResult(
        num_tests=num_tests,
        num_errors=counter.errors,
        num_failures=counter.failures,
        error_rate=counter.errors / num_tests,
        failure_messages=list(counter.failure_messages),
        seconds=time.monotonic() - started,
    )


def format_result(result: ClientResult) -> str:
    """The tutorial's one line; failed requests first, since an error rate over them means nothing."""
    if not result.num_failures:
        return f"Inference error rate: {result.error_rate * 100:.1f}%"
    lines = [f"Failed requests: {result.num_failures} of {result.num_tests}"]
    lines.extend(f"  {message}" for message in result.failure_messages)
    answered = result.num_tests - result.num_failures
    if answered:
        lines.append(f"Inference error rate: {result.num_errors / answered * 100:.1f}% "
                     f"of the {answered} answered")
    else:
        lines.append("Inference error rate: unknown (no request was answered)")
    return "\n".join(lines)
