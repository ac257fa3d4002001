from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("MNIST_DIR", str(REPO.parent / "shared" / "mnist"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    path = os.environ["MNIST_DIR"]
    assert os.path.exists(os.path.join(path, "t10k-images-idx3-ubyte.gz")), path
    return path
