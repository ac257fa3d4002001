"""The docs name every flag the server takes (so the compatibility table can't fall behind)."""

import dataclasses
from pathlib import Path

from pyserving.options import ServerOptions

DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"


def test_every_flag_is_documented():
    text = DOC.read_text()
    missing = [f.name for f in dataclasses.fields(ServerOptions) if f"`--{f.name}`" not in text]
    assert missing == []
