"""The status page's data: GET /v1/status (every model in a line) and /v1/status?model=NAME (one
model's versions, load errors, labels and signatures), the page itself in status_html.py.

A server may hold a thousand models under a budget of a few loaded ones, so the summary is one
compact row a model (state, serving version, request rate, latency p50 over the last seconds,
errors, in flight, memory), read from the server's own metrics (over every worker with
--num_workers) and the manager's status, with nothing per model that costs more than a lookup;
what a version's signatures are is read only when someone opens that model.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from pyserving import __version__
from pyserving.errors import Code, ServingError
from pyserving.observability.monitoring import Family
from pyserving.serving.dataplane import DataPlane, ModelSpec
from pyserving.serving.responses import SIGNATURE_DEF_FIELD

JSON_PATH = "/v1/status"
REFRESH_MS = 2000
# Rates and latencies are over at least this many seconds (since start while the server is younger).
WINDOW_SECONDS = 10.0
MetricViews = Callable[[], Awaitable[Sequence[Sequence[Family]]]]  # each worker's metric families

_REQUESTS = ":tensorflow:serving:request_count"
_LATENCY = ":tensorflow:serving:request_latency"
_ANSWERED = ":pyserving:version_request_count"
_IN_FLIGHT = ":pyserving:requests_in_flight"
_MEMORY = ":pyserving:model_memory_bytes"


class StatusPage:
    def __init__(self, dataplane: DataPlane, metric_views: MetricViews | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dataplane = dataplane
        self._views = metric_views
        self._clock = clock
        self._started = clock()
        # (time, {model: totals}) samples, one a second at most: the oldest is the rate's baseline.
        self._samples: deque[tuple[float, dict[str, list[float]]]] = deque([(self._started, {})])

    async def summary(self) -> dict[str, Any]:
        """Every model in one compact row, and the server."""
        views = await self._views() if self._views else []
        tally = _tally(views)
        now = self._clock()
        seconds, before = self._baseline(now, tally.totals)
        models = []
        for name in sorted(self._dataplane.readiness()):
            model = await self._row(name)
            model["requests"] = _rates(tally.totals.get(name), before.get(name), seconds, tally.in_flight.get(name, 0))
            model["memory_bytes"] = tally.memory.get(name)
            models.append(model)
        return {"server": {"version": __version__, "uptime_seconds": round(now - self._started, 1),
                           "workers": max(len(views), 1)},
                "window_seconds": round(seconds, 1), "refresh_ms": REFRESH_MS, "models": models}

    async def details(self, name: str) -> dict[str, Any]:
        """One model in full: versions (state, load error, requests answered), labels, the signatures
        of the version it serves. NOT_FOUND for a name no configured model has."""
        if name not in self._dataplane.readiness():
            raise ServingError(Code.NOT_FOUND, f"No model named {name[:200]!r} is configured")
        views = await self._views() if self._views else []
        return await self._model(name, _tally(views).answered)

    async def _row(self, name: str) -> dict[str, Any]:
        statuses = await self._dataplane.listed_status(name)
        state = self._dataplane.model_state(name, statuses)
        row: dict[str, Any] = {"name": name, "state": state, "served_version": None, "problem": None,
                               "versions": len(statuses)}
        try:
            row["served_version"] = self._dataplane.resolve(ModelSpec(name))
        except ServingError as e:
            if state == "UNAVAILABLE":  # only then is something wrong: UNLOADED and LOADING are not
                failed = next((s for s in statuses if s.error), None)
                row["problem"] = f"{failed.error.code.name}: {failed.error.message}" if failed else e.message
        return row

    def _baseline(self, now: float, totals: dict[str, list[float]]) -> tuple[float, dict[str, list[float]]]:
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - WINDOW_SECONDS:
            samples.popleft()
        then, before = samples[0]
        if now - samples[-1][0] >= 1.0:
            samples.append((now, totals))
        return now - then, before

    async def _model(self, name: str, answered: Mapping[tuple[str, str], float]) -> dict[str, Any]:
        statuses = await self._dataplane.listed_status(name)  # none yet: the metadata error says why
        versions = [{"version": s.version, "state": s.state.name,
                     "error": f"{s.error.code.name}: {s.error.message}" if s.error else None,
                     "requests": int(answered.get((name, str(s.version)), 0))} for s in statuses]
        model: dict[str, Any] = {"name": name, "state": self._dataplane.model_state(name, statuses),
                                 "labels": self._dataplane.version_labels(name),
                                 "versions": versions, "served_version": None, "signatures": [],
                                 "problem": None}
        try:
            response = self._dataplane.metadata(ModelSpec(name), [SIGNATURE_DEF_FIELD])
        except ServingError as e:
            if not any(v["error"] for v in versions):  # else the versions' own errors say it
                model["problem"] = e.message
        else:
            model["served_version"] = response.model_spec.version.value
            model["signatures"] = _signatures(response)
        return model


@dataclass
class _Tally:
    """Per model, summed over the workers' families: [requests, errors, latency sum (us), latency
    count, {bucket bound: cumulative count}]; answered requests per (model, version); requests in
    flight; memory (under a budget)."""

    totals: dict[str, list] = field(default_factory=dict)
    answered: dict[tuple[str, str], float] = field(default_factory=dict)
    in_flight: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)


def _tally(views: Sequence[Sequence[Family]]) -> _Tally:
    tally = _Tally()
    for view in views:
        for family, _kind, _help, samples in view:
            for sample, labels, value in samples:
                model = labels.get("model_name")
                if model is None:
                    continue
                if family == _REQUESTS:
                    counts = tally.totals.setdefault(model, _empty())
                    counts[0] += value
                    counts[1] += value if labels.get("status") != "OK" else 0
                elif family == _LATENCY:
                    counts = tally.totals.setdefault(model, _empty())
                    if sample.endswith("_bucket"):
                        bound = float(labels["le"])
                        counts[4][bound] = counts[4].get(bound, 0.0) + value
                    elif sample.endswith(("_sum", "_count")):
                        counts[2 if sample.endswith("_sum") else 3] += value
                elif family == _ANSWERED:
                    key = (model, labels.get("version", ""))
                    tally.answered[key] = tally.answered.get(key, 0) + value
                elif family == _IN_FLIGHT:
                    tally.in_flight[model] = tally.in_flight.get(model, 0) + value
                elif family == _MEMORY:
                    tally.memory[model] = tally.memory.get(model, 0) + value
    return tally


def _empty() -> list:
    return [0.0, 0.0, 0.0, 0.0, {}]


def _median_ms(now: dict[float, float], before: dict[float, float]) -> float | None:
    """The window's median latency from the histogram's buckets, interpolated within the bucket
    that holds it (as Prometheus's histogram_quantile does)."""
    bounds = sorted(now)
    counts = [max(now[b] - before.get(b, 0.0), 0.0) for b in bounds]  # cumulative
    if not counts or counts[-1] <= 0:
        return None
    half, lower, below = counts[-1] / 2, 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= half:
            if math.isinf(bound):
                return round(lower / 1000, 3)
            share = (half - below) / (count - below) if count > below else 1.0
            return round((lower + (bound - lower) * share) / 1000, 3)
        lower, below = bound, count
    return None


def _rates(now: list | None, before: list | None, seconds: float, in_flight: float) -> dict:
    count, errors, latency_sum, latency_count, buckets = now or _empty()
    old = before or _empty()
    # A restarted worker's counts start again from 0: never a negative rate.
    new_requests, new_sum, new_count = (max(count - old[0], 0), max(latency_sum - old[2], 0),
                                        max(latency_count - old[3], 0))
    return {"total": int(count), "errors": int(errors), "in_flight": int(in_flight),
            "per_second": round(new_requests / seconds, 2) if seconds > 0 else None,
            "latency_ms": round(new_sum / new_count / 1000, 3) if new_count else None,
            "p50_ms": _median_ms(buckets, old[4]),
            "mean_latency_ms": round(latency_sum / latency_count / 1000, 3) if latency_count else None}


def _signatures(response) -> list[dict[str, Any]]:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    return [{"name": key, "method": sig.method_name,
             "inputs": _tensors(sig.inputs), "outputs": _tensors(sig.outputs)}
            for key, sig in sorted(signature_map.signature_def.items(), key=lambda kv: (kv[0] != "serving_default", kv[0]))]


def _tensors(infos) -> list[dict[str, Any]]:
    return [{"alias": alias, "tensor": info.name,
             "dtype": (types_pb2.DataType.Name(info.dtype) if info.dtype in types_pb2.DataType.values()
                       else str(info.dtype)),
             "shape": None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]}
            for alias, info in sorted(infos.items())]
