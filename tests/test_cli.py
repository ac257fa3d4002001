"""tensorflow_model_server's command line: flags, bad combinations, sockets, shutdown."""

from __future__ import annotations

import dataclasses
import subprocess

import grpc
import numpy as np
import pytest
import tensorflow as tf
from support import models
from support.server import BIN_DIR, ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.cli import model_server_main
from pyserving.options import FLAG_GROUPS, ServerOptions


def run_server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN_DIR / "tensorflow_model_server"), *args],
                          capture_output=True, text=True, timeout=60)


def test_version_flag():
    out = run_server_cli("--version")
    assert out.returncode == 0
    assert "TensorFlow ModelServer" in out.stdout and "pyserving" in out.stdout


@pytest.mark.parametrize("args, needle", [
    ([], "--model_base_path or --model_config_file"),
    (["--model_base_path=/m", "--batching_parameters_file=/b"], "requires --enable_batching"),
    (["--model_base_path=/m", "--port=8600", "--rest_api_port=8600"], "cannot be the same"),
    (["--model_base_path=/m", "--max_loaded_model_memory_mb=-1"], "must be 0 (no limit) or positive"),
    (["--model_base_path=/m", "--preload_models=m"], "--preload_models needs a budget"),
    (["--model_name=m", "--model_base_path=/m", "--max_loaded_models=1", "--preload_models=x"],
     "--preload_models names x, not in the model config"),
    (["--model_name=m", "--model_base_path=/m", "--max_loaded_models=1", "--preload_models=m"],
     "leaves no room for any other to load"),
])
def test_bad_combinations_exit_with_one_line(args, needle):
    out = run_server_cli(*args)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]


def test_malformed_config_file(tmp_path):
    config = tmp_path / "bad.config"
    config.write_text("model_config_list { config { name: 'm' base_path: } }")
    out = run_server_cli(f"--model_config_file={config}")
    assert out.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in out.stderr
    missing = run_server_cli(f"--model_config_file={tmp_path / 'missing.config'}")
    assert missing.returncode != 0  # not a parse error: the flag, the file, and why it can't be read
    assert f"--model_config_file={tmp_path / 'missing.config'}: cannot read the file: No such file or directory" \
        in missing.stderr, missing.stderr


def test_unknown_flag_is_rejected():
    out = run_server_cli("--model_base_path=/m", "--no_such_flag=1")
    assert out.returncode == 2
    assert "--no_such_flag" in out.stderr


def test_flag_spellings_parse_alike(monkeypatch):
    from pyserving import cli
    seen = []
    monkeypatch.setattr(cli, "serve", lambda options: seen.append(options) or 0)
    model_server_main(["--port", "9000", "--model_name", "m", "--model_base_path=/x",
                       "--rest_api_enable_cors_support", "--enable_model_warmup=false"])
    model_server_main(["--port=9000", "--model_name=m", "--model_base_path", "/x",
                       "--rest_api_enable_cors_support=true", "--enable_model_warmup", "false"])
    assert seen[0] == seen[1]
    assert seen[0].port == 9000 and seen[0].rest_api_enable_cors_support is True
    assert seen[0].enable_model_warmup is False


def test_unix_socket_and_sigterm_exit_zero(tmp_path):
    base = tmp_path / "tf1"
    models.export_tf1_half_plus_two(str(base / "1"))
    socket_path = tmp_path / "grpc.sock"
    server = ServerProcess("--model_name=tf1", f"--model_base_path={base}",
                           f"--grpc_socket_path={socket_path}", "--grpc_channel_arguments=grpc.max_concurrent_streams=100",
                           "--per_process_gpu_memory_fraction=0.5",
                           log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tf1"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[6.0]], np.float32)))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10)
            assert list(response.outputs["y"].float_val) == [5.0]
    finally:
        assert server.stop() == 0
    assert "Shutting down" in server.log()
    # A TF Serving flag with no meaning here is accepted, and said so, never silently misread.
    assert "--per_process_gpu_memory_fraction is accepted for compatibility but has no effect" in server.log()


@pytest.mark.parametrize("which", ["grpc", "rest"])
def test_port_in_use_exits_with_a_clear_error(tmp_path, which):
    import socket

    base = tmp_path / "tf1"
    models.export_tf1_half_plus_two(str(base / "1"))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from support.server import free_port
        flags = ([f"--port={port}"] if which == "grpc"
                 else [f"--port={free_port()}", f"--rest_api_port={port}"])
        out = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), "--model_name=tf1",
                              f"--model_base_path={base}", *flags],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Could not start serving" in out.stderr and str(port) in out.stderr
    assert "Loaded " not in out.stderr  # found before the first load, not after every model loaded


