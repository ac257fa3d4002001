"""The model layout on disk: a base path holding one folder per version, named by an integer."""

from __future__ import annotations

import os


def list_versions(base_path: str) -> dict[int, str]:
    """Version number -> folder, for every folder whose name is an integer."""
    versions: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            # ASCII digits only: str.isdigit() also accepts '²' and other Unicode digits.
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
                versions[int(entry.name)] = entry.path
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
    return ". Version folders are named by integers (1, 2, 00000123)"
