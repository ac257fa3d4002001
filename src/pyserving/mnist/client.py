"""The TF Serving tutorial's MNIST client: send test images, measure the error rate.

Built on pyserving.client.Client, so the same lines speak gRPC (the tutorial's Predict on
``predict_images``) or, with ``rest=True``, the REST API; up to ``concurrency`` requests are in
flight at once, as the tutorial's futures are.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pyserving.client import Client
from pyserving.errors import ServingError
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
    """Tallies answers and caps in-flight requests; answers arrive on the pool's threads."""

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


class _Clients:
    """The client each pool thread uses: one gRPC channel for all (it is thread-safe), a REST
    client per thread (a requests Session is not)."""

    def __init__(self, server: str, rest: bool, timeout: float) -> None:
        self._server, self._rest, self._timeout = server, rest, timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Client] = []
        # What a request that got no answer at all raises (gRPC's become ServingError UNAVAILABLE).
        self.transport_errors: tuple[type[Exception], ...] = ()
        if rest:
            import requests

            self.transport_errors = (requests.RequestException,)

    def get(self) -> Client:
        if not self._rest:
            with self._lock:
                if not self._all:
                    self._all.append(Client(self._server, timeout=self._timeout))
                return self._all[0]
        if not hasattr(self._local, "client"):
            self._local.client = Client(self._server, protocol="rest", timeout=self._timeout)
            with self._lock:
                self._all.append(self._local.client)
        return self._local.client

    def close(self) -> None:
        for client in self._all:
            client.close()


def _ask(clients: _Clients, image: np.ndarray, label: int, model_name: str, signature_name: str,
         counter: _ResultCounter) -> None:
    """One test image: its answer recorded as right, wrong or failed (never left unrecorded,
    which would hang wait_all)."""
    try:
        outputs = clients.get().predict(model_name, {"images": image.reshape(1, -1)},
                                        signature_name=signature_name)
        scores = np.asarray(outputs["scores"], dtype=np.float64).reshape(-1)
        correct = int(np.argmax(scores)) == label
    except ServingError as exc:
        counter.record(None, f"{exc.code.name}: {exc.message}")
    except clients.transport_errors as exc:
        counter.record(None, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a malformed answer is a failure, not a crash
        counter.record(None, f"unreadable response: {type(exc).__name__}: {exc}")
    else:
        counter.record(correct)


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
    if not rest:  # gRPC brings TensorFlow's protos in: without its C++ start-up lines
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cases = _test_cases(data, num_tests)
    counter = _ResultCounter(num_tests, concurrency)
    clients = _Clients(server, rest, timeout)
    started = time.monotonic()
    try:
        # Taking a slot before submitting keeps the pool's queue short instead of
        # materialising every request up front; the pool size is the real bound.
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for image, label in cases:
                counter.throttle()
                pool.submit(_ask, clients, image, label, model_name, signature_name, counter)
        counter.wait_all()
    finally:
        clients.close()
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
