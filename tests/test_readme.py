"""The README's commands are the ones users paste first: every pyserving and tensorflow_model_server
command in its shell blocks parses with the real command line (flags, sub-commands, values), and
every file and Makefile target it names exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pyserving import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROGRAMS = ("pyserving", "tensorflow_model_server")


def _shell_blocks() -> list[str]:
    blocks, current, language = [], [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if language is None:
                language = line[3:].strip()
            else:
                if language in ("", "sh"):
                    blocks.append("\n".join(current))
                current, language = [], None
        elif language is not None:
            current.append(line)
    return blocks


def _commands() -> list[list[str]]:
    commands = []
    for block in _shell_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if first in PROGRAMS or first.endswith(tuple(f"bin/{p}" for p in PROGRAMS)):
                commands.append(shlex.split(line, comments=True))
    return commands


COMMANDS = _commands()


def test_the_readme_has_the_tutorial_commands():
    names = [" ".join(c[:3]) for c in COMMANDS]
    assert any("mnist export" in n for n in names) and any("mnist client" in n for n in names)
    assert any(c[0].endswith("tensorflow_model_server") for c in COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c[:3]) for c in COMMANDS])
def test_each_command_parses(words, monkeypatch):
    seen: list[argparse.Namespace] = []
    # Parse only: the command's function is replaced by one that records what it was given.
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        _recording(argparse.ArgumentParser.parse_args, seen))
    main = cli.model_server_main if words[0].endswith("tensorflow_model_server") else cli.main
    monkeypatch.setattr(cli, "serve", lambda options: 0)
    try:
        main(words[1:])
    except SystemExit as e:  # a usage error exits 2
        raise AssertionError(f"{' '.join(words)} does not parse: exit {e.code}") from None
    except Exception:
        pass  # parsed; running it (training, a server, a client) is for the tests of each command
    assert seen, f"{' '.join(words)} was never parsed"


def _recording(parse_args, seen):
    def parse(self, args=None, namespace=None):
        result = parse_args(self, args, namespace)
        seen.append(result)
        if getattr(result, "func", None) is not None:
            result.func = lambda _args: 0  # don't train or connect: parsing is what is checked
        return result
    return parse


def test_named_files_and_targets_exist():
    for path in re.findall(r"\b((?:deploy|docs|benchmarks)/[\w./-]+\.(?:py|md|yaml|png|json)|deploy/Dockerfile)", README):
        assert (ROOT / path).exists(), path
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make (\w+)`", README):
        assert re.search(rf"^{target}:", makefile, re.M), target
