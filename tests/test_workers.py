"""--num_workers: several processes on the same ports behave as one server.

Each new connection lands on a worker the kernel picks (SO_REUSEPORT), so these tests open a fresh
connection per call: an answer that came from only one worker's state would disagree with
another's within a few calls.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
from google.protobuf import text_format
from support import models
from support.server import ServerProcess, free_port, model_config, wait_for
from support.traffic import Traffic
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

WORKERS = 2
FRESH = [("grpc.use_local_subchannel_pool", 1)]  # a new connection per channel


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _metric(server: ServerProcess, prefix: str) -> float:
    text = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10,
                        headers={"Connection": "close"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _start(root: Path, exporters: dict, *flags: str) -> ServerProcess:
    for name, export in exporters.items():
        export(str(root / name / "1"))
    (root / "models.config").write_text(model_config({n: str(root / n) for n in exporters}))
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    server = ServerProcess(f"--model_config_file={root / 'models.config'}", f"--num_workers={WORKERS}",
                           "--rest_api_enable_model_control",
                           f"--monitoring_config_file={root / 'monitoring.config'}",
                           "--file_system_poll_wait_seconds=1", *flags,
                           log_path=root / "server.log").wait_ready()
    # Each worker opens the ports when its own models have loaded: wait for all of them.
    try:
        wait_for(lambda: all(_metric(server, ":pyserving:serving_workers") == WORKERS for _ in range(6)),
                 120, "every worker to serve")
    except AssertionError:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    # Load retries 0.1 s apart: a reload whose model can't load answers within a second.
    server = _start(root, {"linear": models.export_tf2_linear}, "--load_retry_interval_micros=100000")
    server.root = root
    yield server
    server.stop()


def _predict(server: ServerProcess, model: str = "linear", version: int | None = None) -> float:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    r = requests.post(server.rest_url + path, json={"instances": [[1.0, 1.0]]}, timeout=30,
                      headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["y_sum"]


def _grpc_call(server: ServerProcess, stub_type, method: str, request):
    with grpc.insecure_channel(server.grpc_target, options=FRESH) as channel:
        return getattr(stub_type(channel), method)(request, timeout=30)


def test_every_worker_serves_and_metrics_add_up(server):
    before = _metric(server, ':tensorflow:serving:request_count{model_name="linear",status="OK"}')
    assert [_predict(server) for _ in range(40)] == [4.0] * 40
    # Scrapes land on either worker; each must report the whole server's count.
    counts = {_metric(server, ':tensorflow:serving:request_count{model_name="linear",status="OK"}')
              for _ in range(10)}
    assert counts == {before + 40}
    assert len(_children(server.proc.pid)) == WORKERS
    # Process metrics are each worker's own, never added up; the build is said once.
    text = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10).text
    fds = [line for line in text.splitlines() if line.startswith("process_open_fds{")]
    assert sorted(line.split("}")[0] for line in fds) == [f'process_open_fds{{worker="{i}"' for i in range(WORKERS)]
    assert [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(":pyserving:build_info{")] == ["1"]


def test_reload_reaches_every_worker(server):
    models.export_tf2_linear(str(server.root / "other" / "1"), scale=3.0)
    config = model_server_config_pb2.ModelServerConfig()
    for name in ("linear", "other"):
        entry = config.model_config_list.config.add(name=name, base_path=str(server.root / name),
                                                    model_platform="tensorflow")
        assert entry.name == name
    request = model_management_pb2.ReloadConfigRequest(config=config)
    response = _grpc_call(server, model_service_pb2_grpc.ModelServiceStub, "HandleReloadConfigRequest", request)
    assert response.status.error_code == 0
    # Answered only once every worker applied it: the new model serves on every connection at once.
    assert [_predict(server, "other") for _ in range(20)] == [12.0] * 20


def test_reload_semantics_hold_on_every_worker(server):
    """A refused reload changes nothing on any worker; a model that can't load is named, and what
    the config kept serves on, on every connection."""
    models.write_corrupt_version(str(server.root / "broken" / "1"))

    def reload(labels: str = "", broken: bool = False):
        # The models test_reload_reaches_every_worker left, so later tests find them still served.
        served = {name: str(server.root / name) for name in ("linear", "other")}
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(model_config(served, {"linear": labels}) if not broken
                          else model_config({**served, "broken": str(server.root / "broken")}), config)
        request = model_management_pb2.ReloadConfigRequest(config=config)
        with pytest.raises(grpc.RpcError) as info:
            _grpc_call(server, model_service_pb2_grpc.ModelServiceStub, "HandleReloadConfigRequest", request)
        return info.value

    refused = reload('version_labels { key: "stable" value: 999 }')
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 999" in refused.details()
    failed = reload(broken=True)
    assert failed.code() == grpc.StatusCode.UNKNOWN
    assert "1 model(s) did not become available: {{name: broken version: 1}" in failed.details()
    assert [_predict(server) for _ in range(20)] == [4.0] * 20


def _v2_ready(server: ServerProcess, model: str) -> int:
    return requests.get(f"{server.rest_url}/v2/models/{model}/ready", timeout=30,
                        headers={"Connection": "close"}).status_code


def test_repository_unload_and_load_reach_every_worker(server):
    """The V2 repository API with --num_workers: answered once every worker has applied it."""
    r = requests.post(f"{server.rest_url}/v2/repository/models/linear/unload", timeout=60)
    assert r.status_code == 200, r.text
    assert {_v2_ready(server, "linear") for _ in range(20)} == {400}
    index = requests.post(f"{server.rest_url}/v2/repository/index", timeout=30, headers={"Connection": "close"})
    assert {"name": "linear", "version": "", "state": "UNAVAILABLE",
            "reason": "unloaded through the model repository API"} in index.json()
    r = requests.post(f"{server.rest_url}/v2/repository/models/linear/load", timeout=60)
    assert r.status_code == 200, r.text
    assert {_v2_ready(server, "linear") for _ in range(20)} == {200}
    assert [_predict(server) for _ in range(20)] == [4.0] * 20


def _status(server: ServerProcess, model: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = _grpc_call(server, model_service_pb2_grpc.ModelServiceStub, "GetModelStatus", request)
    return {v.version: v.state for v in response.model_version_status}


def test_version_swap_under_traffic_fails_nothing_and_status_is_whole(server):
    available, end = 30, 50
    staged = server.root / "staging-2"
    models.export_tf2_linear(str(staged), scale=2.0)
    with Traffic(lambda: {4.0: 1, 8.0: 2}[_predict(server)], threads=3) as traffic:
        wait_for(lambda: traffic.report.ok > 20, 60, "traffic on version 1")
        os.rename(staged, server.root / "linear" / "2")  # appears whole to the pollers
        wait_for(lambda: _status(server, "linear").get(2) == available, 120, "version 2 reported AVAILABLE")
        # AVAILABLE means available on every worker, not just the one that answered.
        assert [_predict(server, version=2) for _ in range(20)] == [8.0] * 20
        wait_for(lambda: all(_status(server, "linear").get(1) == end for _ in range(4)), 120,
                 "version 1 unloaded everywhere")
        seen = traffic.report.ok
        wait_for(lambda: traffic.report.ok > seen + 20, 60, "traffic after the swap")
    report = traffic.report
    assert report.failures == []
    assert report.versions[1] > 0 and report.versions[2] > 0
    assert [_predict(server) for _ in range(10)] == [8.0] * 10


def test_a_worker_that_dies_after_serving_is_replaced(server):
    from pyserving.server.supervisor import RESTART_AFTER_SECONDS

    victim = _children(server.proc.pid)[0]
    wait_for(lambda: _process_age(victim) > RESTART_AFTER_SECONDS + 1, 30, "the worker to have served")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in _children(server.proc.pid) and len(_children(server.proc.pid)) == WORKERS,
             30, "a replacement worker")
    wait_for(lambda: all(_metric(server, ":pyserving:serving_workers") == WORKERS for _ in range(6)),
             120, "the replacement to serve")
    # It serves the config the others were reloaded with, not the one on the command line.
    assert [_predict(server, "other") for _ in range(10)] == [12.0] * 10
    assert "exited with code 137 after" in server.log()


def _process_age(pid: int) -> float:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def test_sigterm_drains_every_worker(tmp_path):
    server = _start(tmp_path, {"sleeper": models.export_sleeper})
    workers = _children(server.proc.pid)
    answers: list[requests.Response] = []

    def slow() -> None:
        answers.append(requests.post(server.rest_url + "/v1/models/sleeper:predict", json={"inputs": 1_500_000},
                                     timeout=30, headers={"Connection": "close"}))
    threads = [threading.Thread(target=slow) for _ in range(4)]  # the sleeper runs one at a time
    for t in threads:
        t.start()
    wait_for(lambda: _metric(server, ':pyserving:requests_in_flight{model_name="sleeper"}') >= 4, 30,
             "four slow requests in flight")
    assert server.stop() == 0
    for t in threads:
        t.join(30)
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"outputs": 1_500_000})] * 4
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_port_in_use_stops_every_worker(tmp_path):
    models.export_tf2_linear(str(tmp_path / "m" / "1"))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        result = subprocess.run(
            [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}",
             f"--rest_api_port={free_port()}", "--model_name=m", f"--model_base_path={tmp_path / 'm'}",
             f"--num_workers={WORKERS}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Could not start serving" in result.stderr
    assert time.monotonic() - start < 60  # the supervisor returns only once every worker has exited


def test_each_worker_keeps_the_budget_and_a_reload_adds_a_model_unloaded(tmp_path):
    """--max_loaded_models with --num_workers: each worker loads on demand within its own budget,
    and a reload's new model waits unloaded for its first request on every worker."""
    server = _start(tmp_path, {name: models.export_tf2_linear for name in ("a", "b", "c")}, "--max_loaded_models=1")
    try:
        # Fresh connections land on either worker: every answer right wherever its model was evicted.
        assert [_predict(server, name) for _ in range(5) for name in ("a", "b", "c")] == [4.0] * 15
        listing = requests.get(server.rest_url + "/v1/models", timeout=30, headers={"Connection": "close"}).json()
        loaded = [n for n, state in listing["model_state"].items() if state == "LOADED"]
        assert 1 <= len(loaded) <= WORKERS, listing  # merged over the workers: one each at most
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(model_config({n: str(tmp_path / n) for n in ("b", "c", "d")}), config)
        models.export_tf2_linear(str(tmp_path / "d" / "1"), scale=2.0)
        response = _grpc_call(server, model_service_pb2_grpc.ModelServiceStub, "HandleReloadConfigRequest",
                              model_management_pb2.ReloadConfigRequest(config=config))
        assert response.status.error_code == 0
        states = {requests.get(server.rest_url + "/v1/models", timeout=30,
                               headers={"Connection": "close"}).json()["model_state"]["d"] for _ in range(6)}
        assert states == {"UNLOADED"}  # on every worker
        assert [_predict(server, "d") for _ in range(6)] == [8.0] * 6
        r = requests.post(server.rest_url + "/v1/models/a:predict", json={"instances": [[1.0, 1.0]]}, timeout=30)
        assert r.status_code == 404, r.text  # dropped by the reload
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
