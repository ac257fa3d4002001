"""Prometheus metrics with TF Serving's names, served on the REST port.

prometheus_client keeps the numbers (thread-safe, per-server registry); the
exposition is written here because TF Serving prints counters under their own
name (``:tensorflow:serving:request_count``), where prometheus_client would add
``_total`` and ``_created`` series that dashboards built for TF Serving don't expect.
"""

from __future__ import annotations

import math
import platform
import threading
from importlib import metadata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from pyserving.config.protos import ConfigFileError, MonitoringConfig, read_text_proto

from .series import CounterFamily, GaugeFamily, HistogramFamily

DEFAULT_PATH = "/monitoring/prometheus/metrics"
# TF Serving's request latency buckets: exponential, 10 us * 1.8^i, 33 of them.
LATENCY_BUCKETS_US = tuple(10 * 1.8 ** i for i in range(33))
EXAMPLE_BUCKETS = tuple(2 ** i for i in range(16))
RUNTIME = "TF2"
# Gauges of the whole server, not summed over worker processes.
# Series labelled by a version's path (TF Serving's load and batching metrics): the most recently
# recorded paths keep theirs. A base path whose folders change all the time (a hostile one, or
# /proc) can't grow the page without bound.
MAX_PATH_SERIES = 256
VERSION_STATE = ":pyserving:model_version_available"
BUILD_INFO = ":pyserving:build_info"
UNKNOWN_SIGNATURE = "(unknown)"  # the signature label of a request that reached no version's signature
SERVING_WORKERS = ":pyserving:serving_workers"


@dataclass(frozen=True)
class PrometheusSettings:
    enabled: bool
    path: str

    @classmethod
    def from_file(cls, path: str) -> "PrometheusSettings":
        config = read_text_proto(path, MonitoringConfig, "--monitoring_config_file").prometheus_config
        route = config.path or DEFAULT_PATH
        if not route.startswith("/") or route.startswith("/v1/"):
            raise ConfigFileError(
                f"Invalid monitoring config {path}: path {route!r} must start with '/' and not with '/v1/'")
        return cls(config.enable, route)


VersionLister = Callable[[], Iterable[tuple[str, int, str]]]  # (model, version, state name)


