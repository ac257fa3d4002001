"""The README's Quickstart, run as written: its shell lines, in order, through bash.

Only what can't be the same on a test machine is rewritten: the venv is the one running the
tests (its install line is what `make test` did), the model folder is a temporary one, the ports
are free ones, and ``../shared/mnist`` is $MNIST_DIR. The server line runs in the background, as in
its own shell; the Python block runs as pasted into an interpreter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from support.server import free_port, port_open, system_tool, wait_for

from pyserving.mnist.data import load_mnist

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _quickstart_blocks() -> tuple[list[str], str]:
    """The Quickstart's shell lines (continuations joined, comments dropped) and its Python block."""
    section = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    lines = []
    for language, text in blocks:
        if language == "sh":
            for line in text.replace("\\\n", " ").splitlines():
                line = line.split("  #", 1)[0].strip()
                if line and not line.startswith("#"):
                    lines.append(line)
    python = [text for language, text in blocks if language == "python"]
    assert len(python) == 1, "the Quickstart shows one Python block"
    return lines, python[0]


def _localised(line: str, tmp: Path, mnist_dir: str, grpc_port: int, rest_port: int) -> str:
    line = line.replace(".venv/bin/", f"{BIN}/").replace("/tmp/models/mnist", str(tmp / "models" / "mnist"))
    line = line.replace("../shared/mnist", mnist_dir)
    return re.sub(r"\b9000\b", str(grpc_port), re.sub(r"\b8501\b", str(rest_port), line))


def test_the_quickstart_runs_as_written(tmp_path, mnist_dir):
    lines, python = _quickstart_blocks()
    assert lines[0].startswith("python3.11 -m venv .venv")  # the install: make test's own step
    system_tool("curl")
    data = load_mnist(mnist_dir)
    grpc_port, rest_port = free_port(), free_port()
    commands = [_localised(line, tmp_path, mnist_dir, grpc_port, rest_port) for line in lines[1:]]
    server_lines = [c for c in commands if "tensorflow_model_server" in c]
    assert len(server_lines) == 1
    outputs: dict[str, str] = {}
    server = None
    log = open(tmp_path / "server.log", "wb")
    try:
        for command in commands:
            if command in server_lines:
                server = subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=log, stderr=subprocess.STDOUT)
                wait_for(lambda: port_open(grpc_port) and port_open(rest_port) and server.poll() is None, 120,
                         "the Quickstart's server")
                continue
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            outputs[command] = done.stdout
        said = dict(zip(lines[1:], (outputs.get(c, "") for c in commands)))
        client = next(out for line, out in said.items() if "mnist client" in line)
        rate = float(re.search(r"Inference error rate: ([\d.]+)%", client)[1])
        assert 5 < rate < 15, client  # the README says 9.6%; training is seeded, the data is MNIST's
        status = json.loads(next(out for line, out in said.items() if line.endswith("/v1/models/mnist")))
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        metadata = json.loads(next(out for line, out in said.items() if line.endswith("/metadata")))
        assert "predict_images" in metadata["metadata"]["signature_def"]["signature_def"]
        predict = json.loads(next(out for line, out in said.items() if ":predict" in line))
        scores = np.array(predict["predictions"][0])
        assert scores.shape == (10,) and abs(scores.sum() - 1) < 1e-4, scores  # softmax of a blank image
        # The Python block as pasted (its image: the test set's first).
        code = python.replace("localhost:9000", f"localhost:{grpc_port}").replace("../shared/mnist", mnist_dir)
        scope: dict = {}
        exec(compile(code, "README.md (Quickstart)", "exec"), scope)
        assert scope["scores"].shape == (1, 10) and scope["scores"].argmax() == data.test_labels[0]
    finally:
        if server is not None:
            server.terminate()
            assert server.wait(30) == 0
        log.close()
