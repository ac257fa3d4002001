"""The docs hold: they name every flag the server takes (so the compatibility table can't fall
behind), and their runnable blocks run as written, answering what the docs say they answer."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys
from pathlib import Path

from support.server import TFS_TESTDATA, free_port, port_open, system_tool, wait_for

from pyserving.options import ServerOptions

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC = DOCS / "compatibility.md"
BIN = Path(sys.executable).parent
# Where a doc's reader has TF Serving's repository cloned, and where this machine has its test models.
CLONED_TESTDATA = "$PWD/serving/tensorflow_serving/servables/tensorflow/testdata"


def test_every_flag_is_documented():
    text = DOC.read_text()
    missing = [f.name for f in dataclasses.fields(ServerOptions) if f"`--{f.name}`" not in text]
    assert missing == []


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def _commands(block: str) -> list[tuple[str, str | None]]:
    """A shell block's commands (continuations joined), each with the "# answer" line after it."""
    lines = block.replace("\\\n", " ").splitlines()
    commands: list[tuple[str, str | None]] = []
    for line in lines:
        if line.startswith("# ") and commands and commands[-1][1] is None:
            commands[-1] = (commands[-1][0], line[2:])
        elif line.strip() and not line.startswith("#"):
            commands.append((line.strip(), None))
    return commands


def test_the_open_inference_quickstart_runs_as_written(tmp_path):
    """docs/open_inference.md's first blocks: the server, TF Serving's and V2's curl with the
    answers the doc shows, and Triton's Python client printing what the doc says."""
    system_tool("curl")
    blocks = _blocks((DOCS / "open_inference.md").read_text())
    (_, server_block), (_, requests_block), (language, python) = blocks[:3]
    assert language == "python"
    grpc_port, rest_port = free_port(), free_port()

    def local(command: str) -> str:
        command = command.replace(CLONED_TESTDATA, str(TFS_TESTDATA)).replace("tensorflow_model_server", str(BIN / "tensorflow_model_server"))
        return command.replace("8500", str(grpc_port)).replace("8501", str(rest_port))

    [(start, _)] = _commands(server_block)
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(["bash", "-c", f"exec {local(start)}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(rest_port) and server.poll() is None, 120, "the doc's server")
        commands = _commands(requests_block)
        assert len(commands) == 2 and all(answer for _, answer in commands), commands
        for command, answer in commands:
            done = subprocess.run(["bash", "-c", local(command)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and json.loads(done.stdout) == json.loads(answer), (command, done.stdout)
        printed = re.search(r"print\(.*#\s*(.+)$", python, re.M).group(1)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(local(python), "docs/open_inference.md", "exec"), {})
        assert " ".join(out.getvalue().split()) == " ".join(printed.split()), out.getvalue()
    finally:
        server.terminate()
        assert server.wait(30) == 0
        log.close()


# The runnable blocks (their first lines) and the tests that run them as written.
EXECUTED = {
    ("README.md", "python3.11 -m venv .venv && .venv/bin/pip install -e ."): "test_readme_quickstart.py",
    ("README.md", ".venv/bin/pyserving mnist client --data-dir ../shared/mnist --server localhost:9000 "
                  "--num_tests 1000 --concurrency 4"): "test_readme_quickstart.py",
    ("README.md", "from pyserving.client import Client"): "test_readme_quickstart.py",
    ("docs/open_inference.md", "tensorflow_model_server --port=8500 --rest_api_port=8501 "
                               "--model_name=half_plus_two \\"): "test_the_open_inference_quickstart_runs_as_written",
    ("docs/open_inference.md", "curl -d '{\"instances\": [1.0, 2.0, 5.0]}' "
                               "localhost:8501/v1/models/half_plus_two:predict"): "test_the_open_inference_quickstart_runs_as_written",
    ("docs/open_inference.md", "import numpy as np, tritonclient.http as httpclient"):
        "test_the_open_inference_quickstart_runs_as_written",
}
RUNNABLE = {"sh", "python", "json"}
DATA = {"text", "yaml", "proto"}  # configs, layouts, diagrams: nothing to run


def test_every_block_in_the_docs_runs_in_the_tests_or_says_it_is_a_fragment():
    """A shell, Python or JSON block in README.md or docs/ is run as written by a test (EXECUTED),
    or its info string says `fragment` (it needs Docker, a cluster or the reader's own paths);
    every other block says what it is (text, yaml)."""
    root = DOCS.parent
    found = set()
    for path in [root / "README.md", *sorted(DOCS.glob("*.md"))]:
        for info, body in re.findall(r"^```([^\n]*)\n(.*?)^```$", path.read_text(), re.S | re.M):
            words = info.split()
            where = (str(path.relative_to(root)), body.splitlines()[0] if body else "")
            assert words and (words[0] in RUNNABLE | DATA), f"{where}: say what the block is (```sh, ```text...)"
            if words[0] in RUNNABLE and "fragment" not in words:
                assert where in EXECUTED, f"{where}: run it in a test (EXECUTED) or mark it ```{words[0]} fragment"
                found.add(where)
    assert found == set(EXECUTED), set(EXECUTED) - found
