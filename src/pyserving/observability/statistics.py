"""Per-version inference statistics, as Triton's statistics extension reports them.

Triton's perf_analyzer and Model Analyzer read ``/v2/models/{m}/stats`` (gRPC
``ModelStatistics``) before and after they send load: how many inferences succeeded and failed,
and where the time went (waiting for a thread or a batch, decoding the inputs, the model,
encoding the answer). The data plane records every inference that reached a version here, on
the event loop (so no lock): failures before a version was chosen (an unknown model, admission's
refusals) are in the Prometheus metrics, not here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    """A count and the nanoseconds they took: Triton's StatisticDuration."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class Phases:
    """Where one inference's time went, in seconds (filled by the worker that ran it)."""

    queue: float = 0.0  # from being taken to a thread or inline run starting it
    compute_input: float = 0.0  # decoding and checking the inputs
    compute_infer: float = 0.0  # the model
    compute_output: float = 0.0  # building the answer
    ran: bool = False  # the model was run (else the failure came first)
    began: float = 0.0  # perf_counter() when the worker started it
    inline: bool = False  # run on the event loop's thread (serving/inline.py), not a worker's
    # Taken only for a traced request (serving/breakdown.py):
    traced: bool = False
    resident: float = 0.0  # making the model resident under a budget (a cold start if long)
    batch_rows: int = 0  # the rows of the batch the run joined (0: not batched)
    batch_wait: float = 0.0  # of compute_infer, the wait for that batch to start


PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class VersionStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0

    def as_json(self, name: str, version: int) -> dict:
        durations = {"success": self.success, "fail": self.fail,
                     **{p: getattr(self, p) for p in PHASES},
                     "cache_hit": Duration(), "cache_miss": Duration()}
        return {"name": name, "version": str(version), "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: d.as_json() for k, d in durations.items()}, "batch_stats": []}


class InferenceStatistics:
    """Statistics by (model, version); owned by the data plane, touched on the event loop only."""

    def __init__(self) -> None:
        self._by_version: dict[tuple[str, int], VersionStatistics] = {}

    def record(self, model: str, version: int, ok: bool, seconds: float, phases: Phases) -> None:
        stats = self._by_version.get((model, version))
        if stats is None:
            stats = self._by_version[(model, version)] = VersionStatistics()
        (stats.success if ok else stats.fail).add(seconds)
        stats.last_inference_ms = int(time.time() * 1000)
        if not (ok and phases.ran):
            return
        stats.inference_count += 1
        stats.execution_count += 1
        for phase in PHASES:
            getattr(stats, phase).add(getattr(phases, phase))

    def of(self, model: str, version: int) -> VersionStatistics:
        """A version's statistics (zeros if nothing reached it yet)."""
        return self._by_version.get((model, version)) or VersionStatistics()

    def forget(self, model: str, keep: set[int]) -> None:
        """Drop the versions of ``model`` not in ``keep`` (unloaded ones), so the map stays bounded."""
        for key in [k for k in self._by_version if k[0] == model and k[1] not in keep]:
            del self._by_version[key]
