"""TF Serving's start-up checks of the flags: a bad flag or file ends the start in one line.

Each file a flag names is read here with the parser that will use it, so the server never
starts half-way on a file it can't use.
"""

from __future__ import annotations

import ipaddress
import os

from pyserving.config.model_config import ConfigError, ModelConfig
from pyserving.errors import ServingError
from pyserving.observability.monitoring import PrometheusSettings
from pyserving.observability.tracing import TracingSettings
from pyserving.options import ServerOptions
from pyserving.protocols.control_plane import TokenFileError, read_token
from pyserving.serving.batching import BatchingOptions

from .tls import TlsConfig


def check_options(options: ServerOptions) -> None:
    """TF Serving's start-up checks; raises ConfigError with a one-line reason."""
    _check_tracing()
    if not options.model_config_file and not options.model_base_path:
        raise ConfigError("Both server_model_config_file and model_base_path are empty: "
                          "pass --model_base_path or --model_config_file")
    if options.batching_parameters_file and not options.enable_batching:
        raise ConfigError("--batching_parameters_file requires --enable_batching")
    if options.rest_api_port and options.rest_api_port == options.port:
        raise ConfigError("--rest_api_port cannot be the same as --port; "
                          "use a different port for the REST API")
    if options.grpc_max_message_bytes == 0 or options.grpc_max_message_bytes < -1:
        raise ConfigError("--grpc_max_message_bytes must be positive (or -1 for no limit)")
    for flag in ("rest_api_header_timeout_in_ms", "rest_api_idle_timeout_in_ms"):
        if getattr(options, flag) < 0:
            raise ConfigError(f"--{flag} must be 0 (no limit) or positive")
    if options.rest_api_body_timeout_in_ms < -1:
        raise ConfigError("--rest_api_body_timeout_in_ms must be -1 (as --rest_api_timeout_in_ms), "
                          "0 (no limit) or positive")
    if options.max_pending_requests < -1:
        raise ConfigError("--max_pending_requests must be -1 (automatic), 0 (no bound) or positive")
    if options.queue_delay_target_in_ms < 0:
        raise ConfigError("--queue_delay_target_in_ms must be 0 (off) or positive")
    for flag in ("max_loaded_models", "max_loaded_model_memory_mb"):
        if getattr(options, flag) < 0:
            raise ConfigError(f"--{flag} must be 0 (no limit) or positive")
    if options.preload_models and not (options.max_loaded_models or options.max_loaded_model_memory_mb):
        raise ConfigError("--preload_models needs a budget (--max_loaded_models or --max_loaded_model_memory_mb): "
                          "without one every model is loaded at start")
    if options.rest_api_http_core not in ("native", "aiohttp"):
        raise ConfigError(f"--rest_api_http_core must be native or aiohttp, not {options.rest_api_http_core!r}")
    if options.log_format not in ("text", "json"):
        raise ConfigError(f"--log_format must be text or json, not {options.log_format!r}")
    if options.num_workers < 0:
        raise ConfigError("--num_workers must be 0 (one per CPU core) or positive")
    if options.request_log_max_file_bytes <= 0:
        raise ConfigError("--request_log_max_file_bytes must be positive")
    if options.rest_api_max_decompressed_bytes <= 0:
        raise ConfigError("--rest_api_max_decompressed_bytes must be positive")
    if options.request_log_max_total_bytes <= 0:
        raise ConfigError("--request_log_max_total_bytes must be positive")
    if options.request_log_dir and os.path.exists(options.request_log_dir) and \
            not os.path.isdir(options.request_log_dir):
        raise ConfigError(f"--request_log_dir={options.request_log_dir} is not a folder")
    for flag in ("grpc_bind_address", "rest_api_bind_address"):
        _check_address(flag, getattr(options, flag))
    if options.admin_token_file:
        try:
            read_token(options.admin_token_file)
        except TokenFileError as e:
            raise ConfigError(str(e)) from None
    if options.port == 0 and not options.grpc_socket_path:
        raise ConfigError("--port=0 needs --grpc_socket_path: gRPC must listen somewhere")
    if options.ssl_config_file:
        TlsConfig.from_file(options.ssl_config_file)  # bad file or PEM material: ConfigError
    if options.batching_parameters_file:
        BatchingOptions.from_file(options.batching_parameters_file)  # malformed or invalid: ConfigError
    if options.monitoring_config_file:
        PrometheusSettings.from_file(options.monitoring_config_file)  # malformed: ConfigError
    if options.mixed_precision not in ("", "bfloat16"):
        raise ConfigError(f"--mixed_precision={options.mixed_precision} is not supported: "
                          "the only mode is bfloat16")
    if options.tensorflow_session_config_file:
        # Imported only when the flag is given: it imports TensorFlow, which the supervisor of
        # --num_workers and a failing start never need.
        from pyserving.runtime.loader import RuntimeSettings, session_config

        try:
            session_config(RuntimeSettings(session_config_file=options.tensorflow_session_config_file))
        except ServingError as e:
            raise ConfigError(e.message) from None


def _check_address(flag: str, address: str) -> None:
    if address == "localhost":
        return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"--{flag}={address!r} is not an IP address (e.g. 0.0.0.0, 127.0.0.1, ::)") from None


def check_preload(options: ServerOptions, models: list[ModelConfig]) -> None:
    """--preload_models must name configured models, and leave room under --max_loaded_models."""
    preload = [n.strip() for n in options.preload_models.split(",") if n.strip()]
    unknown = sorted(set(preload) - {m.name for m in models})
    if unknown:
        raise ConfigError(f"--preload_models names {', '.join(unknown)}, not in the model config")
    if options.max_loaded_models and len(set(preload)) >= options.max_loaded_models:
        raise ConfigError(f"--preload_models names {len(set(preload))} models: --max_loaded_models="
                          f"{options.max_loaded_models} leaves no room for any other to load")


def _check_tracing() -> None:
    """OTEL_* asking for traces this server can't send ends the start, as a bad flag does."""
    try:
        settings = TracingSettings.from_environment(os.environ)
        if settings is not None:
            settings.check_installed()
    except ServingError as e:
        raise ConfigError(e.message) from None
