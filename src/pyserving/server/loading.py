"""Loading a version as the manager asks: from a local copy of a remote one, with its warmup and
its batching, each timed in the metrics."""

from __future__ import annotations

import logging
import os
import time

from pyserving.config.model_config import ConfigError
from pyserving.errors import ServingError
from pyserving.observability.monitoring import Metrics
from pyserving.options import ServerOptions
from pyserving.runtime.loader import RuntimeSettings, ServableLoader
from pyserving.runtime.warmup import run_warmup, warmup_path
from pyserving.serving.batching import PER_MODEL_FILE, BatchingOptions, BatchingServable
from pyserving.storage.files import VersionCache, is_remote

log = logging.getLogger("pyserving.server")


class VersionLoader:
    def __init__(self, options: ServerOptions, cache: VersionCache, metrics: Metrics) -> None:
        self._options = options
        self._cache = cache
        self.metrics = metrics
        self._loader = ServableLoader(runtime_settings(options))
        self._batching_options = (BatchingOptions.from_file(options.batching_parameters_file)
                                  if options.batching_parameters_file else BatchingOptions())

    def load(self, path: str):
        """The manager's loader (runs in a load thread): a remote version from its local copy,
        which no worker deletes until the load, its warmup and its batching file are done."""
        if is_remote(path):
            with self._cache.using(path) as local:
                return self._load_folder(path, local)
        return self._load_folder(path, path)

    def _load_folder(self, path: str, folder: str):
        """Load, warm up, and time both; ``path`` names the version, ``folder`` holds its files."""
        start = time.perf_counter()
        try:
            servable = self._loader.load(folder)
        except Exception:
            self.metrics.record_load(path, time.perf_counter() - start, ok=False)
            raise
        seconds = time.perf_counter() - start
        self.metrics.record_load(path, seconds, ok=True)
        log.info("Loaded %s with the %s runtime in %.2f s; signatures: %s", path, servable.runtime, seconds,
                 ", ".join(sorted(servable.signature_defs)) or "none")
        warmup_file = warmup_path(folder) if self._options.enable_model_warmup else None
        if warmup_file:
            self._warm_up(servable, path, warmup_file)
        if self._options.enable_batching:
            return self._batched(servable, path, folder)
        return servable

    def _batched(self, servable, path: str, folder: str) -> BatchingServable:
        options = self._batching_options
        per_model = os.path.join(folder, PER_MODEL_FILE)
        if self._options.enable_per_model_batching_parameters and os.path.isfile(per_model):
            try:
                options = BatchingOptions.from_file(per_model)
            except ConfigError as e:
                servable.close()
                raise ServingError.invalid_argument(str(e)) from None
        return BatchingServable(servable, options,
                                lambda rows, padding, waited: self.metrics.record_batch(path, rows, padding, waited))

    def _warm_up(self, servable, path: str, warmup_file: str) -> None:
        start = time.perf_counter()
        try:
            count = run_warmup(servable, warmup_file, self._options.num_request_iterations_for_warmup)
        except Exception:
            self.metrics.record_warmup(path, time.perf_counter() - start, ok=False)
            servable.close()
            raise
        self.metrics.record_warmup(path, time.perf_counter() - start, ok=True)
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                 path, count)


def runtime_settings(o: ServerOptions) -> RuntimeSettings:
    return RuntimeSettings(
        tags=o.tags, session_config_file=o.tensorflow_session_config_file,
        session_parallelism=o.tensorflow_session_parallelism,
        intra_op_parallelism=o.tensorflow_intra_op_parallelism,
        inter_op_parallelism=o.tensorflow_inter_op_parallelism,
        xla_cpu_compilation=o.xla_cpu_compilation_enabled, mixed_precision=o.mixed_precision,
        keep_full_meta_graph=not o.remove_unused_fields_from_bundle_metagraph,
        prefer_tflite=o.prefer_tflite_model or o.use_tflite_model,
        tflite_pools=o.num_tflite_pools,
        tflite_interpreters_per_pool=o.num_tflite_interpreters_per_pool or o.num_tflite_interpreters,
        python_models=o.enable_python_models)