class Metrics:
    """Every metric of one server; no process-global registry. ``worker``: this process's index
    under --num_workers (its process metrics are labelled with it, not added up)."""

    def __init__(self, worker: int = 0) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        r.register(_WorkerProcessCollector(str(worker)))
        self.build_info = Gauge(BUILD_INFO, "pyserving's build: its version and the runtime's.",
                                ["version", "tensorflow", "python", "grpc"], registry=r)
        self.build_info.labels(*_build()).set(1)
        # The series every request moves: series.py's, recorded on the event loop's thread.
        self.signature_requests = CounterFamily(
            ":pyserving:signature_request_count", "The number of requests, by model, signature, API and status.",
            ["model_name", "signature_name", "API", "status"], r)
        self.signature_latency = HistogramFamily(
            ":pyserving:signature_request_latency", "Request latency in microseconds, by model, signature and API.",
            ["model_name", "signature_name", "API"], r, LATENCY_BUCKETS_US)
        self.request_count = CounterFamily(
            ":tensorflow:serving:request_count", "The number of requests, by model and status.",
            ["model_name", "status"], r)
        self.request_latency = HistogramFamily(
            ":tensorflow:serving:request_latency", "Request latency in microseconds.",
            ["model_name", "API", "entrypoint"], r, LATENCY_BUCKETS_US)
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency", "Model runtime latency in microseconds.",
            ["model_name", "API", "runtime"], buckets=LATENCY_BUCKETS_US, registry=r)
        self.example_counts = Histogram(
            ":tensorflow:serving:request_example_counts", "Examples per Example-based request.",
            ["model"], buckets=EXAMPLE_BUCKETS, registry=r)
        self.example_count_total = Counter(
            ":tensorflow:serving:request_example_count_total", "Examples processed.", ["model"], registry=r)
        self.load_attempts = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", "SavedModel load attempts, by outcome.",
            ["model_path", "status"], registry=r)
        self.load_latency = Counter(
            ":tensorflow:cc:saved_model:load_latency", "Total SavedModel load time in microseconds.",
            ["model_path"], registry=r)
        self.warmup_latency = Histogram(
            ":tensorflow:serving:model_warmup_latency", "Model warmup latency in microseconds.",
            ["model_path", "status"], buckets=LATENCY_BUCKETS_US, registry=r)
        self.queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Time a request waited for its batch, in microseconds.", ["model_path"],
            buckets=LATENCY_BUCKETS_US, registry=r)
        self.processed_batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Rows in each batch run (padding included).", ["model_path"], buckets=EXAMPLE_BUCKETS, registry=r)
        self.padding_size = Histogram(
            ":tensorflow:serving:batching_session:padding_size", "Padding rows added to each batch.",
            ["model_path"], buckets=(0,) + EXAMPLE_BUCKETS, registry=r)
        self.version_requests = CounterFamily(
            ":pyserving:version_request_count", "Answered requests, by model version.",
            ["model_name", "version", "API"], r)
        self.in_flight = GaugeFamily(
            ":pyserving:requests_in_flight", "Requests being served right now.", ["model_name"], r)
        self.version_state = Gauge(
            VERSION_STATE, "1 while a model version is AVAILABLE, else 0.",
            ["model_name", "version", "state"], registry=r)
        self.workers = Gauge(
            SERVING_WORKERS, "Worker processes whose counts this page adds up.", registry=r)
        self.request_log = Counter(
            ":pyserving:request_log_count", "Sampled requests written to the request log (logged) or "
            "dropped (queue full, write error), by model.", ["model_name", "status"], registry=r)
        self.shed = Counter(
            ":pyserving:rest_requests_shed", "REST requests refused at the connection by load shedding "
            "(--queue_delay_target_in_ms), before their model was read.", registry=r)
        self.residency = Counter(
            ":pyserving:model_residency_count", "With a budget of loaded models: models loaded on their first "
            "request (load) and unloaded to make room (evict).", ["model_name", "event"], registry=r)
        self.cold_start_latency = Histogram(
            ":pyserving:cold_start_latency", "With a budget of loaded models: microseconds from a model's first "
            "request to its versions being available.", ["model_name"], buckets=LATENCY_BUCKETS_US, registry=r)
        self.model_memory = Gauge(
            ":pyserving:model_memory_bytes", "With a budget of loaded models: the memory of each model loaded "
            "on demand, as estimated from its version folders (docs/model_budget.md); summed over workers, each with "
            "its own copy.", ["model_name"], registry=r)
        self.grpc_shed = Counter(
            ":pyserving:grpc_requests_shed", "gRPC inference calls refused UNAVAILABLE by load shedding "
            "(--queue_delay_target_in_ms) as they were taken, before their request was decoded.", registry=r)
        self._version_lister: VersionLister | None = None
        self._answered: set[tuple[str, str, str]] = set()  # version_requests label sets in use
        self._requests: dict[tuple[str, ...], tuple[list[float], ...]] = {}  # record_request's series
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        self._paths: OrderedDict[str, None] = OrderedDict()  # model_path label values, oldest first
        self._paths_lock = threading.Lock()  # load, warmup and batch threads record them

    def track_versions(self, lister: VersionLister) -> None:
        self._version_lister = lister

    # ---- recording -------------------------------------------------------------

    def _child(self, metric, *labels: str):
        """metric.labels(*labels), remembered: prometheus_client checks and locks on every
        labels() call, a measurable part of a small request. Labels are resolved model names
        (never a client's string), so the cache stays as small as the series themselves."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record_request(self, model: str, api: str, entrypoint: str, status: str, seconds: float,
                       signature: str = UNKNOWN_SIGNATURE) -> None:
        """``signature``: a signature the served version has (never a client's string otherwise)."""
        key = (model, api, entrypoint, status, signature)
        series = self._requests.get(key)
        if series is None:  # labels are resolved names and fixed sets: as few as the series
            series = self._requests[key] = (
                self.request_count.labels(model, status), self.request_latency.labels(model, api, entrypoint),
                self.signature_requests.labels(model, signature, api, status),
                self.signature_latency.labels(model, signature, api))
        micros = seconds * 1e6
        series[0][0] += 1
        self.request_latency.observe(series[1], micros)
        series[2][0] += 1
        self.signature_latency.observe(series[3], micros)

    def record_runtime(self, model: str, api: str, seconds: float) -> None:
        self._child(self.runtime_latency, model, api, RUNTIME).observe(seconds * 1e6)

    def record_examples(self, model: str, count: int) -> None:
        self.example_counts.labels(model).observe(count)
        self.example_count_total.labels(model).inc(count)

    def record_answer(self, model: str, version: int, api: str) -> None:
        labels = (model, str(version), api)
        self.version_requests.labels(*labels)[0] += 1
        self._answered.add(labels)

    def requests_in_flight(self, model: str) -> list[float]:
        """The gauge's series: ``[0] += 1`` as a request comes in, ``-= 1`` as it leaves."""
        return self.in_flight.labels(model)

    def _path(self, path: str) -> str:
        """A model_path label value, kept among the MAX_PATH_SERIES most recent ones."""
        with self._paths_lock:
            self._paths[path] = None
            self._paths.move_to_end(path)
            evicted = [self._paths.popitem(last=False)[0] for _ in range(len(self._paths) - MAX_PATH_SERIES)]
        for old in evicted:
            for metric, extra in ((self.load_attempts, ("success", "fail")), (self.load_latency, ()),
                                  (self.warmup_latency, ("OK", "ERROR")), (self.queuing_latency, ()),
                                  (self.processed_batch_size, ()), (self.padding_size, ())):
                for labels in [(old, e) for e in extra] or [(old,)]:
                    try:
                        metric.remove(*labels)
                    except KeyError:
                        pass
        return path

    def record_load(self, path: str, seconds: float, ok: bool) -> None:
        path = self._path(path)
        self.load_attempts.labels(path, "success" if ok else "fail").inc()
        if ok:
            self.load_latency.labels(path).inc(seconds * 1e6)

    def record_warmup(self, path: str, seconds: float, ok: bool) -> None:
        self.warmup_latency.labels(self._path(path), "OK" if ok else "ERROR").observe(seconds * 1e6)

    def record_residency(self, model: str, event: str, seconds: float, size: int) -> None:
        self._child(self.residency, model, event).inc()
        if event == "load":
            self._child(self.cold_start_latency, model).observe(seconds * 1e6)
            self._child(self.model_memory, model).set(size)
        elif self._children.pop((id(self.model_memory), (model,)), None) is not None:
            self.model_memory.remove(model)  # a thousand models don't leave a thousand zeros

    def record_request_log(self, model: str, status: str) -> None:
        self._child(self.request_log, model, status).inc()

    def record_batch(self, path: str, rows: int, padding: int, waited_seconds: float) -> None:
        path = self._path(path)
        self.queuing_latency.labels(path).observe(waited_seconds * 1e6)
        self.processed_batch_size.labels(path).observe(rows + padding)
        self.padding_size.labels(path).observe(padding)

    # ---- exposition ---------------------------------------------------------------

    def _refresh_versions(self, versions: Iterable[tuple[str, int, str]]) -> None:
        self.version_state.clear()
        known = set()
        for model, version, state in versions:
            known.add((model, str(version)))
            self.version_state.labels(model, str(version), state).set(1 if state == "AVAILABLE" else 0)
        # Versions the manager has forgotten drop out, so series don't pile up with every rollout.
        for labels in [l for l in self._answered if l[:2] not in known]:
            self.version_requests.remove(*labels)
            self._answered.discard(labels)

    def families(self) -> list[Family]:
        """This process's counts as plain data (JSON-safe), for a sibling worker to add up.

        The version-state gauge is left out: it describes the server, not a process, and the
        caller fills it from the merged model status."""
        return [_plain(f) for f in self.registry.collect()
                if f.name not in (VERSION_STATE, SERVING_WORKERS, BUILD_INFO)]

    def exposition(self, others: Sequence[Sequence[Family]] = (),
                   versions: Iterable[tuple[str, int, str]] | None = None) -> bytes:
        """Prometheus text format 0.0.4, with TF Serving's counter naming.

        ``others``: the families of sibling workers (--num_workers), summed into this one's;
        ``versions``: their merged model versions (else this process's own)."""
        if versions is None and self._version_lister is not None:
            versions = self._version_lister()
        self._refresh_versions(versions or ())
        self.workers.set(1 + len(others))
        own = [_plain(f) for f in self.registry.collect()]
        lines: list[str] = []
        for name, kind, documentation, samples in _summed([own, *others]):
            if not samples:
                continue
            exposed = _EXPOSED_NAMES.get(name, name)
            lines.append(f"# HELP {exposed} {documentation}")
            lines.append(f"# TYPE {exposed} {kind}")
            for sample_name, labels, value in samples:
                sample_name = exposed if kind == "counter" else sample_name
                text = ",".join(f'{k}="{_escape(_bucket(v) if k == "le" else v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{sample_name}{{{text}}} {_value(value)}" if text else f"{sample_name} {_value(value)}")
        return ("\n".join(lines) + "\n").encode("utf-8")


# name, type, help, samples (sample name, labels, value): lists once through JSON.
Family = tuple[str, str, str, list]


def _plain(family) -> Family:
    return (family.name, family.type, family.documentation,
            [(s.name, s.labels, s.value) for s in family.samples if not s.name.endswith("_created")])


def _summed(views: Sequence[Sequence[Family]]) -> list[Family]:
    """Families of several processes as one: every series added up (counters, histograms and
    in-flight gauges all sum), in the first view's order, series only some have included."""
    order: dict[str, Family] = {}
    values: dict[tuple[str, str, tuple], float] = {}
    for view in views:
        for name, kind, documentation, samples in view:
            family = order.setdefault(name, (name, kind, documentation, []))
            for sample_name, labels, value in samples:
                key = (name, sample_name, tuple(sorted(labels.items())))
                if key not in values:
                    values[key] = 0.0
                    family[3].append((sample_name, labels))
                values[key] += value
    return [(name, kind, documentation,
             [(s, labels, values[(name, s, tuple(sorted(labels.items())))]) for s, labels in samples])
            for name, kind, documentation, samples in order.values()]


# prometheus_client drops a trailing _total from counter names; TF Serving keeps this one.
_EXPOSED_NAMES = {":tensorflow:serving:request_example_count": ":tensorflow:serving:request_example_count_total",
                  "process_cpu_seconds": "process_cpu_seconds_total"}


class _WorkerProcessCollector:
    """prometheus_client's process metrics (CPU seconds, resident memory, open fds, ...), each
    series labelled with the worker: summed over workers, a start time or an fd limit means nothing."""

    def __init__(self, worker: str) -> None:
        self._process = ProcessCollector(registry=None)
        self._worker = worker

    def collect(self):
        for family in self._process.collect():
            labelled = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labelled.add_sample(sample.name, {**sample.labels, "worker": self._worker}, sample.value)
            yield labelled


def _build() -> tuple[str, str, str, str]:
    """pyserving's, TensorFlow's, Python's and grpcio's versions, read without importing TensorFlow."""
    from pyserving import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"
    return __version__, installed("tensorflow"), platform.python_version(), installed("grpcio")


def _bucket(bound: str) -> str:
    """A bucket's bound as TF Serving prints it (absl::StrCat: six significant digits): "32.4",
    not the "32.400000000000006" that 10 * 1.8 ** 2 is."""
    return bound if bound == "+Inf" else f"{float(bound):.6g}"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return str(int(value))
    return floatToGoString(value)
