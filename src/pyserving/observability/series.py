"""The request path's counters, gauges and histograms as plain numbers.

Every answered request moves six series (request and signature counts and latencies, the
version's answers, the requests in flight). prometheus_client takes a lock for each increment
and walks a histogram's buckets in Python: 15 us of a small model's 300 us REST request. These
families are recorded on the event loop's thread only (the data plane's bookkeeping), so a
series is a list of numbers and a latency's bucket one bisect. They register in the same
registry and collect into the same samples prometheus_client's would (``_total``, ``_bucket``
with ``le``, ``_count``, ``_sum``), so the page reads as before.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString


class _Family:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._series: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def labels(self, *values: str) -> list[float]:
        """The series of these label values, made on first use: a list to add to in place."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._new()
        return series

    def remove(self, *values: str) -> None:
        self._series.pop(values, None)

    def _new(self) -> list[float]:
        return [0.0]

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, self.kind)
        for values, series in list(self._series.items()):
            self._samples(family, dict(zip(self.labelnames, values)), series)
        yield family

    def _samples(self, family: Metric, labels: dict[str, str], series: list[float]) -> None:
        family.add_sample(self.name + ("_total" if self.kind == "counter" else ""), labels, series[0])


class CounterFamily(_Family):
    """``labels(...)[0] += 1``."""

    kind = "counter"


class GaugeFamily(_Family):
    """``labels(...)[0] += 1``, ``-= 1``."""

    kind = "gauge"


class HistogramFamily(_Family):
    """``observe(labels(...), value)``: a series is [count of each bucket..., sum]."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self.bounds = (*(float(b) for b in buckets), float("inf"))
        self._les = tuple(floatToGoString(b) for b in self.bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> list[float]:
        return [0.0] * (len(self.bounds) + 1)

    def observe(self, series: list[float], value: float) -> None:
        series[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus's le
        series[-1] += value

    def _samples(self, family: Metric, labels: dict[str, str], series: list[float]) -> None:
        total = 0.0
        for le, count in zip(self._les, series):
            total += count
            family.add_sample(self.name + "_bucket", {**labels, "le": le}, total)
        family.add_sample(self.name + "_count", labels, total)
        family.add_sample(self.name + "_sum", labels, series[-1])
