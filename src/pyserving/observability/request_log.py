"""Request logging: a model's ``logging_config``, written as TF Serving defines it.

TF Serving's config (``logging_config { sampling_config { sampling_rate } log_collector_config {
filename_prefix } }``) and record (``tensorflow.serving.PredictionLog``) are kept; its open-source
build has no log collector and refuses such a config. Here the collector writes TFRecord files:

- **Sampling**: each successful Predict, Classify, Regress or MultiInference of the model, over
  gRPC or REST, is logged with probability ``sampling_rate``.
- **Off the request path**: the request only puts what it already holds (its decoded inputs and
  outputs, or its response proto) on a bounded queue (``QUEUE_RECORDS`` records, ``QUEUE_BYTES`` of
  tensors); one writer thread builds the PredictionLog, frames and writes it. A full queue drops
  the record, never waits: drops are counted (``:pyserving:request_log_count{status="dropped"}``)
  and the first is logged once.
- **Files**: ``<filename_prefix>.<yyyymmddThhmmssZ>.<pid>.<n>.tfrecord``: the UTC time the file
  was started (keeps restarts apart), the process (keeps ``--num_workers`` apart), n = 00000,
  00001, ... per prefix; models sharing a prefix share its files. A new file is started before one
  would pass ``--request_log_max_file_bytes`` (64 MiB). The writer flushes whenever its queue runs
  empty, and closes every file when the server stops, or when a reload stops using its prefix.
- **Records**: ``log_metadata`` (served ``model_spec``: name, version, signature;
  ``sampling_config``; ``saved_model_tags``; ``timestamp_secs``) and the request (its model spec as
  asked, inputs as ``tensor_content``, or the examples) with the response. A TFRecord of them is
  also the warmup file format: ``pyserving warmup-from-log`` (warmup_from_log.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
from tensorflow_serving.apis import prediction_log_pb2

from pyserving.codecs import tensor_proto, tfrecord
from pyserving.config.model_config import LoggingSettings, ModelConfig

log = logging.getLogger("pyserving.request_log")

QUEUE_RECORDS = 1024  # sampled requests waiting for the writer; more are dropped
QUEUE_BYTES = 64 << 20  # and their tensors' bytes (one record bigger than this may still wait alone)
DEFAULT_MAX_FILE_BYTES = 64 << 20
DEFAULT_MAX_TOTAL_BYTES = 1 << 30
FILE_MODE = 0o640  # request bytes are the clients' data: not for every user of the machine
FOLDER_MODE = 0o750
IDLE_SECONDS = 1.0  # how often an idle writer closes the files a reload stopped using
_BATCH = 256  # records written between flushes at most
_STOP = object()

RecordHook = Callable[[str, str], None]  # (model name, "logged" | "dropped")


class RequestedSpec(Protocol):
    """A request's model spec as the client gave it (dataplane.ModelSpec)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int | None: ...

    @property
    def label(self) -> str | None: ...

    @property
    def signature_name(self) -> str: ...


@dataclass(frozen=True)
class _Pending:
    settings: LoggingSettings
    model: str
    timestamp: int
    build: Callable[..., Any]  # -> PredictionLog, called by the writer thread
    args: tuple
    size: int  # the tensor bytes it holds in memory while queued


