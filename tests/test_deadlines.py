"""Slow requests: deadlines, oversized bodies, no head-of-line blocking, draining on SIGTERM."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from support import models
from support.server import serve_models
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

# Run alone after the parallel phase (tools/run-tests.sh): deadlines and drains measured in real time.
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow_models")
    server = serve_models(root, {"sleeper": models.export_sleeper, "tf1": models.export_tf1_half_plus_two},
                          "--rest_api_timeout_in_ms=300", "--rest_api_max_request_bytes=100000")
    yield server
    assert server.stop() == 0


def sleep_request(micros: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "sleeper"
    request.inputs["micros"].CopyFrom(tf.make_tensor_proto(micros, dtype=tf.int64))
    return request


def fast_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    return request


def test_rest_timeout_is_504(server):
    r = server.post("/v1/models/sleeper:predict", json={"inputs": 1_000_000})
    assert r.status_code == 504
    assert "timed out" in r.json()["error"]
    ok = server.post("/v1/models/tf1:predict", json={"inputs": [[0.0]]})
    assert ok.status_code == 200 and ok.json() == {"outputs": [[2.0]]}


def test_grpc_deadline_exceeded(server):
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(sleep_request(1_000_000), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_slow_request_does_not_block_others(server):
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        slow = stub.Predict.future(sleep_request(1_500_000), timeout=30)
        for _ in range(5):
            assert stub.Predict(fast_request(), timeout=10).outputs["y"].float_val[0] == 3.0
        assert not slow.done()  # the fast ones overtook it
        assert slow.result().outputs["slept"].int64_val[0] == 1_500_000


def test_oversized_body_is_413_and_server_keeps_serving(server):
    r = server.post("/v1/models/tf1:predict", json={"instances": [[1.0]] * 50_000})
    assert r.status_code == 413
    assert "--rest_api_max_request_bytes" in r.json()["error"]
    assert server.post("/v1/models/tf1:predict", json={"instances": [[1.0]]}).json() == {"predictions": [[2.5]]}


def test_sigterm_drains_in_flight_requests(tmp_path):
    """Both protocols: requests already running when SIGTERM arrives still get their answer."""
    import threading

    from support.server import wait_for

    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }")
    server = serve_models(tmp_path, {"sleeper": models.export_sleeper},
                          f"--monitoring_config_file={tmp_path / 'monitoring.config'}")
    channel = server.channel()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    slow_grpc = stub.Predict.future(sleep_request(1_500_000), timeout=30)
    rest_answer = {}
    slow_rest = threading.Thread(target=lambda: rest_answer.update(
        r=server.post("/v1/models/sleeper:predict", json={"inputs": 1_000_000})))
    slow_rest.start()

    def in_flight() -> float:
        text = server.get("/monitoring/prometheus/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(':pyserving:requests_in_flight{model_name="sleeper"}'))
    wait_for(lambda: in_flight() >= 2, 30, "both slow requests to be in flight")
    assert server.stop() == 0
    slow_rest.join(30)
    assert slow_grpc.result().outputs["slept"].int64_val[0] == 1_500_000
    assert rest_answer["r"].status_code == 200 and rest_answer["r"].json() == {"outputs": 1_000_000}
    channel.close()
