"""The batcher: concurrent requests to one version run as one batch.

Composed around a loaded servable (``BatchingServable`` has the servable's
``run``), so every API that reaches the model — Predict, Classify, Regress,
MultiInference — is batched, as TF Serving's batching session does. Requests
wait in a queue per (signature, outputs, input dtypes and inner shapes); batch
threads take the oldest queue that is full or whose first request has waited
``batch_timeout_micros``, concatenate along dimension 0 (padding up to the next
``allowed_batch_sizes`` entry by repeating the first row), run once, and split
the outputs back. A full queue answers UNAVAILABLE at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pyserving.config.protos import BatchingParameters, ConfigFileError, read_text_proto
from pyserving.errors import ServingError

PER_MODEL_FILE = "batching_params.pbtxt"


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters, with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False

    @classmethod
    def from_file(cls, path: str) -> "BatchingOptions":
        proto = read_text_proto(path, BatchingParameters, "--batching_parameters_file")
        values: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        if proto.HasField("enable_large_batch_splitting"):
            values["enable_large_batch_splitting"] = proto.enable_large_batch_splitting.value
        options = cls(allowed_batch_sizes=tuple(proto.allowed_batch_sizes), **values)
        options.validate(path)
        return options

    def validate(self, where: str = "batching parameters") -> None:
        if self.max_batch_size <= 0 or self.num_batch_threads <= 0 or self.max_enqueued_batches <= 0:
            raise ConfigFileError(f"Invalid {where}: max_batch_size, num_batch_threads and "
                                  "max_enqueued_batches must be positive")
        if self.batch_timeout_micros < 0:
            raise ConfigFileError(f"Invalid {where}: batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[0] <= 0):
            raise ConfigFileError(f"Invalid {where}: allowed_batch_sizes must be increasing and positive")
        if sizes and sizes[-1] != self.max_batch_size:
            raise ConfigFileError(f"Invalid {where}: the last allowed_batch_sizes entry ({sizes[-1]}) "
                                  f"must equal max_batch_size ({self.max_batch_size})")

    def padded_size(self, size: int) -> int:
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    size: int
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    batch_rows: int = 0  # set when its batch starts: the batch's rows, and how long this task waited
    waited: float = 0.0


BatchObserver = Callable[[int, int, float], None]  # (batch rows, padding rows, queued seconds)


class BatchingServable:
    """A servable whose ``run`` batches concurrent calls; everything else passes through."""

    def __init__(self, servable, options: BatchingOptions, observe: BatchObserver | None = None) -> None:
        self._servable = servable
        self._options = options
        self._observe = observe or (lambda rows, padding, waited: None)
        self._queues: dict[tuple, deque[_Task]] = {}
        self._queued_rows: dict[tuple, int] = {}
        self._cv = threading.Condition()
        self._stopping = False
        self._last = threading.local()  # each request thread's last batch, for its trace
        self._threads = [threading.Thread(target=self._batch_loop, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def __getattr__(self, name: str):
        return getattr(self._servable, name)  # signatures, signature_defs, path, ...

    @property
    def max_batch_size(self) -> int:
        """The most rows one run takes (Triton's model configuration reports it)."""
        return self._options.max_batch_size

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        self._last.batch = (0, 0.0)  # until this run's batch starts (a run not batched, or failed, keeps it)
        size = _batch_size(inputs)
        if size is None:  # scalars or disagreeing dim 0: nothing to batch on
            return self._servable.run(signature_key, inputs, output_filter)
        if size > self._options.max_batch_size:
            if not self._options.enable_large_batch_splitting:
                raise ServingError.invalid_argument(
                    f"Task size {size} is larger than maximum input batch size {self._options.max_batch_size}")
            return self._run_split(signature_key, inputs, output_filter, size)
        key = (signature_key, tuple(output_filter),
               tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in inputs.items())))
        task = _Task(inputs, size)
        result = self._submit(key, task).result()
        self._last.batch = (task.batch_rows, task.waited)
        return result

    def last_batch(self) -> tuple[int, float]:
        """The rows of the batch this thread's last run joined and the seconds it waited for it
        ((0, 0.0) if that run was not batched)."""
        return getattr(self._last, "batch", (0, 0.0))

    def _run_split(self, signature_key, inputs, output_filter, size) -> dict[str, np.ndarray]:
        step = self._options.max_batch_size
        parts = [self.run(signature_key, {k: a[i:i + step] for k, a in inputs.items()}, output_filter)
                 for i in range(0, size, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def accepting(self) -> bool:
        """False when every queue is full: checked on the event loop, before a request takes a
        thread (its own queue is not known until it is decoded; _submit checks that one)."""
        rows = list(self._queued_rows.values())  # one C call: no lock needed for a snapshot
        return not rows or min(rows) < self._options.max_enqueued_batches * self._options.max_batch_size

    def _submit(self, key: tuple, task: _Task) -> Future:
        limit = self._options.max_enqueued_batches * self._options.max_batch_size
        with self._cv:
            if self._stopping:
                raise ServingError.unavailable("This model version is unloading")
            if self._queued_rows.get(key, 0) + task.size > limit:
                raise ServingError.unavailable(
                    "The batch scheduling queue to which this task was submitted is full")
            self._queues.setdefault(key, deque()).append(task)
            self._queued_rows[key] = self._queued_rows.get(key, 0) + task.size
            self._cv.notify()
        return task.future

    # ---- batch threads -----------------------------------------------------------

    def _batch_loop(self) -> None:
        while True:
            with self._cv:
                batch = self._next_batch()
                while batch is None:
                    if self._stopping:
                        return
                    self._cv.wait(self._wait_seconds())
                    batch = self._next_batch()
            self._process(*batch)

    def _ready(self, queue: deque[_Task], rows: int, now: float) -> bool:
        timeout = self._options.batch_timeout_micros / 1e6
        return rows >= self._options.max_batch_size or now - queue[0].enqueued >= timeout or self._stopping

    def _next_batch(self) -> tuple[tuple, list[_Task]] | None:
        """The oldest ready queue's batch (called with the lock held)."""
        now = time.monotonic()
        ready = [(q[0].enqueued, key) for key, q in self._queues.items()
                 if q and self._ready(q, self._queued_rows[key], now)]
        if not ready:
            return None
        _, key = min(ready)
        queue, tasks, rows = self._queues[key], [], 0
        while queue and rows + queue[0].size <= self._options.max_batch_size:
            task = queue.popleft()
            tasks.append(task)
            rows += task.size
        self._queued_rows[key] -= rows
        return key, tasks

    def _wait_seconds(self) -> float | None:
        firsts = [q[0].enqueued for q in self._queues.values() if q]
        if not firsts:
            return None
        deadline = min(firsts) + self._options.batch_timeout_micros / 1e6
        return max(deadline - time.monotonic(), 0.0005)

    def _process(self, key: tuple, tasks: list[_Task]) -> None:
        signature_key, output_filter = key[0], key[1]
        rows = sum(t.size for t in tasks)
        padded = self._options.padded_size(rows)
        started = time.monotonic()
        for task in tasks:
            task.batch_rows, task.waited = rows, started - task.enqueued
        try:
            inputs = {name: _concat([t.inputs[name] for t in tasks], padded - rows)
                      for name in tasks[0].inputs}
            outputs = self._servable.run(signature_key, inputs, output_filter)
            results = _split(outputs, [t.size for t in tasks], padded)
        except Exception as e:  # the whole batch failed: every request gets the reason
            for task in tasks:
                task.future.set_exception(e)
            return
        for task, result in zip(tasks, results):
            task.future.set_result(result)
        self._observe(rows, padded - rows, started - min(t.enqueued for t in tasks))

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._servable.close()


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int | None:
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size or None


def _concat(arrays: list[np.ndarray], padding: int) -> np.ndarray:
    if padding:
        arrays = arrays + [np.repeat(arrays[0][:1], padding, axis=0)]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _split(outputs: Mapping[str, np.ndarray], sizes: list[int], padded: int) -> list[dict[str, np.ndarray]]:
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != padded:
            raise ServingError.failed_precondition(
                f"Batched output {name!r} has shape {list(array.shape)}; batching needs every output "
                f"to keep the batch dimension ({padded}). Disable batching for this model.")
    results, offset = [], 0
    for size in sizes:
        results.append({name: array[offset:offset + size] for name, array in outputs.items()})
        offset += size
    return results
