"""--enable_batching with the real server: concurrent requests run as batches, answers stay right."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from support import models
from support.server import ServerProcess, serve_models
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

METRICS = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    (root / "batching.pbtxt").write_text(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 100000 } "
        "num_batch_threads { value: 1 } allowed_batch_sizes: 4 allowed_batch_sizes: 8")
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    server = serve_models(root, {"linear": models.export_tf2_linear, "ex": models.export_tf1_examples},
                          "--enable_batching", f"--batching_parameters_file={root / 'batching.pbtxt'}",
                          f"--monitoring_config_file={root / 'monitoring.config'}")
    yield server
    assert server.stop() == 0


def batch_sizes(server) -> tuple[float, float]:
    """(batches run, rows run) from the processed_batch_size histogram."""
    count = total = 0.0
    for family in text_string_to_metric_families(server.get(METRICS).text):
        for s in family.samples:
            if s.name == ":tensorflow:serving:batching_session:processed_batch_size_count":
                count += s.value
            if s.name == ":tensorflow:serving:batching_session:processed_batch_size_sum":
                total += s.value
    return count, total


def test_concurrent_predicts_are_batched_and_correct(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())

    def predict(i: int) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "linear"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[i, 0]], np.float32)))
        return stub.Predict(request, 30).outputs["y"].float_val[0]

    before_batches, _ = batch_sizes(server)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(predict, range(32)))
    assert answers == [i * 1.0 + 1.0 for i in range(32)]  # y = x0*1 + x1*2 + 1
    batches, rows = batch_sizes(server)
    assert batches - before_batches < 32  # requests shared batches
    assert rows % 4 == 0  # padded to the allowed sizes 4 and 8


def test_rest_and_classify_paths_are_batched_too(server):
    r = server.post("/v1/models/linear:predict", json={"instances": [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]})
    assert r.json()["predictions"] == [{"y": [4.0], "y_sum": 4.0}, {"y": [7.0], "y_sum": 7.0},
                                       {"y": [10.0], "y_sum": 10.0}]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "regress"
    for x in (1.0, 2.0):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    with server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(request, 30)
    assert [r.value for r in response.result.regressions] == [2.0, 4.0]


def test_request_larger_than_max_batch_size(server):
    r = server.post("/v1/models/linear:predict", json={"instances": [[1.0, 1.0]] * 9})
    assert r.status_code == 400
    assert "larger than maximum input batch size 8" in r.json()["error"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((9, 2), np.float32)))
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_per_model_batching_parameters(tmp_path):
    models.export_tf2_linear(str(tmp_path / "linear" / "1"))
    (tmp_path / "linear" / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }")
    server = ServerProcess("--model_name=linear", f"--model_base_path={tmp_path / 'linear'}",
                           "--enable_batching", "--enable_per_model_batching_parameters",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        ok = server.post("/v1/models/linear:predict", json={"instances": [[1.0, 1.0], [0.0, 0.0]]})
        assert ok.status_code == 200
        r = server.post("/v1/models/linear:predict", json={"instances": [[1.0, 1.0]] * 3})
        assert r.status_code == 400 and "maximum input batch size 2" in r.json()["error"]
    finally:
        assert server.stop() == 0
