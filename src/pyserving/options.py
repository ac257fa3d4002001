"""ServerOptions: every TF Serving flag, declared once.

The CLI builds its parser from these fields, so a flag's name, type, default
and help live in exactly one place. Fields whose metadata says
``supported=False`` are accepted for compatibility and warned about when set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _flag(default: Any, help: str, supported: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "supported": supported})


@dataclass(frozen=True)
class ServerOptions:
    port: int = _flag(8500, "TCP port for the gRPC API (0 picks none when --grpc_socket_path is set)")
    grpc_socket_path: str = _flag("", "Also serve gRPC on this UNIX socket path")
    rest_api_port: int = _flag(0, "Port for the HTTP/REST API (0 disables it)")
    rest_api_num_threads: int = _flag(
        0, "Accepted: REST runs on the event loop and shares the worker pool (--grpc_max_threads)",
        supported=False)
    rest_api_timeout_in_ms: int = _flag(30000, "Timeout for a REST request, in milliseconds")
    rest_api_enable_cors_support: bool = _flag(False, "Answer CORS preflight and add CORS headers")
    enable_batching: bool = _flag(False, "Run concurrent requests to a version as one batch")
    allow_version_labels_for_unavailable_models: bool = _flag(
        False, "Allow labels to point at versions that are not yet available")
    batching_parameters_file: str = _flag("", "BatchingParameters text proto (needs --enable_batching)")
    enable_per_model_batching_parameters: bool = _flag(
        False, "Read batching_params.pbtxt from each version folder when present")
    model_config_file: str = _flag("", "ModelServerConfig text proto listing the models to serve")
    model_config_file_poll_wait_seconds: int = _flag(
        0, "Seconds between re-reads of --model_config_file (0 = read once)")
    model_name: str = _flag("default", "Name of the model (with --model_base_path)")
    model_base_path: str = _flag("", "Folder holding the model's numbered version folders")
    num_load_threads: int = _flag(0, "Threads that load models (0 = 2)")
    num_unload_threads: int = _flag(0, "Accepted: unloads run on the load threads", supported=False)
    max_num_load_retries: int = _flag(5, "Retries of a failed model load")
    load_retry_interval_micros: int = _flag(60_000_000, "Wait between load retries, in microseconds")
    file_system_poll_wait_seconds: int = _flag(
        1, "Seconds between polls of a model's base path (0 = poll once at start)")
    flush_filesystem_caches: bool = _flag(True, "Accepted for compatibility", supported=False)
    tensorflow_session_parallelism: int = _flag(0, "Threads per TensorFlow op pool (0 = automatic)")
    tensorflow_intra_op_parallelism: int = _flag(0, "TensorFlow intra-op threads (0 = automatic)")
    tensorflow_inter_op_parallelism: int = _flag(0, "TensorFlow inter-op threads (0 = automatic)")
    use_alts_credentials: bool = _flag(False, "ALTS credentials", supported=False)
    ssl_config_file: str = _flag(
        "", "SSLConfig text proto (PEM contents): TLS on --port and HTTPS on --rest_api_port")
    platform_config_file: str = _flag("", "PlatformConfigMap text proto", supported=False)
    per_process_gpu_memory_fraction: float = _flag(0.0, "GPU memory fraction", supported=False)
    saved_model_tags: str = _flag("serve", "Comma-separated MetaGraphDef tags to load")
    grpc_channel_arguments: str = _flag("", "Comma-separated grpc server arguments, key=value")
    grpc_max_threads: int = _flag(0, "Threads running inference (0 = automatic)")
    enable_model_warmup: bool = _flag(True, "Replay assets.extra/tf_serving_warmup_requests before serving")
    num_request_iterations_for_warmup: int = _flag(1, "Warmup replays per record")
    version: bool = _flag(False, "Print the version and exit")
    monitoring_config_file: str = _flag(
        "", "MonitoringConfig text proto: prometheus_config { enable path } on the REST port")
    remove_unused_fields_from_bundle_metagraph: bool = _flag(
        True, "Keep only the SignatureDefs of a loaded MetaGraphDef (false keeps the whole graph)")
    prefer_tflite_model: bool = _flag(False, "Serve model.tflite instead of saved_model.pb when present")
    num_tflite_pools: int = _flag(1, "TFLite interpreter pools per model (requests run in parallel across them)")
    num_tflite_interpreters_per_pool: int = _flag(1, "TFLite interpreters in each pool")
    use_tflite_model: bool = _flag(False, "Same as --prefer_tflite_model (deprecated in TF Serving)")
    num_tflite_interpreters: int = _flag(0, "Same as --num_tflite_interpreters_per_pool (deprecated in TF Serving)")
    enable_signature_method_name_check: bool = _flag(False, "Check signature method names")
    xla_cpu_compilation_enabled: bool = _flag(
        False, "XLA:CPU JIT: compile clusters of each model's graph (global_jit_level ON_1)")
    enable_profiler: bool = _flag(True, "Serve TensorFlow's profiler service on the gRPC port")
    tensorflow_session_config_file: str = _flag(
        "", "Text ConfigProto for every model's Session (the parallelism flags override it)")
    thread_pool_factory_config_file: str = _flag("", "ThreadPoolFactoryConfig", supported=False)
    mixed_precision: str = _flag("", "'bfloat16': oneDNN auto mixed precision in every model's graph")
    skip_initialize_tpu: bool = _flag(False, "TPU initialisation", supported=False)
    enable_grpc_healthcheck_service: bool = _flag(
        False, "Serve grpc.health.v1.Health: '' and each model name SERVING / NOT_SERVING")
    enable_serialization_as_tensor_content: bool = _flag(
        False, "Encode output tensors as tensor_content instead of typed fields")
    # pyserving's own flags (not in TF Serving):
    rest_api_max_request_bytes: int = _flag(
        1 << 30, "pyserving: largest REST request body accepted, after decompression (413 above it)")
    rest_api_max_decompressed_bytes: int = _flag(
        100 << 20, "pyserving: largest a gzip or deflate REST body may inflate to (413 above it; "
                   "TF Serving's 100 MB), inflated off the event loop")
    rest_api_header_timeout_in_ms: int = _flag(
        10000, "pyserving: a REST request's line and headers must arrive within this, from the "
               "connection's opening or the request's first byte, else the connection closes "
               "(0 = no limit)")
    rest_api_body_timeout_in_ms: int = _flag(
        -1, "pyserving: a REST request body must arrive within this after its headers, else 408 "
            "(-1 = --rest_api_timeout_in_ms, 0 = no limit)")
    rest_api_idle_timeout_in_ms: int = _flag(
        75000, "pyserving: an idle keep-alive REST connection closes after this (0 = after each response)")
    rest_api_http_core: str = _flag(
        "native", "pyserving: the REST port's HTTP server: 'native' (llhttp's parser on libuv, about "
                  "twice aiohttp's rate) or 'aiohttp'")
    grpc_max_message_bytes: int = _flag(
        1 << 30, "pyserving: largest gRPC request message accepted (RESOURCE_EXHAUSTED above it)")
    max_pending_requests: int = _flag(
        -1, "pyserving: requests waiting or running at once; past it new ones get UNAVAILABLE / 503 "
            "at once (-1 = 128 per request worker thread, 0 = no bound)")
    queue_delay_target_in_ms: int = _flag(
        50, "pyserving: load shedding: once requests have queued longer than this for a sustained "
            "interval (100 ms or 4 targets), new requests that would wait longer get UNAVAILABLE / 503 "
            "at once, until the queue drains (0 = off; off with --enable_batching, whose queue has "
            "its own bound)")
    queue_delay_target_applies_to_deadlines: bool = _flag(
        False, "pyserving: shed gRPC calls that carry a deadline toward --queue_delay_target_in_ms too "
               "(off: they are refused only when the queue grows toward their deadlines)")
    max_loaded_models: int = _flag(
        0, "pyserving: at most this many models loaded at once (0 = no limit, every model loaded at "
           "start); with a limit models load on their first request and the least recently used idle "
           "ones are unloaded to make room")
    max_loaded_model_memory_mb: int = _flag(
        0, "pyserving: at most this much memory (MiB) in loaded models, as estimated from their version "
           "folders' bytes (docs/model_budget.md; 0 = no limit); like --max_loaded_models, models load on "
           "their first request and the least recently used idle ones are unloaded to make room")
    preload_models: str = _flag(
        "", "pyserving: with a budget (--max_loaded_models, --max_loaded_model_memory_mb), comma-separated "
            "models loaded at start and never unloaded for room")
    enable_python_models: bool = _flag(
        False, "pyserving: serve version folders holding a model.py (Python around or instead of a "
               "SavedModel); it runs that code in the server, so only for folders you trust")
    log_format: str = _flag("text", "pyserving: text, or json for one JSON object a line")
    access_log: bool = _flag(
        False, "pyserving: log one line per inference request (protocol, API, model, version, status, "
               "latency; never the tensors) on the pyserving.access logger")
    model_cache_dir: str = _flag(
        "", "pyserving: local folder for copies of versions read from object storage (s3://, gs://, "
            "az://); default: a temporary folder, removed at exit")
    num_workers: int = _flag(
        1, "pyserving: serving processes sharing --port and --rest_api_port (SO_REUSEPORT), to use "
           "more than one core; each loads its own copy of every model (0 = one per CPU core)")
    request_log_max_file_bytes: int = _flag(
        64 << 20, "pyserving: request logs (a model's logging_config) start a new file before one would "
                  "grow past this many bytes")
    request_log_dir: str = _flag(
        "", "pyserving: the folder request logs are written in; a model's logging_config "
            "filename_prefix must lie inside it (a relative prefix is taken from it). Without it, "
            "a logging_config is refused")
    request_log_max_total_bytes: int = _flag(
        1 << 30, "pyserving: request logs stop (sampled requests are dropped and counted) once this "
                 "process has written this many bytes of them")
    profiler_log_dir: str = _flag(
        "", "pyserving: the folder the profiler service may write traces to (a client's "
            "repository_root must lie inside it); without it, traces come back in the response only "
            "(emit_xspace)")
    admin_token_file: str = _flag(
        "", "pyserving: a file holding a token; every control-plane call (config reloads, the "
            "profiler) then needs 'authorization: Bearer <token>' (docs/security.md)")
    enable_config_reload_rpc: bool = _flag(
        True, "pyserving: take HandleReloadConfigRequest (false: it answers UNIMPLEMENTED)")
    rest_api_enable_model_control: bool = _flag(
        False, "pyserving: take the V2 repository API's model loads and unloads on the REST port from "
               "any client (off: refused with 403 unless --admin_token_file is set and the token given; "
               "TF Serving has no REST control plane)")
    grpc_bind_address: str = _flag(
        "0.0.0.0", "pyserving: address the gRPC port listens on (127.0.0.1: this machine only; :: for IPv6)")
    rest_api_bind_address: str = _flag(
        "0.0.0.0", "pyserving: address the REST port listens on")

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.saved_model_tags.split(",") if t.strip())

    def unsupported_flags_set(self) -> list[str]:
        """Names of flags given a non-default value that pyserving does not act on."""
        return [
            f.name for f in dataclasses.fields(self)
            if not f.metadata["supported"] and getattr(self, f.name) != f.default
        ]


# --help shows the flags in these groups, in this order; each flag in exactly one
# (tests/test_cli.py). Help starting "pyserving:" marks the flags TF Serving doesn't have.
FLAG_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Serving and ports", ("port", "rest_api_port", "grpc_socket_path", "grpc_bind_address",
                           "rest_api_bind_address", "num_workers", "version")),
    ("Control plane", ("admin_token_file", "enable_config_reload_rpc", "rest_api_enable_model_control")),
    ("Models and config", (
        "model_name", "model_base_path", "model_config_file", "model_config_file_poll_wait_seconds",
        "file_system_poll_wait_seconds", "allow_version_labels_for_unavailable_models", "saved_model_tags",
        "enable_signature_method_name_check", "remove_unused_fields_from_bundle_metagraph", "model_cache_dir",
        "enable_python_models", "max_loaded_models", "max_loaded_model_memory_mb", "preload_models")),
    ("Loading and warmup", (
        "num_load_threads", "max_num_load_retries", "load_retry_interval_micros", "enable_model_warmup",
        "num_request_iterations_for_warmup")),
    ("Batching", ("enable_batching", "batching_parameters_file", "enable_per_model_batching_parameters")),
    ("REST", (
        "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "rest_api_max_request_bytes",
        "rest_api_max_decompressed_bytes",
        "rest_api_header_timeout_in_ms", "rest_api_body_timeout_in_ms", "rest_api_idle_timeout_in_ms",
        "rest_api_http_core")),
    ("gRPC", (
        "grpc_channel_arguments", "enable_grpc_healthcheck_service", "enable_serialization_as_tensor_content",
        "grpc_max_message_bytes")),
    ("Overload protection", ("max_pending_requests", "queue_delay_target_in_ms",
                             "queue_delay_target_applies_to_deadlines")),
    ("Monitoring and logging", (
        "monitoring_config_file", "enable_profiler", "profiler_log_dir", "log_format", "access_log", "request_log_dir",
        "request_log_max_file_bytes", "request_log_max_total_bytes")),
    ("TLS", ("ssl_config_file",)),
    ("Resources and performance", (
        "grpc_max_threads", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism", "tensorflow_session_config_file", "xla_cpu_compilation_enabled",
        "mixed_precision")),
    ("TensorFlow Lite", (
        "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool", "use_tflite_model",
        "num_tflite_interpreters")),
    ("Accepted for compatibility, no effect yet", (
        "rest_api_num_threads", "num_unload_threads", "flush_filesystem_caches", "use_alts_credentials",
        "platform_config_file", "per_process_gpu_memory_fraction", "thread_pool_factory_config_file",
        "skip_initialize_tpu")),
)
