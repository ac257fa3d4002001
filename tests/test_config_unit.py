"""Unit tests of config parsing, version policies, start-up checks and ServerOptions."""

from __future__ import annotations

import dataclasses

import pytest

from pyserving.config.model_config import (
    ConfigError,
    ModelConfig,
    VersionPolicy,
    models_from_options,
    parse_model_server_config,
    read_model_config_file,
)
from pyserving.options import ServerOptions
from pyserving.server.checks import check_options

CONFIG = """
model_config_list {
  config {
    name: "all_model"
    base_path: "/models/a"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "specific_model"
    base_path: "/models/s"
    model_version_policy { specific { versions: 3 versions: 1 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
  config {
    name: "latest_model"
    base_path: "/models/l"
    model_version_policy { latest { num_versions: 2 } }
  }
  config {
    name: "default_model"
    base_path: "/models/d"
  }
}
"""

PARSE_ERROR = "Error parsing text-format tensorflow.serving.ModelServerConfig"


def test_parse_several_models():
    models = parse_model_server_config(CONFIG)
    assert [m.name for m in models] == ["all_model", "specific_model", "latest_model",
                                        "default_model"]
    a, s, l, d = models
    assert a == ModelConfig("all_model", "/models/a", VersionPolicy(kind="all"))
    assert s.base_path == "/models/s"
    assert s.policy.kind == "specific" and sorted(s.policy.versions) == [1, 3]
    assert dict(s.labels) == {"stable": 1, "canary": 3}
    assert l.policy == VersionPolicy(kind="latest", num_versions=2)
    assert d.policy == VersionPolicy() and d.labels == () and d.platform == "tensorflow"


def test_parse_empty_config_and_latest_without_count():
    assert parse_model_server_config("") == []
    [m] = parse_model_server_config(
        'model_config_list { config { name: "x" base_path: "/x" '
        'model_version_policy { latest {} } } }')
    assert m.policy == VersionPolicy(kind="latest", num_versions=1)


@pytest.mark.parametrize("text", [
    "model_config_list { config { name: \"x\" base_path: \"/x\" }",  # unbalanced
    "model_config_list { config { nme: \"x\" } }",                   # unknown field
    "this is not a proto",
    'model_config_list { config { name: "x" base_path: "/x" model_version_policy { latest { num_versions: "two" } } } }',
])
def test_malformed_text(text):
    with pytest.raises(ConfigError) as info:
        parse_model_server_config(text)
    assert PARSE_ERROR in str(info.value)


def test_duplicate_names():
    text = ('model_config_list { config { name: "m" base_path: "/a" } '
            'config { name: "other" base_path: "/o" } config { name: "m" base_path: "/b" } }')
    with pytest.raises(ConfigError) as info:
        parse_model_server_config(text)
    assert "m" in str(info.value) and "multiple times" in str(info.value)


