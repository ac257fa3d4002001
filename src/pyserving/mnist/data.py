"""Load the MNIST handwritten-digit set from its gzip-compressed IDX files."""

from __future__ import annotations

import gzip
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIRROR_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "pyserving" / "mnist"

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the rank.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_PIXELS = 28 * 28


class MnistFormatError(ValueError):
    """A MNIST file is missing, truncated or not the IDX file it claims to be."""


@dataclass
class MnistData:
    train_images: np.ndarray  # float32 [60000, 784], values in [0, 1]
    train_labels: np.ndarray  # int64 [60000]
    test_images: np.ndarray  # float32 [10000, 784], values in [0, 1]
    test_labels: np.ndarray  # int64 [10000]


def resolve_data_dir(data_dir: str | None = None) -> Path:
    """Pick the folder: explicit argument, then $MNIST_DIR, then the download cache."""
    if data_dir:
        return Path(data_dir)
    env_dir = os.environ.get("MNIST_DIR")
    if env_dir:
        return Path(env_dir)
    try:
        return download_mnist(DEFAULT_CACHE_DIR, MIRROR_URL)
    except OSError as e:  # offline, or the mirror is down: say where we looked and what to do
        raise MnistFormatError(
            f"MNIST is not in {DEFAULT_CACHE_DIR} and could not be downloaded from {MIRROR_URL} "
            f"({getattr(e, 'reason', None) or e}); no --data-dir was given and $MNIST_DIR is not set. "
            "Point --data-dir (or $MNIST_DIR) at a folder holding the four MNIST .gz files, "
            "e.g. --data-dir ../shared/mnist") from None


def download_mnist(target_dir: Path, base_url: str = MIRROR_URL) -> Path:
    """Fetch any of the four files not already cached into target_dir."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        path = target_dir / name
        if path.exists():
            continue
        # Download next to the target and rename, so an interrupted fetch never
        # leaves a truncated file that would be trusted on the next run.
        partial = path.with_name(f".{name}.{os.getpid()}.part")
        try:
            urllib.request.urlretrieve(base_url + name, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return target_dir


def _read_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise MnistFormatError(
            f"MNIST file {path} is missing. --data-dir names a folder holding the four MNIST files "
            f"({', '.join(FILES)}); drop --data-dir (and unset MNIST_DIR) to download them once "
            "into the cache instead")
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError) or EOFError for truncation.
        raise MnistFormatError(f"MNIST file {path} is not a valid gzip file: {exc}") from exc


def _parse_idx(path: Path, magic: int, rank: int) -> np.ndarray:
    """Decode an unsigned-byte IDX file, checking its header against its size."""
    raw = _read_gzip(path)
    if len(raw) < 4:
        raise MnistFormatError(f"MNIST file {path} is too short for an IDX header ({len(raw)} bytes)")
    # Magic first: a swapped images/labels file is a likelier mistake than a short one.
    found = int(np.frombuffer(raw, dtype=">u4", count=1)[0])
    if found != magic:
        raise MnistFormatError(f"MNIST file {path} has IDX magic number {found:#010x}, expected {magic:#010x}")
    header_len = 4 * (1 + rank)
    if len(raw) < header_len:
        raise MnistFormatError(f"MNIST file {path} is too short for an IDX header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header_len != expected:
        raise MnistFormatError(
            f"MNIST file {path} declares shape {dims} ({expected} bytes) "
            f"but holds {len(raw) - header_len} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """Images as float32 [N, 784] scaled to [0, 1], the tutorial's input layout."""
    pixels = _parse_idx(path, IMAGES_MAGIC, rank=3)
    if pixels.shape[1:] != (28, 28):
        raise MnistFormatError(f"MNIST file {path} holds images of shape {pixels.shape[1:]}, expected (28, 28)")
    return pixels.reshape(-1, IMAGE_PIXELS).astype(np.float32) / np.float32(255.0)


def read_labels(path: Path) -> np.ndarray:
    labels = _parse_idx(path, LABELS_MAGIC, rank=1).astype(np.int64)
    if labels.size and labels.max() > 9:
        raise MnistFormatError(f"MNIST file {path} holds label {labels.max()}, expected digits 0-9")
    return labels


def _load_split(folder: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_images(folder / images_name)
    labels = read_labels(folder / labels_name)
    if len(images) != len(labels):
        raise MnistFormatError(
            f"MNIST files {images_name} and {labels_name} in {folder} disagree: "
            f"{len(images)} images vs {len(labels)} labels"
        )
    return images, labels


def load_mnist(data_dir: str | None = None) -> MnistData:
    """Load the training and test sets; see resolve_data_dir for where from."""
    folder = resolve_data_dir(data_dir)
    train_images, train_labels = _load_split(folder, TRAIN_IMAGES, TRAIN_LABELS)
    test_images, test_labels = _load_split(folder, TEST_IMAGES, TEST_LABELS)
    return MnistData(train_images, train_labels, test_images, test_labels)
