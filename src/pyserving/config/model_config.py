"""Which models to serve: from --model_name/--model_base_path or a ModelServerConfig file.

Text protos are parsed here, at the edge, into plain dataclasses; nothing
below this module sees a config proto.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from google.protobuf import text_format

from pyserving.errors import ServingError
from pyserving.options import ServerOptions
from pyserving.storage.paths import inside

from .protos import ConfigFileError as ConfigError
from .protos import read_text_proto


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: latest N (default 1), all, or specific."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to aspire to, from those on disk."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            wanted = set(self.versions)
            return [v for v in ordered if v in wanted]
        return ordered[-max(self.num_versions, 1):] if ordered else []


@dataclass(frozen=True)
class LoggingSettings:
    """A model's logging_config: this share of its requests goes, with the responses, to
    TFRecord files named from filename_prefix (observability/request_log.py)."""

    sampling_rate: float
    filename_prefix: str


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: tuple[tuple[str, int], ...] = ()
    platform: str = "tensorflow"
    logging: LoggingSettings | None = None


def parse_model_server_config(text: str) -> list[ModelConfig]:
    """Parse a text-format ModelServerConfig into model configs."""
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise ConfigError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {e}") from e
    return models_from_proto(proto)


def models_from_proto(proto) -> list[ModelConfig]:
    """ModelConfigs from a tensorflow.serving.ModelServerConfig message."""
    if proto.WhichOneof("config") == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    models = [_model_config(c) for c in proto.model_config_list.config]
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Illegal to list model {dupes[0]} multiple times in config list")
    return models


def _model_config(c) -> ModelConfig:  # c: tensorflow.serving.ModelConfig
    if not c.name:
        raise ConfigError("every model config needs a name")
    if not c.base_path:
        raise ConfigError(f"model {c.name} has no base_path")
    if c.model_platform and c.model_platform != "tensorflow":
        raise ConfigError(
            f"model {c.name}: model_platform {c.model_platform!r} is not supported (only 'tensorflow')")
    which = c.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        policy = VersionPolicy(kind="all")
    elif which == "specific":
        policy = VersionPolicy(kind="specific", versions=tuple(c.model_version_policy.specific.versions))
    elif which == "latest":
        policy = VersionPolicy(num_versions=c.model_version_policy.latest.num_versions or 1)
    else:
        policy = VersionPolicy()
    return ModelConfig(name=c.name, base_path=c.base_path, policy=policy,
                       labels=tuple(sorted(c.version_labels.items())), logging=_logging(c))


def _logging(c) -> LoggingSettings | None:
    """logging_config { sampling_config { sampling_rate } log_collector_config { filename_prefix } }."""
    if not c.HasField("logging_config"):
        return None
    rate = c.logging_config.sampling_config.sampling_rate
    prefix = c.logging_config.log_collector_config.filename_prefix
    if not 0.0 <= rate <= 1.0:  # NaN too
        raise ConfigError(f"model {c.name}: logging_config sampling_rate must be between 0 and 1, not {rate}")
    if rate > 0 and not prefix:
        raise ConfigError(f"model {c.name}: logging_config needs log_collector_config {{ filename_prefix }}")
    if "://" in prefix:
        raise ConfigError(f"model {c.name}: log_collector_config filename_prefix must be a local path, "
                          f"not {prefix}")
    return LoggingSettings(rate, prefix)


def read_model_config_file(path: str, request_log_dir: str = "") -> list[ModelConfig]:
    from tensorflow_serving.config import model_server_config_pb2

    models = models_from_proto(read_text_proto(path, model_server_config_pb2.ModelServerConfig, "--model_config_file"))
    return confine_request_logs(models, request_log_dir)


def models_from_options(options: ServerOptions) -> list[ModelConfig]:
    if options.model_config_file:
        return read_model_config_file(options.model_config_file, options.request_log_dir)
    return [ModelConfig(name=options.model_name, base_path=options.model_base_path)]


def confine_request_logs(models: list[ModelConfig], log_dir: str) -> list[ModelConfig]:
    """Each logging_config's filename_prefix as an absolute path inside ``log_dir`` (--request_log_dir).

    A config file, and a reload from any client, chooses the prefix: without the operator's folder a
    logging_config is refused, and a prefix that would leave it (``..``, an absolute path elsewhere,
    a symlink out) is refused, so a config can never make the server write files elsewhere."""
    confined = []
    for m in models:
        if m.logging is None or not m.logging.filename_prefix:
            confined.append(m)
            continue
        if not log_dir:
            raise ConfigError(f"model {m.name}: logging_config writes request logs, which this server "
                              "writes only inside the folder named by --request_log_dir (not set)")
        confined.append(replace(m, logging=replace(m.logging, filename_prefix=_inside(
            log_dir, m.logging.filename_prefix, m.name))))
    return confined


def _inside(log_dir: str, prefix: str, model: str) -> str:
    if any(ord(c) < 32 or c == "\x7f" for c in prefix):
        raise ConfigError(f"model {model}: log_collector_config filename_prefix holds control characters")
    try:
        # Resolved now (symlinks followed); the files themselves are opened without following one.
        return inside(log_dir, prefix)
    except ValueError:
        raise ConfigError(f"model {model}: log_collector_config filename_prefix {prefix!r} is outside "
                          f"--request_log_dir={log_dir}") from None


__all__ = ["ConfigError", "LoggingSettings", "ModelConfig", "VersionPolicy", "ServingError",
           "models_from_options", "parse_model_server_config"]
