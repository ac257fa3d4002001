"""Model warmup from assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from support import models
from support.server import ServerProcess, arrive, wait_state
from tensorflow_serving.apis import prediction_log_pb2

PATH = "/monitoring/prometheus/metrics"


def write_warmup(version_dir, logs) -> None:
    target = os.path.join(version_dir, "assets.extra")
    os.makedirs(target, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(target, "tf_serving_warmup_requests")) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def predict_log(inputs: dict, signature: str = "") -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = "ignored"
    log.predict_log.request.model_spec.signature_name = signature
    for k, v in inputs.items():
        log.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return log


def regress_log(x: float) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.regress_log.request.model_spec.signature_name = "regress"
    log.regress_log.request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return log


def test_warmup_runs_before_serving_and_bad_warmup_fails_the_load(tmp_path):
    good, bad, examples = tmp_path / "good", tmp_path / "bad", tmp_path / "ex"
    models.export_tf1_half_plus_two(str(good / "1"))
    write_warmup(good / "1", [predict_log({"x": np.array([[1.0]], np.float32)}),
                              predict_log({"keys": np.array([1], np.int64)}, "lookup")])
    bad.mkdir()  # its version arrives once serving: a failed initial load would stop the server
    models.export_tf1_examples(str(examples / "1"))
    write_warmup(examples / "1", [regress_log(1.0), regress_log(2.0)])
    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }")
    (tmp_path / "models.config").write_text(
        "model_config_list { " + " ".join(
            f'config {{ name: "{p.name}" base_path: "{p}" }}' for p in (good, bad, examples)) + " }")
    server = ServerProcess(f"--model_config_file={tmp_path / 'models.config'}", "--max_num_load_retries=0",
                           "--num_request_iterations_for_warmup=3",
                           f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        def bad_version(path: str) -> None:
            models.export_tf1_half_plus_two(path)
            write_warmup(path, [predict_log({"wrong": np.array([[1.0]], np.float32)})])

        arrive(bad, 1, bad_version)
        wait_state(server, "bad", 1, "END")
        assert server.get("/v1/models/good").json()["model_version_status"][0]["state"] == "AVAILABLE"
        assert server.get("/v1/models/ex").json()["model_version_status"][0]["state"] == "AVAILABLE"
        bad_status = server.get("/v1/models/bad").json()["model_version_status"][0]
        assert bad_status["state"] == "END"
        assert "Model warmup failed" in bad_status["status"]["error_message"]
        assert "Number of warmup records read: 6." in server.log()  # 2 records x 3 iterations
        metrics = server.get(PATH).text
        assert f':tensorflow:serving:model_warmup_latency_count{{model_path="{good / "1"}",status="OK"}} 1' in metrics
        assert f'model_path="{bad / "1"}",status="ERROR"' in metrics
    finally:
        assert server.stop() == 0


def test_warmup_can_be_disabled(tmp_path):
    bad = tmp_path / "bad"
    models.export_tf1_half_plus_two(str(bad / "1"))
    write_warmup(bad / "1", [predict_log({"wrong": np.array([[1.0]], np.float32)})])
    server = ServerProcess("--model_name=bad", f"--model_base_path={bad}", "--enable_model_warmup=false",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        assert server.post("/v1/models/bad:predict", json={"instances": [[2.0]]}).json() == {"predictions": [[3.0]]}
    finally:
        assert server.stop() == 0