class RequestLogger:
    """Sampling on the request path, everything else in one writer thread (started on first use)."""

    def __init__(self, tags: Sequence[str] = ("serve",), max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 queue_size: int = QUEUE_RECORDS, on_record: RecordHook | None = None,
                 queue_bytes: int = QUEUE_BYTES, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> None:
        self._tags = tuple(tags)
        self._max_file_bytes = max_file_bytes
        self._max_total_bytes = max_total_bytes
        self._total_bytes = 0  # written by this process, every prefix together (the writer thread's)
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._max_queued_bytes = queue_bytes
        self._queued_bytes = 0
        self._on_record: RecordHook = on_record or (lambda model, status: None)
        self._settings: dict[str, LoggingSettings] = {}  # replaced whole on reload, never mutated
        self._prefixes: frozenset[str] = frozenset()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        self.written = 0  # by the writer thread
        self._failing: set[str] = set()  # prefixes whose last write failed (logged once per streak)
        self._build_failed = False

    def configure(self, models: Iterable[ModelConfig]) -> None:
        """The models' logging_config, at start and on every reload."""
        settings = {m.name: m.logging for m in models if m.logging and m.logging.sampling_rate > 0}
        for name, s in sorted(settings.items()):
            if self._settings.get(name) != s:
                log.info("Request logging for model %s: sampling rate %g, files %s.*.tfrecord",
                         name, s.sampling_rate, s.filename_prefix)
        for name in sorted(set(self._settings) - set(settings)):
            log.info("Request logging for model %s: off", name)
        self._settings = settings
        self._prefixes = frozenset(s.filename_prefix for s in settings.values())
        with self._lock:
            if settings and self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
                self._thread.start()

    def maybe_log(self, model: str, build: Callable[..., Any], *args: Any) -> None:
        """Sample; if sampled, queue ``build(*args)`` (a PredictionLog) for the writer. Never blocks."""
        settings = self._settings.get(model)
        if settings is None or self._closed:
            return
        if settings.sampling_rate < 1.0 and random.random() >= settings.sampling_rate:
            return
        weigh = _WEIGHERS.get(build)
        size = weigh(*args) if weigh is not None else 0
        with self._lock:
            fits = not self._queued_bytes or self._queued_bytes + size <= self._max_queued_bytes
            if fits:
                self._queued_bytes += size
        if not fits:
            self._drop(model, f"the queue holds {self._max_queued_bytes} bytes of tensors already")
            return
        try:
            self._queue.put_nowait(_Pending(settings, model, int(time.time()), build, args, size))
        except queue.Full:
            self._taken(size)
            self._drop(model, f"the queue of {self._queue.maxsize} records is full")

    def _taken(self, size: int) -> None:
        with self._lock:
            self._queued_bytes -= size

    def _drop(self, model: str, reason: str) -> None:
        with self._lock:
            self.dropped += 1
            first = self.dropped == 1
        self._on_record(model, "dropped")
        if first:
            log.warning("Request log: dropping sampled requests (%s); counted in "
                        ":pyserving:request_log_count{status=\"dropped\"}, logged only this once", reason)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, flush and close every file (server drain)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
            thread.join(max(deadline - time.monotonic(), 0.0))
        except queue.Full:
            pass
        if thread.is_alive():
            log.warning("Request log: writing did not finish within %.0f s; queued records are lost", timeout)
        else:
            log.info("Request log closed: %d records written, %d dropped", self.written, self.dropped)

    # ---- the writer thread --------------------------------------------------------

    def _run(self) -> None:
        files: dict[str, _RotatingFile] = {}
        indexes: dict[str, Iterator[int]] = {}
        while True:
            batch = []
            try:
                batch.append(self._queue.get(timeout=IDLE_SECONDS))
                while len(batch) < _BATCH:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                prefix = item.settings.filename_prefix
                if prefix not in files:
                    numbers = indexes.setdefault(prefix, itertools.count())
                    files[prefix] = _RotatingFile(prefix, self._max_file_bytes, numbers)
                self._write(files, item)
            active = self._prefixes
            for prefix, file in list(files.items()):
                try:
                    if stop or prefix not in active:
                        del files[prefix]
                        file.close()
                    else:
                        file.flush()
                except OSError as e:
                    self._write_failed(prefix, e)
            if stop:
                return

    def _write(self, files: dict[str, _RotatingFile], item: _Pending) -> None:
        try:
            self._write_one(files, item)
        finally:
            self._taken(item.size)

    def _write_one(self, files: dict[str, _RotatingFile], item: _Pending) -> None:
        prefix = item.settings.filename_prefix
        try:
            record = item.build(*item.args)
            metadata = record.log_metadata
            metadata.sampling_config.sampling_rate = item.settings.sampling_rate
            metadata.saved_model_tags.extend(self._tags)
            metadata.timestamp_secs = item.timestamp
            data = record.SerializeToString()
        except Exception as e:  # a bug of ours: never the request's problem
            if not self._build_failed:
                self._build_failed = True
                log.exception("Request log: cannot build the record of a %s request (logged once)", item.model)
            self._drop(item.model, f"{type(e).__name__}: {e}")
            return
        framed = tfrecord.frame(data)
        if self._total_bytes + len(framed) > self._max_total_bytes:
            self._drop(item.model, f"--request_log_max_total_bytes={self._max_total_bytes} is reached")
            return
        try:
            files[prefix].write(framed)
            self._total_bytes += len(framed)
        except OSError as e:
            self._write_failed(prefix, e)
            files.pop(prefix).discard()
            self._drop(item.model, f"cannot write {prefix}.*: {e.strerror or e}")
            return
        self._failing.discard(prefix)
        self.written += 1
        self._on_record(item.model, "logged")

    def _write_failed(self, prefix: str, error: OSError) -> None:
        if prefix not in self._failing:
            self._failing.add(prefix)
            log.error("Request log: cannot write %s.*.tfrecord: %s", prefix, error.strerror or error)


class _RotatingFile:
    """One prefix's current file: a new one before a record would take it past ``max_bytes``
    (a record bigger than that gets a file of its own)."""

    def __init__(self, prefix: str, max_bytes: int, numbers: Iterator[int]) -> None:
        self._prefix = prefix
        self._max_bytes = max_bytes
        self._numbers = numbers  # shared by the prefix's files, so n never repeats
        self._file: BinaryIO | None = None
        self._size = 0
        self.path = ""

    def write(self, framed: bytes) -> None:
        if self._file is not None and self._size + len(framed) > self._max_bytes:
            self.close()
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(framed)
        self._size += len(framed)

    def _open(self) -> None:
        # The prefix was resolved inside --request_log_dir (config.confine_request_logs); a
        # symlink put in its way since is refused, and the file itself is never a symlink.
        directory = os.path.dirname(self._prefix)
        _still_itself(directory)  # before making what is missing: no folder is made through a link
        os.makedirs(directory, mode=FOLDER_MODE, exist_ok=True)
        _still_itself(directory)
        while True:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self.path = f"{self._prefix}.{stamp}.{os.getpid()}.{next(self._numbers):05d}.tfrecord"
            try:
                # Created here or not at all: never another process's or run's file, nor a link.
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             FILE_MODE)
                break
            except FileExistsError:
                continue
        self._file = os.fdopen(fd, "wb")
        self._size = 0

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def discard(self) -> None:
        """After a failed write: close without raising (the next record starts a new file)."""
        try:
            self.close()
        except OSError:
            pass


