"""TensorFlow's start-up: the environment it reads at import, and the import without its C++ noise.

Importing TensorFlow and probing for GPUs prints lines on every CPU machine (oneDNN's notice, "Could
not find cuda drivers", and an E-level "failed call to cuInit" that trips log alerts) before absl's
logging is set up, so TF_CPP_MIN_LOG_LEVEL can't silence them. Here the import and the device probe
run with the process's stderr (fd 2) pointed at a temporary file; what was written is replayed if
either fails. A user who set TF_CPP_MIN_LOG_LEVEL asked for TensorFlow's logs and gets them (and
one who set TF_ENABLE_ONEDNN_OPTS, the kernels asked for).
"""

from __future__ import annotations

import os
import sys
import tempfile


def claim_log_level() -> bool:
    """Set TensorFlow's C++ log level (WARNING and up) unless the user chose one, before anything
    imports TensorFlow (it reads the level then); whether its start-up lines should stay quiet."""
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return quiet


def claim_allocator(budget: bool) -> bool:
    """With a budget of loaded models, turn oneDNN's kernels off unless the user chose
    (TF_ENABLE_ONEDNN_OPTS), before anything imports TensorFlow: with them on, TensorFlow's CPU
    tensors come from oneDNN's pooling allocator, which keeps the high-water mark of big tensors
    for good, so an evicted model's memory never went back (docs/model_budget.md: +100 MiB for
    good over 1,000 load/unload cycles of a 100 MB model, flat with them off). TF Serving's own
    builds run without oneDNN too. Whether it turned them off (for the caller to log)."""
    if budget and "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        return True
    return False


def import_tensorflow(quiet: bool, probe_devices: bool = True) -> None:
    """Import TensorFlow and find its devices, once, before any model loads.

    ``probe_devices=False`` before --num_workers forks: CUDA, once initialised, can't be used
    by a forked child, so each worker probes (and prints) on its own."""
    if not quiet:
        _import_and_probe(probe_devices)
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            _import_and_probe(probe_devices)
        except BaseException:
            _restore(saved)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        _restore(saved)


def _import_and_probe(probe_devices: bool) -> None:
    import tensorflow as tf

    if probe_devices:
        tf.config.list_physical_devices()  # the CUDA probe (and its cuInit error) happens here, once


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
