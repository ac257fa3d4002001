"""Paths chosen from outside (a config file, a reload, a client's profiler request), kept inside
the folder the operator named for them (docs/security.md)."""

from __future__ import annotations

import os


def inside(root: str, chosen: str) -> str:
    """``chosen`` (relative to ``root``, or absolute) as it resolves now, every symlink followed;
    ValueError unless that lies strictly below ``root`` (a NUL byte is a ValueError too)."""
    base = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(base, chosen))
    if resolved == base or os.path.commonpath([base, resolved]) != base:
        raise ValueError(f"{chosen!r} is outside {root}")
    return resolved