@pytest.mark.parametrize("text,fragment", [
    ('model_config_list { config { base_path: "/a" } }', "name"),
    ('model_config_list { config { name: "nobase" } }', "nobase"),
    ('model_config_list { config { name: "p" base_path: "/a" model_platform: "pytorch" } }',
     "pytorch"),
    ('custom_model_config { }', "custom_model_config"),
])
def test_invalid_model_configs(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_model_server_config(text)
    assert fragment in str(info.value)


def test_read_model_config_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(CONFIG)
    assert [m.name for m in read_model_config_file(str(path))][0] == "all_model"
    with pytest.raises(ConfigError) as info:
        read_model_config_file(str(tmp_path / "missing.config"))
    assert str(info.value) == (f"--model_config_file={tmp_path / 'missing.config'}: cannot read the file: "
                               "No such file or directory")


def test_models_from_options(tmp_path):
    [m] = models_from_options(ServerOptions(model_name="mnist", model_base_path="/m"))
    assert (m.name, m.base_path, m.policy) == ("mnist", "/m", VersionPolicy())
    path = tmp_path / "c.config"
    path.write_text(CONFIG)
    models = models_from_options(ServerOptions(model_config_file=str(path), model_base_path="/m"))
    assert len(models) == 4


@pytest.mark.parametrize("policy,available,expected", [
    (VersionPolicy(), [3, 1, 2], [3]),
    (VersionPolicy(num_versions=2), [3, 10, 1, 2], [3, 10]),
    (VersionPolicy(num_versions=5), [2, 1], [1, 2]),
    (VersionPolicy(num_versions=0), [2, 1], [2]),
    (VersionPolicy(), [], []),
    (VersionPolicy(kind="all"), [3, 1, 2], [1, 2, 3]),
    (VersionPolicy(kind="all"), [], []),
    (VersionPolicy(kind="specific", versions=(1, 3, 9)), [1, 2, 3, 4], [1, 3]),
    (VersionPolicy(kind="specific", versions=(9,)), [1, 2], []),
])
def test_version_policy_select(policy, available, expected):
    assert policy.select(available) == expected


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(), "model_base_path"),
    (dict(model_base_path="/m", batching_parameters_file="/b.pbtxt"), "--enable_batching"),
    (dict(model_base_path="/m", port=9000, rest_api_port=9000), "--rest_api_port"),
    (dict(model_base_path="/m", port=0), "--grpc_socket_path"),
    (dict(model_base_path="/m", rest_api_header_timeout_in_ms=-5), "--rest_api_header_timeout_in_ms"),
    (dict(model_base_path="/m", rest_api_idle_timeout_in_ms=-1), "--rest_api_idle_timeout_in_ms"),
    (dict(model_base_path="/m", rest_api_body_timeout_in_ms=-2), "--rest_api_body_timeout_in_ms"),
    (dict(model_base_path="/m", max_pending_requests=-2), "--max_pending_requests"),
    (dict(model_base_path="/m", grpc_max_message_bytes=0), "--grpc_max_message_bytes"),
])
def test_check_options_rejects(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        check_options(ServerOptions(**kwargs))
    assert fragment in str(info.value)


@pytest.mark.parametrize("kwargs", [
    dict(model_base_path="/m"),
    dict(model_config_file="/c.config"),
    dict(model_base_path="/m", port=9000, rest_api_port=9001),
    dict(model_base_path="/m", enable_batching=True),
    dict(model_base_path="/m", port=0, grpc_socket_path="/tmp/s.sock"),
])
def test_check_options_accepts(kwargs):
    assert check_options(ServerOptions(**kwargs)) is None  # must not raise


def test_unsupported_flags_set():
    assert ServerOptions().unsupported_flags_set() == []
    opts = ServerOptions(use_alts_credentials=True, xla_cpu_compilation_enabled=True, model_base_path="/m",
                         rest_api_port=8501, flush_filesystem_caches=True, enable_batching=True,
                         skip_initialize_tpu=True)
    assert opts.unsupported_flags_set() == ["use_alts_credentials", "skip_initialize_tpu"]
    opts = ServerOptions(flush_filesystem_caches=False, per_process_gpu_memory_fraction=0.5)
    # declaration order
    assert opts.unsupported_flags_set() == ["flush_filesystem_caches",
                                            "per_process_gpu_memory_fraction"]


def test_every_flag_has_help_and_support_metadata():
    for f in dataclasses.fields(ServerOptions):
        assert f.metadata["help"], f.name
        assert isinstance(f.metadata["supported"], bool), f.name


def test_tags():
    assert ServerOptions().tags == ("serve",)
    assert ServerOptions(saved_model_tags="serve, gpu,,").tags == ("serve", "gpu")


def test_batching_parameters_file(tmp_path):
    from pyserving.config.model_config import ConfigError
    from pyserving.serving.batching import BatchingOptions

    good = tmp_path / "batching.pbtxt"
    good.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 5000 } "
                    "num_batch_threads { value: 2 } allowed_batch_sizes: 4 allowed_batch_sizes: 8")
    options = BatchingOptions.from_file(str(good))
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (8, 5000, 2)
    assert options.max_enqueued_batches == 10  # TF Serving's default
    assert [options.padded_size(n) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert check_options(ServerOptions(model_base_path="/m", enable_batching=True,
                                       batching_parameters_file=str(good))) is None
    bad = tmp_path / "bad.pbtxt"
    for text, needle in [("max_batch_size { value: }", "Error parsing text-format tensorflow.serving.BatchingParameters"),
                         ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
                         ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 2",
                          "increasing")]:
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            check_options(ServerOptions(model_base_path="/m", enable_batching=True,
                                        batching_parameters_file=str(bad)))
        assert needle in str(info.value)
