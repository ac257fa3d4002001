"""The model layout on disk: a base path holding one folder per version, named by an integer."""

from __future__ import annotations

import os

# A model the runtime loads: a SavedModel or a TFLite file.
SERVABLE_FILES = ("saved_model.pb", "saved_model.pbtxt", "model.tflite")
# What a complete version holds: one of those or a Python model. A local numbered folder without
# one is still offered, as TF Serving does (its load fails, visibly in status); a remote one is
# offered once it has one.
MODEL_FILES = (*SERVABLE_FILES, "model.py")
# TF Serving parses version folder names as int64; a larger number is not a version.
MAX_VERSION = 2**63 - 1


def version_number(name: str) -> int | None:
    """The version a folder name gives, or None: ASCII digits only (str.isdigit() also accepts '²'
    and other Unicode digits), and within int64 (checked before int(), whose cost grows with the
    digits and which refuses over 4300 of them)."""
    if not (name.isascii() and name.isdigit()):
        return None
    digits = name.lstrip("0") or "0"
    if len(digits) > 19 or int(digits) > MAX_VERSION:
        return None
    return int(digits)


def list_versions(base_path: str, ignored: dict[str, str] | None = None) -> dict[int, str]:
    """Version number -> folder, for every folder named by an int64 (TF Serving skips the others).

    ``ignored`` receives the numbered folders left out, with the reason (folders not named by a
    number are not versions and are not reported)."""
    versions: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not (entry.name.isascii() and entry.name.isdigit()) or not entry.is_dir():
                continue
            number = version_number(entry.name)
            reason = None
            if number is None:
                reason = "its number is larger than a version can be (int64)"
            elif number in versions:
                reason = f"version {number} is folder {os.path.basename(versions[number])} already"
            if reason is None:
                versions[number] = entry.path
            elif ignored is not None:
                ignored[entry.name] = reason
    return versions


def base_path_hint(base_path: str) -> str:
    """Why a base path may hold no versions, for the common mistakes."""
    if os.path.isfile(os.path.join(base_path, "saved_model.pb")) or \
            os.path.isfile(os.path.join(base_path, "saved_model.pbtxt")):
        return (". It holds a SavedModel itself, but versions live in numbered folders below the "
                f"base path: move the model into {os.path.join(base_path, '1')}, or point the base "
                "path at the folder above a version folder")
    if not os.path.isdir(base_path):
        return ". The folder does not exist"
    try:
        with os.scandir(base_path) as entries:
            others = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError:
        others = []
    named = f"; ignored here: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}" if others else ""
    return f". Version folders are named by integers (1, 2, 00000123){named}"
