"""Load a version folder as the right kind of servable, with the server's runtime settings.

As in TF Serving, ``model.tflite`` is served when ``--prefer_tflite_model`` is
set and the folder has one; otherwise the SavedModel. The Session options come
from the flags the way TF Serving builds them: ``--tensorflow_session_config_file``
first, then the parallelism flags over it, then XLA and mixed precision.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ServingError
from ..storage.layout import SERVABLE_FILES
from .python_model import MODEL_FILE, has_python_model, load_python_model
from .servable import Servable

log = logging.getLogger("pyserving.runtime")

TFLITE_FILE = "model.tflite"
MIXED_PRECISION_MODES = ("", "bfloat16")
# inter_op_parallelism_threads < 0 runs a request's ops in its own request thread. Requests
# already run in parallel, and the hand-off to a pool costs more than small models take
# (half_plus_two: 10 µs a call inline, 90 µs through the pool), so it is "automatic" here.
INLINE = -1


@dataclass(frozen=True)
class RuntimeSettings:
    """What every load needs from the flags; plain data, built once by the server."""

    tags: tuple[str, ...] = ("serve",)
    session_config_file: str = ""
    session_parallelism: int = 0
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    xla_cpu_compilation: bool = False
    mixed_precision: str = ""
    keep_full_meta_graph: bool = False  # --remove_unused_fields_from_bundle_metagraph=false
    prefer_tflite: bool = False
    tflite_pools: int = 1
    tflite_interpreters_per_pool: int = 1
    python_models: bool = False  # --enable_python_models: a folder's model.py may run


def session_config(settings: RuntimeSettings) -> Any:
    """The ConfigProto every version's Session is created with."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    # Soft placement lets exports pinned to a GPU (TF Serving's half_plus_two_gpu) run on a CPU
    # host, as TF2 does by default; a config file may still turn it off.
    config = config_pb2.ConfigProto(allow_soft_placement=True)
    if settings.session_config_file:
        try:
            with open(settings.session_config_file, encoding="utf-8") as f:
                text_format.Merge(f.read(), config)
        except (OSError, text_format.ParseError, UnicodeDecodeError) as e:
            raise ServingError.invalid_argument(
                f"Error parsing text-format tensorflow.ConfigProto in "
                f"--tensorflow_session_config_file={settings.session_config_file}: {e}") from None
    if settings.session_parallelism:
        config.intra_op_parallelism_threads = settings.session_parallelism
        config.inter_op_parallelism_threads = settings.session_parallelism
    if settings.intra_op_parallelism:
        config.intra_op_parallelism_threads = settings.intra_op_parallelism
    if settings.inter_op_parallelism:
        config.inter_op_parallelism_threads = settings.inter_op_parallelism
    if not config.inter_op_parallelism_threads:
        config.inter_op_parallelism_threads = INLINE
    if settings.xla_cpu_compilation:
        config.graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.ON_1
    if settings.mixed_precision == "bfloat16":
        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = \
            rewriter_config_pb2.RewriterConfig.ON
    return config


def bfloat16_rewrite_runs() -> bool:
    """Whether oneDNN's bfloat16 rewrite acts on this CPU, asked of TensorFlow itself.

    TensorFlow applies it only where oneDNN supports bfloat16 (AVX-512F or AVX-NE-CONVERT on x86);
    elsewhere the graph keeps float32 and the flag silently does nothing."""
    from tensorflow.python.framework import dtypes
    from tensorflow.python.util import _pywrap_utils

    try:
        return bool(_pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(dtypes.bfloat16))
    except (AttributeError, TypeError):  # a TensorFlow without the check: its older rule
        return "avx512f" in _cpu_flags()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _warn_if_bfloat16_inert(config: Any) -> None:
    from tensorflow.core.protobuf import rewriter_config_pb2

    wanted = (config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16
              == rewriter_config_pb2.RewriterConfig.ON)
    if wanted and not bfloat16_rewrite_runs():
        log.warning("bfloat16 mixed precision has no effect on this CPU: TensorFlow's oneDNN rewrite "
                    "needs AVX-512F or AVX-NE-CONVERT, so models run in float32")


def has_tflite_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, TFLITE_FILE))


def has_model_file(path: str) -> bool:
    """A SavedModel or a TFLite model (beside a model.py, the model it wraps)."""
    return any(os.path.isfile(os.path.join(path, f)) for f in SERVABLE_FILES)


class ServableLoader:
    """Loads version folders; made once per server, called from the load threads."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        from .op_libraries import OpLibraries

        # Before any model loads, in every process that loads them (TF Serving links these in).
        self.op_libraries = OpLibraries().register()
        log.info("Op libraries: %s", self.op_libraries.summary())
        self._session_config = session_config(settings)
        _warn_if_bfloat16_inert(self._session_config)
        if settings.xla_cpu_compilation:
            from tensorflow.python import pywrap_tfe

            # global_jit_level alone clusters for GPUs only; this extends it to the CPU.
            pywrap_tfe.TF_SetTfXlaCpuGlobalJit(True)

    def load(self, path: str) -> Servable:
        if has_python_model(path):
            if not self.settings.python_models:  # refused before anything in the folder is read
                raise ServingError.refused_by_policy(
                    f"{path} holds a Python model ({MODEL_FILE}); this server runs model code only with "
                    "--enable_python_models")
            return load_python_model(path, self._load_model if has_model_file(path) else None)
        return self._load_model(path)

    def _load_model(self, path: str) -> Servable:
        s = self.settings
        if s.prefer_tflite and has_tflite_model(path):
            from .tflite import load_tflite

            return load_tflite(os.path.join(path, TFLITE_FILE), path, s.tflite_pools,
                               s.tflite_interpreters_per_pool)
        from .saved_model import load_saved_model

        return load_saved_model(path, s.tags, self._session_config, s.keep_full_meta_graph,
                                self.op_libraries)
