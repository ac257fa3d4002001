"""The manager's records: a configured model, its versions' states, and the retry policy of loads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..errors import ServingError
from .states import VersionState


@dataclass
class VersionRecord:
    number: int
    state: VersionState = VersionState.START
    error: ServingError | None = None
    servable: Any = None
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    unwanted: asyncio.Event = field(default_factory=asyncio.Event)  # set when no longer aspired

    async def wait_unwanted(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the version stops being wanted meanwhile: whether it did."""
        try:
            await asyncio.wait_for(self.unwanted.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True


@dataclass
class ModelRecord:
    name: str
    base_path: str
    labels: dict[str, int] = field(default_factory=dict)
    aspired: dict[int, str] = field(default_factory=dict)  # version -> folder
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    configured: bool = True  # False once a config reload dropped it
    why_empty: str = ""  # with no versions: why, as the source found it when it last looked


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    interval_seconds: float = 60.0


# Status keeps unloaded versions (END) as TF Serving does, but not without bound:
# a model that gets a new version every few minutes would otherwise grow forever.
MAX_ENDED_VERSIONS = 20


def forget_old_versions(model: ModelRecord) -> None:
    ended = sorted(n for n, v in model.versions.items()
                   if v.state == VersionState.END and n not in model.aspired)
    for number in ended[:max(0, len(ended) - MAX_ENDED_VERSIONS)]:
        del model.versions[number]


def serving(model: ModelRecord) -> bool:
    return any(v.state == VersionState.AVAILABLE for v in model.versions.values())
