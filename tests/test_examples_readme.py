"""examples/README.md, run as written: each example's setup block (its libraries, its version
folder, the server) and its request block, whose answers must be the ones the README shows.

Only what can't be the same on a test machine is rewritten: the venv is the one running the
tests, the example's `pip install -r` is checked against what `make test` installed from the same
file (.tools/, on the commands' PYTHONPATH), /tmp is a temporary folder, ports are free ones, and
../shared/mnist is $MNIST_DIR.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.server import free_port, port_open, system_tool, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOOLS = ROOT / ".tools"
README = ROOT / "examples" / "README.md"
INSTALLED = {"sklearn_iris": "sklearn", "ydf_forest": "ydf"}  # example -> its .tools folder


def _sections() -> dict[str, list[str]]:
    text = README.read_text()
    return {name: re.findall(r"```sh\n(.*?)```", body, re.S)
            for name, body in re.findall(r"^### (\w+)\n(.*?)(?=^### |\Z)", text, re.S | re.M)}


def _commands(block: str) -> list[tuple[str, str | None]]:
    """The block's commands (continuations joined), each with the "# answer" line after it."""
    commands: list[tuple[str, str | None]] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("# ") and commands:
            commands[-1] = (commands[-1][0], line[2:])
        elif line.strip():
            commands.append((" ".join(line.split()), None))
    return commands


def _close(got, want) -> bool:
    """The README's answer, its numbers rounded as it shows them."""
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and abs(got - want) <= 0.01
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_close, got, want))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    return got == want


def test_every_example_has_its_blocks():
    assert set(_sections()) == {p.name for p in (ROOT / "examples").iterdir() if p.is_dir()}


@pytest.mark.parametrize("example", sorted(_sections()))
def test_an_examples_readme_runs_as_written(example, tmp_path, mnist_dir):
    system_tool("curl")
    setup, asks = _sections()[example]
    rest, grpc = free_port(), free_port()

    def local(command: str) -> str:
        command = command.replace(".venv/bin/", f"{BIN}/").replace("/tmp/", f"{tmp_path}/")
        command = command.replace("../shared/mnist", mnist_dir).replace("8501", str(rest))
        return command + f" --port={grpc}" if "tensorflow_model_server" in command else command

    path = [str(TOOLS / folder) for e, folder in INSTALLED.items() if e == example]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    *steps, (serve, _) = _commands(setup)
    assert "tensorflow_model_server" in serve
    for command, _ in steps:
        requirements = re.fullmatch(r"\.venv/bin/pip install -r (\S+)", command)
        if requirements:  # make test installed this very file's pins: the same packages
            pins = [line for line in (ROOT / requirements[1]).read_text().splitlines() if line and line[0] != "#"]
            if example in INSTALLED:
                marker = TOOLS / INSTALLED[example] / ".installed"
                assert marker.read_text().split() == pins, f"make test installs {requirements[1]}'s pins"
            else:
                from importlib.metadata import version  # in the test venv already
                assert all(version(re.split(r"[=<>]", p)[0]) for p in pins)
            continue
        done = subprocess.run(["bash", "-c", local(command)], capture_output=True, text=True, timeout=300,
                              cwd=ROOT, env=env)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(["bash", "-c", f"exec {local(serve)}"], stdout=log, stderr=subprocess.STDOUT,
                              cwd=ROOT, env=env)
    try:
        wait_for(lambda: port_open(rest) and server.poll() is None, 120, f"the {example} server")
        answered = 0
        for command, answer in _commands(asks):
            done = subprocess.run(["bash", "-c", local(command)], capture_output=True, text=True, timeout=120,
                                  cwd=ROOT, env=env)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if answer is not None:
                assert _close(json.loads(done.stdout), json.loads(answer)), (command, done.stdout, answer)
                answered += 1
        assert answered, "every example shows what its request answers"
    finally:
        server.terminate()
        assert server.wait(30) == 0
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()
