"""The batcher, around a fake servable that records each batch it runs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pyserving.errors import Code, ServingError
from pyserving.serving.batching import BatchingOptions, BatchingServable


class FakeServable:
    """y = 2x; records batch sizes; can be held at a gate to let a queue fill up."""

    def __init__(self, gate: threading.Event | None = None, keep_batch_dim: bool = True) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.keep_batch_dim = keep_batch_dim
        self.closed = False
        self.signatures = {"serving_default": "sig"}
        self.lock = threading.Lock()
        self.entered = threading.Event()

    def run(self, signature_key, inputs, output_filter=()):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        x = inputs["x"]
        with self.lock:
            self.batches.append(x.shape[0] if x.ndim else 0)
        if not self.keep_batch_dim:
            return {"total": np.sum(x)}
        return {"y": 2 * x}

    def close(self):
        self.closed = True


def run_concurrently(servable, arrays, workers=16):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: servable.run("serving_default", {"x": a}), arrays))


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    fake = FakeServable()
    batcher = BatchingServable(fake, BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000,
                                                     num_batch_threads=1))
    arrays = [np.full((1, 3), i, np.float32) for i in range(16)]
    results = run_concurrently(batcher, arrays)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * i, np.float32))
    assert sum(fake.batches) == 16
    assert len(fake.batches) < 16 and max(fake.batches) <= 8
    batcher.close()
    assert fake.closed


def test_padding_to_allowed_sizes_is_cut_off_again():
    fake = FakeServable()
    seen = []
    batcher = BatchingServable(fake, BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8),
                                                     num_batch_threads=1),
                               observe=lambda rows, padding, waited: seen.append((rows, padding)))
    result = batcher.run("serving_default", {"x": np.arange(3, dtype=np.float32).reshape(3, 1)})
    np.testing.assert_array_equal(result["y"].ravel(), [0, 2, 4])
    assert fake.batches == [4] and seen == [(3, 1)]
    batcher.close()


def test_too_large_request_is_refused_or_split():
    fake = FakeServable()
    batcher = BatchingServable(fake, BatchingOptions(max_batch_size=4, num_batch_threads=1))
    with pytest.raises(ServingError) as info:
        batcher.run("serving_default", {"x": np.zeros((5, 1), np.float32)})
    assert info.value.code == Code.INVALID_ARGUMENT
    assert "larger than maximum input batch size 4" in info.value.message
    batcher.close()
    splitting = BatchingServable(fake, BatchingOptions(max_batch_size=4, num_batch_threads=1,
                                                       enable_large_batch_splitting=True))
    result = splitting.run("serving_default", {"x": np.arange(10, dtype=np.float32).reshape(10, 1)})
    np.testing.assert_array_equal(result["y"].ravel(), 2 * np.arange(10))
    splitting.close()


def test_full_queue_answers_unavailable_at_once():
    gate = threading.Event()
    fake = FakeServable(gate)
    batcher = BatchingServable(fake, BatchingOptions(max_batch_size=2, max_enqueued_batches=1,
                                                     num_batch_threads=1))
    pool = ThreadPoolExecutor(4)
    running = pool.submit(batcher.run, "serving_default", {"x": np.zeros((2, 1), np.float32)})
    assert fake.entered.wait(10)  # the only batch thread is now busy at the gate
    queued = pool.submit(batcher.run, "serving_default", {"x": np.zeros((2, 1), np.float32)})
    deadline = time.monotonic() + 10
    while sum(batcher._queued_rows.values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # polling with a deadline for the second request to queue
    with pytest.raises(ServingError) as info:
        batcher.run("serving_default", {"x": np.zeros((1, 1), np.float32)})
    assert info.value.code == Code.UNAVAILABLE and "queue" in info.value.message
    gate.set()
    assert running.result(10)["y"].shape == (2, 1) and queued.result(10)["y"].shape == (2, 1)
    batcher.close()
    pool.shutdown()


def test_outputs_without_batch_dimension_fail_clearly():
    batcher = BatchingServable(FakeServable(keep_batch_dim=False), BatchingOptions(num_batch_threads=1))
    with pytest.raises(ServingError) as info:
        batcher.run("serving_default", {"x": np.ones((2, 1), np.float32)})
    assert "keep the batch dimension" in info.value.message
    batcher.close()


def test_unbatchable_inputs_run_directly():
    fake = FakeServable()
    batcher = BatchingServable(fake, BatchingOptions(num_batch_threads=1))
    result = batcher.run("serving_default", {"x": np.float32(3)})
    assert result["y"] == 6
    batcher.close()