def test_flag_prefixes_are_not_guessed():
    out = run_server_cli("--model_base=/m")
    assert out.returncode == 2
    assert "--model_base" in out.stderr


@pytest.mark.parametrize("argv, suggestion", [
    (["tensorflow_model_server", "--model_nmae=m", "--model_base_path=/m"], "(did you mean --model_name?)"),
    (["pyserving", "serve", "--rest_api_prot=8501"], "(did you mean --rest_api_port?)"),
])
def test_a_misspelt_flag_is_one_short_line_with_a_suggestion(argv, suggestion):
    binary, *args = argv
    out = subprocess.run([str(BIN_DIR / binary), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    first, *rest = out.stderr.strip().splitlines()
    assert first.endswith(suggestion) and "usage:" not in out.stderr
    assert rest == [f"Run '{binary} --help' to see every flag."]


def test_help_shows_every_default():
    out = run_server_cli("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--port PORT TCP port for the gRPC API" in text and "(default: 8500)" in text
    assert "(default: 1)" in text and "(default: false)" in text and "(default: 'serve')" not in text
    assert "(default: serve)" in text  # --saved_model_tags


@pytest.mark.parametrize("argv", [["tensorflow_model_server"], ["pyserving", "serve"]])
def test_help_groups_every_flag_once(argv):
    binary, *args = argv
    out = subprocess.run([str(BIN_DIR / binary), *args, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    groups: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            groups[line[:-1]] = []  # a group's title
        elif line.startswith("  --") and groups:
            groups[list(groups)[-1]].append(line.split()[0][2:])  # a flag's own entry
    titles = [title for title, _ in FLAG_GROUPS]
    assert list(groups) == ["options", *titles]
    assert {title: flags for title, flags in groups.items() if title != "options"} == \
        {title: list(names) for title, names in FLAG_GROUPS}
    listed = [flag for flags in groups.values() for flag in flags]
    every = [f.name for f in dataclasses.fields(ServerOptions)]
    assert sorted(listed) == sorted(every)  # each flag once, none missing
    inert = {f.name for f in dataclasses.fields(ServerOptions) if not f.metadata["supported"]}
    assert set(groups["Accepted for compatibility, no effect yet"]) == inert
    for title in ("Serving and ports", "Models and config", "Batching", "REST", "gRPC", "Monitoring and logging",
                  "TLS", "Resources and performance"):
        assert title in titles


@pytest.mark.parametrize("command", ["export", "client", "demo"])
def test_mnist_commands_show_every_default(command, capsys):
    from pyserving.cli import main

    with pytest.raises(SystemExit) as done:
        main(["mnist", command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, shown in {"export": [("--training_iteration", "(default: 1000)"), ("--model_version", "(default: 1)")],
                        "client": [("--server", "(default: localhost:8500)"), ("--model_name", "(default: mnist)"),
                                   ("--num_tests", "(default: 100)")],
                        "demo": [("--num_tests", "(default: 1000)"), ("--concurrency", "(default: 4)")]}[command]:
        assert flag in text and shown in text, (flag, shown)
    assert "--data-dir" in text and "$MNIST_DIR" in text  # a default of None is described in words


def test_a_base_path_beside_a_config_file_is_named_as_ignored(tmp_path):
    from support.server import HALF_PLUS_TWO, ServerProcess, model_config

    config = tmp_path / "models.config"
    config.write_text(model_config({"hpt": str(HALF_PLUS_TWO)}))
    server = ServerProcess(f"--model_config_file={config}", "--model_name=other",
                           f"--model_base_path={tmp_path / 'nothing'}", log_path=tmp_path / "server.log").wait_ready()
    try:
        assert server.get("/v1/models/hpt").status_code == 200
        assert f"--model_base_path={tmp_path / 'nothing'} is ignored: --model_config_file names the models" \
            in server.log()
    finally:
        assert server.stop() == 0