def _still_itself(directory: str) -> None:
    """The resolved folder a prefix was confined to must still resolve to itself (no link since)."""
    if os.path.realpath(directory) != directory:
        raise OSError(f"{directory} now resolves elsewhere (a symlink): not written")


# ---- records: built in the writer thread from what the request held ------------------------

def predict_log(spec: RequestedSpec, version: int, signature_name: str, inputs: Mapping[str, np.ndarray],
                output_filter: Sequence[str], outputs: Mapping[str, np.ndarray]):
    record = prediction_log_pb2.PredictionLog()
    served = record.log_metadata.model_spec
    _served_spec(served, spec.name, version, signature_name)
    request, response = record.predict_log.request, record.predict_log.response
    _requested_spec(request.model_spec, spec)
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(tensor_proto.from_numpy(array, tensor_content=True))
    request.output_filter.extend(output_filter)
    response.model_spec.CopyFrom(served)
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(tensor_proto.from_numpy(array, tensor_content=True))
    return record


def examples_log(api: str, spec: RequestedSpec, serialized: Sequence[bytes], response):
    """Classify (``api == "classify"``) or Regress, with its ClassificationResponse / RegressionResponse."""
    record = prediction_log_pb2.PredictionLog()
    entry = record.classify_log if api == "classify" else record.regress_log
    _requested_spec(entry.request.model_spec, spec)
    _examples(entry.request.input, serialized)
    entry.response.CopyFrom(response)
    record.log_metadata.model_spec.CopyFrom(response.model_spec)
    return record


def multi_inference_log(spec: RequestedSpec, tasks: Sequence[Any], serialized: Sequence[bytes], response):
    """``tasks``: dataplane.InferenceTask (signature_name, method_name)."""
    record = prediction_log_pb2.PredictionLog()
    request = record.multi_inference_log.request
    for task in tasks:
        entry = request.tasks.add()
        _requested_spec(entry.model_spec, spec)
        entry.model_spec.signature_name = task.signature_name
        entry.method_name = task.method_name
    _examples(request.input, serialized)
    record.multi_inference_log.response.CopyFrom(response)
    if response.results:
        served = response.results[0].model_spec
        _served_spec(record.log_metadata.model_spec, served.name, served.version.value, "")
    return record


def _requested_spec(target, spec: RequestedSpec) -> None:
    target.name = spec.name
    if spec.version is not None:
        target.version.value = spec.version
    elif spec.label:
        target.version_label = spec.label
    target.signature_name = spec.signature_name


def _served_spec(target, name: str, version: int, signature_name: str) -> None:
    target.name = name
    target.version.value = version
    target.signature_name = signature_name


def _examples(target, serialized: Sequence[bytes]) -> None:
    examples = target.example_list.examples
    for data in serialized:
        examples.add().ParseFromString(data)


def _arrays_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())  # strings: their pointers, not their bytes


# What each kind of pending record holds (for QUEUE_BYTES), from the arguments it was queued with.
_WEIGHERS: dict[Callable[..., Any], Callable[..., int]] = {
    predict_log: lambda spec, version, signature, inputs, fetch, outputs: (
        _arrays_bytes(inputs) + _arrays_bytes(outputs)),
    examples_log: lambda api, spec, serialized, response: sum(map(len, serialized)),
    multi_inference_log: lambda spec, tasks, serialized, response: sum(map(len, serialized)),
}
