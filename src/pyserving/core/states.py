"""Servable ids and version states, with TF Serving's enum values."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ServingError


class VersionState(enum.IntEnum):
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    """A snapshot of one version, as model status reports it."""

    model: str
    version: int
    state: VersionState
    error: ServingError | None = None


def describe_versions(versions: list[VersionStatus]) -> str:
    """One line for a model's versions and their states (and load errors), for error messages."""
    parts = []
    for v in sorted(versions, key=lambda v: v.version):
        parts.append(f"version {v.version}: {v.state.name}" + (f" ({v.error.message})" if v.error else ""))
    return "; ".join(parts)


# A model's state as a whole, for listings (GET /v1/models, the status page).
MODEL_STATES = ("LOADED", "LOADING", "UNLOADED", "UNAVAILABLE")


def model_state(versions: list[VersionStatus], not_loaded: bool) -> str:
    """LOADED (a version serves), LOADING, UNLOADED (under a budget of loaded models: not loaded
    now, loads on its first request) or UNAVAILABLE (its versions failed to load, or none found)."""
    states = {v.state for v in versions}
    if VersionState.AVAILABLE in states:
        return "LOADED"
    if states & {VersionState.START, VersionState.LOADING}:
        return "LOADING"
    return "UNLOADED" if not_loaded else "UNAVAILABLE"
