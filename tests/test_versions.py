"""Versions come and go under live traffic: no failed request, ever."""

from __future__ import annotations

import os
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from support import models
from support.server import HALF_PLUS_TWO, ServerProcess, arrive, model_config, wait_for, wait_state
from support.traffic import Traffic
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

AVAILABLE, END = 30, 50


def export_atomically(final_path: str, export) -> None:
    """Export beside the base path, then rename in: the server never sees half a model."""
    staging = final_path + ".staging"
    export(staging)
    os.rename(staging, final_path)


@pytest.fixture()
def live(tmp_path):
    base = tmp_path / "linear"
    models.export_tf2_linear(str(base / "1"), scale=1.0)
    server = ServerProcess("--model_name=linear", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0",
                           log_path=tmp_path / "server.log").wait_ready()
    channel = server.channel()
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    yield server, base, predict, status
    channel.close()
    assert server.stop() == 0


def _send(predict):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1, 1]], np.float32)))

    def send() -> int:
        response = predict.Predict(request, 10)
        version = response.model_spec.version.value
        # Each version computes its own answer: a mixed-up servable would show here.
        expected = {1: 4.0, 2: 40.0}[version]
        assert response.outputs["y"].float_val[0] == expected, (version, response)
        return version
    return send


def _states(status) -> dict[int, tuple[int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "linear"
    response = status.GetModelStatus(request, 10)
    return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}


def test_new_version_swaps_in_and_rollback_under_traffic(live):
    server, base, predict, status = live
    with Traffic(_send(predict)) as traffic:
        wait_for(lambda: traffic.seen(1), 30, "traffic on version 1")
        export_atomically(str(base / "2"), lambda p: models.export_tf2_linear(p, scale=10.0))
        wait_for(lambda: _states(status).get(1, (0,))[0] == END, 60, "version 1 to be unloaded")
        assert _states(status)[2][0] == AVAILABLE
        wait_for(lambda: traffic.latest_version() == 2, 30, "traffic on version 2")
        # Roll back: removing the newest folder brings version 1 back before 2 goes.
        shutil.rmtree(base / "2")
        wait_for(lambda: _states(status).get(2, (0,))[0] == END, 60, "version 2 to be unloaded")
        assert _states(status)[1][0] == AVAILABLE
        before = traffic.report.versions[1]
        wait_for(lambda: traffic.report.versions[1] > before, 30, "traffic back on version 1")
    report = traffic.report
    assert report.failures == []
    assert report.versions[1] > 0 and report.versions[2] > 0
    assert report.ok > 20


def test_corrupt_version_is_reported_and_previous_keeps_serving(live):
    server, base, predict, status = live
    with Traffic(_send(predict)) as traffic:
        wait_for(lambda: traffic.seen(1), 30, "traffic on version 1")
        export_atomically(str(base / "3"), models.write_corrupt_version)
        wait_for(lambda: _states(status).get(3, (0,))[0] == END, 60, "version 3 to fail")
        state, message = _states(status)[3]
        assert "SavedModel" in message and str(base / "3") in message
        assert _states(status)[1][0] == AVAILABLE
        before = traffic.report.ok
        wait_for(lambda: traffic.report.ok > before + 10, 30, "more answers after the failure")
    assert traffic.report.failures == []
    assert set(traffic.report.versions) == {1}
    # REST shows the same error, with its code.
    body = server.get("/v1/models/linear/versions/3").json()
    entry = body["model_version_status"][0]
    assert entry["state"] == "END" and entry["status"]["error_code"] == "DATA_LOSS"
    assert "Cannot parse the SavedModel" in entry["status"]["error_message"]


def test_model_with_only_a_corrupt_version_is_unavailable(tmp_path):
    base = tmp_path / "broken"
    base.mkdir()
    server = ServerProcess("--model_name=broken", f"--model_base_path={base}",
                           "--max_num_load_retries=0", log_path=tmp_path / "server.log").wait_ready()
    try:
        arrive(base, 1, models.write_corrupt_version)  # at start it would stop the server, as in TF Serving
        wait_state(server, "broken", 1, "END")
        channel = server.channel()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "broken"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 2), np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Servable not found for request: Latest(broken)" in info.value.details()
        assert "version 1: END" in info.value.details()
        r = server.post("/v1/models/broken:predict", json={"instances": [[1.0, 2.0]]})
        assert r.status_code == 503
        channel.close()
    finally:
        assert server.stop() == 0


def test_readyz_is_503_until_a_version_serves(tmp_path):
    good, broken = tmp_path / "good", tmp_path / "broken"
    models.export_tf2_linear(str(good / "1"))
    broken.mkdir()
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "good" base_path: "{good}" }} '
        f'config {{ name: "broken" base_path: "{broken}" }} }}')
    server = ServerProcess(f"--model_config_file={config}", "--max_num_load_retries=0",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        assert server.get("/readyz").status_code == 503  # broken has no version yet
        arrive(broken, 1, models.write_corrupt_version)
        wait_state(server, "broken", 1, "END")
        r = server.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "models": {"broken": False, "good": True}}
        assert server.get("/v1/models/good/ready").status_code == 200
        assert server.get("/v1/models/broken/ready").status_code == 503
        # A model the server doesn't serve at all: 404, as the status API says for it.
        assert server.get("/v1/models/nope/ready").status_code == 404
        assert server.get("/v1/models/nope").status_code == 404
        # TF Serving's status URL answers 200 with the states, as before.
        assert server.get("/v1/models/broken").status_code == 200
    finally:
        assert server.stop() == 0


def test_base_path_pointing_at_a_version_folder_explains_itself(tmp_path):
    version_dir = tmp_path / "mnist" / "1"
    models.export_tf2_linear(str(version_dir))
    server = ServerProcess("--model_name=m", f"--model_base_path={version_dir}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        r = server.post("/v1/models/m:predict", json={"instances": [[1.0, 1.0]]})
        assert r.status_code == 503
        assert "holds a SavedModel itself" in r.json()["error"]
        assert "holds a SavedModel itself" in server.log()
    finally:
        assert server.stop() == 0


def test_version_folders_not_named_by_integers_are_named_in_the_explanation(tmp_path):
    """A base path whose version folder is v1/: the server serves nothing, and says which folders
    it ignored and why, in the log (once) and in the answer to a request."""
    base = tmp_path / "m"
    (base / "latest").mkdir(parents=True)
    (base / "v1").symlink_to(HALF_PLUS_TWO / "00000123", target_is_directory=True)
    config = tmp_path / "models.config"
    config.write_text(model_config({"m": str(base), "hp2": str(HALF_PLUS_TWO)}))
    server = ServerProcess(f"--model_config_file={config}", log_path=tmp_path / "server.log").wait_ready()
    try:
        r = server.post("/v1/models/m:predict", json={"instances": [1.0]})
        assert r.status_code == 503
        assert "Version folders are named by integers (1, 2, 00000123); ignored here: latest, v1" in r.json()["error"]
        status = server.get("/v1/models/m")  # the status API says why too, after TF Serving's words
        assert status.status_code == 404
        assert status.json()["error"].startswith("Could not find any versions of model m: no version folders")
        assert "ignored here: latest, v1" in status.json()["error"]
        assert server.log().count("No versions of servable m found under base path") == 1
        assert "ignored here: latest, v1" in server.log()
        assert server.post("/v1/models/hp2:predict", json={"instances": [1.0]}).status_code == 200
    finally:
        assert server.stop() == 0
