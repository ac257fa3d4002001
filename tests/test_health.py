"""--enable_grpc_healthcheck_service: the standard grpc.health.v1.Health service."""

from __future__ import annotations

import os
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import models
from support.server import ServerProcess, arrive, model_config, wait_for, wait_state

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("health")
    models.export_tf1_half_plus_two(str(d / "good" / "1"))
    (d / "corrupt").mkdir()  # its corrupt version arrives once serving: at start it would stop the server
    (d / "late").mkdir()
    # A ready-made version to move into "late" later (a rename, so it appears atomically).
    models.export_tf1_half_plus_two(str(d / "staging" / "1"))
    config = d / "models.config"
    config.write_text(model_config({name: str(d / name) for name in ("good", "corrupt", "late")}))
    return d


@pytest.fixture(scope="module")
def server(paths):
    proc = ServerProcess(f"--model_config_file={paths / 'models.config'}", "--max_num_load_retries=0",
                         "--enable_grpc_healthcheck_service", "--file_system_poll_wait_seconds=1",
                         log_path=paths / "server.log").wait_ready()
    try:
        arrive(paths / "corrupt", 1, models.write_corrupt_version)
        wait_state(proc, "corrupt", 1, "END")
        yield proc
    finally:
        proc.stop()


def test_overall_service_is_serving(server):
    with server.channel() as channel:
        assert _check(channel, "") == SERVING


def test_model_with_available_version_is_serving(server):
    with server.channel() as channel:
        assert _check(channel, "good") == SERVING


def test_unknown_service_is_not_found(server):
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as e:
            _check(channel, "no_such_model")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_whose_only_version_is_corrupt_is_not_serving(server):
    with server.channel() as channel:
        assert _check(channel, "corrupt") == NOT_SERVING


def test_model_that_becomes_available_turns_serving(server, paths):
    with server.channel() as channel:
        assert _check(channel, "late") == NOT_SERVING
        os.rename(paths / "staging" / "1", paths / "late" / "1")
        wait_for(lambda: _check(channel, "late") == SERVING, 60, "model 'late' to be reported SERVING")
        assert _check(channel, "good") == SERVING


def test_without_flag_health_is_unimplemented(tmp_path, paths):
    base = tmp_path / "good"
    shutil.copytree(paths / "good", base)
    proc = ServerProcess("--model_name=good", f"--model_base_path={base}",
                         log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        with proc.channel() as channel:
            with pytest.raises(grpc.RpcError) as e:
                _check(channel, "")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert proc.stop() == 0


def test_shutdown_reports_not_serving(tmp_path, paths):
    base = tmp_path / "good"
    shutil.copytree(paths / "good", base)
    proc = ServerProcess("--model_name=good", f"--model_base_path={base}", "--enable_grpc_healthcheck_service",
                         log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        with proc.channel() as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert next(watch).status == SERVING
            proc.proc.terminate()  # SIGTERM: shutdown begins
            assert next(watch).status == NOT_SERVING
            watch.cancel()  # let the drain finish without waiting for this stream
    finally:
        assert proc.stop() == 0
