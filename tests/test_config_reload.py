"""Model config at run time: HandleReloadConfigRequest and config-file polling, under traffic."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from support import models
from support.server import ServerProcess, model_config, wait_for
from support.traffic import Traffic
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("reload_models")
    models.export_tf2_linear(str(root / "a" / "1"), scale=1.0)
    models.export_tf2_linear(str(root / "a" / "2"), scale=10.0)
    models.export_tf1_half_plus_two(str(root / "b" / "1"))
    models.write_corrupt_version(str(root / "broken" / "1"))
    return root


def write_config(path, text: str) -> None:
    staging = f"{path}.tmp"
    with open(staging, "w") as f:
        f.write(text)
    os.replace(staging, path)  # the poller never reads half a file


def reload_request(text: str) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return request


def a_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "a"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1, 1]], np.float32)))
    return request


def b_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "b"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    return request


def sender(stub, request_factory, expected: float):
    request = request_factory()

    def send() -> int:
        response = stub.Predict(request, 10)
        (alias,) = [k for k in response.outputs if k in ("y",)]
        assert response.outputs[alias].float_val[0] == expected
        return response.model_spec.version.value
    return send


def status_states(model_service, name: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        response = model_service.GetModelStatus(request, 10)
    except grpc.RpcError:
        return {}
    return {s.version: s.state for s in response.model_version_status}


@pytest.fixture(scope="module")
def shared_server(bases, tmp_path_factory):
    root = tmp_path_factory.mktemp("reload_server")
    config = root / "models.config"
    write_config(config, model_config({"a": str(bases / "a")}))
    # Load retries 0.1 s apart: a reload whose model can't load answers within a second.
    server = ServerProcess(f"--model_config_file={config}", "--load_retry_interval_micros=100000",
                           log_path=root / "server.log").wait_ready()
    channel = server.channel()
    yield server, config, prediction_service_pb2_grpc.PredictionServiceStub(channel), \
        model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()
    assert server.stop() == 0


@pytest.fixture()
def server(shared_server, bases):
    """One server for the module (a start costs seconds), given back to each test serving model a
    alone, as it started: a reload to that config first."""
    response = shared_server[3].HandleReloadConfigRequest(reload_request(model_config({"a": str(bases / "a")})), 60)
    assert response.status.error_code == 0
    return shared_server


def test_reload_adds_and_removes_models_without_a_blip(server, bases):
    _, _, predict, model_service = server
    with Traffic(sender(predict, a_request, 40.0)) as traffic_a:
        wait_for(lambda: traffic_a.report.ok > 10, 30, "traffic on a")
        response = model_service.HandleReloadConfigRequest(reload_request(
            model_config({"a": str(bases / "a"), "b": str(bases / "b")})), 60)
        assert response.status.error_code == 0
        # The RPC returns once the new model is loaded: b answers right away.
        assert predict.Predict(b_request(), 10).outputs["y"].float_val[0] == 3.0
        before = traffic_a.report.ok
        wait_for(lambda: traffic_a.report.ok > before + 10, 30, "more traffic on a")
    assert traffic_a.report.failures == []
    assert set(traffic_a.report.versions) == {2}

    with Traffic(sender(predict, b_request, 3.0)) as traffic_b:
        wait_for(lambda: traffic_b.report.ok > 10, 30, "traffic on b")
        model_service.HandleReloadConfigRequest(reload_request(model_config({"b": str(bases / "b")})), 60)
        wait_for(lambda: status_states(model_service, "a").get(2) == 50, 30, "a to unload")
        with pytest.raises(grpc.RpcError) as info:
            predict.Predict(a_request(), 10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        before = traffic_b.report.ok
        wait_for(lambda: traffic_b.report.ok > before + 10, 30, "more traffic on b")
    assert traffic_b.report.failures == []


@pytest.mark.parametrize("text, needle", [
    ('model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }',
     "multiple times"),
    ('model_config_list { config { name: "z" base_path: "/x" model_platform: "pytorch" } }', "pytorch"),
    ('custom_model_config { }', "custom_model_config"),
])
def test_bad_reload_is_rejected_and_running_config_stays(server, text, needle):
    _, _, predict, model_service = server
    with pytest.raises(grpc.RpcError) as info:
        model_service.HandleReloadConfigRequest(reload_request(text), 30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()
    assert predict.Predict(a_request(), 10).outputs["y"].float_val[0] == 40.0


def test_labels_at_reload(server, bases):
    """TF Serving's two steps: load the versions, then label them (a label must name a version
    that is AVAILABLE); a refused label changes nothing."""
    _, _, predict, model_service = server
    everything = 'model_version_policy { all {} } '
    model_service.HandleReloadConfigRequest(reload_request(model_config({"a": str(bases / "a")}, {"a": everything})), 60)
    assert status_states(model_service, "a") == {1: 30, 2: 30}  # answered once both are AVAILABLE
    labelled = model_config({"a": str(bases / "a")}, extra={"a": everything + (
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }')})
    model_service.HandleReloadConfigRequest(reload_request(labelled), 60)
    request = a_request()
    request.model_spec.version_label = "stable"
    response = predict.Predict(request, 10)
    assert response.model_spec.version.value == 1 and response.outputs["y"].float_val[0] == 4.0
    bad = model_config({"a": str(bases / "a")}, extra={"a": 'version_labels { key: "stable" value: 7 }'})
    with pytest.raises(grpc.RpcError) as info:
        model_service.HandleReloadConfigRequest(reload_request(bad), 60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 7 of model a" in info.value.details()
    assert predict.Predict(request, 10).model_spec.version.value == 1  # the policy and labels stayed
    assert status_states(model_service, "a") == {1: 30, 2: 30}


def test_a_refused_reload_changes_nothing(server, bases):
    """Reload A adds x3; reload B drops x3 and labels a version that isn't there: refused, and x3
    still serves (it was unloaded before the label failed)."""
    _, _, predict, model_service = server
    both = {"a": str(bases / "a"), "x3": str(bases / "b")}
    model_service.HandleReloadConfigRequest(reload_request(model_config(both)), 60)
    refused = model_config({"a": str(bases / "a")}, {"a": 'version_labels { key: "stable" value: 999 }'})
    with pytest.raises(grpc.RpcError) as info:
        model_service.HandleReloadConfigRequest(reload_request(refused), 60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label stable to version 999 of model a" in info.value.details()
    x3 = b_request()
    x3.model_spec.name = "x3"
    assert predict.Predict(x3, 10).outputs["y"].float_val[0] == 3.0
    assert status_states(model_service, "x3") == {1: 30}


def test_a_reload_answers_once_new_models_are_available_or_names_those_that_are_not(server, bases):
    _, _, predict, model_service = server
    model_service.HandleReloadConfigRequest(reload_request(model_config({"a": str(bases / "a"),
                                                                         "b": str(bases / "b")})), 60)
    assert predict.Predict(b_request(), 10).outputs["y"].float_val[0] == 3.0  # AVAILABLE when answered
    with pytest.raises(grpc.RpcError) as info:
        model_service.HandleReloadConfigRequest(reload_request(model_config(
            {"a": str(bases / "a"), "b": str(bases / "b"), "broken": str(bases / "broken")})), 60)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details().startswith("1 model(s) did not become available: {{name: broken version: 1}: ")
    assert "Cannot parse the SavedModel" in info.value.details()
    # The models the config kept serve on.
    assert predict.Predict(a_request(), 10).outputs["y"].float_val[0] == 40.0
    assert predict.Predict(b_request(), 10).outputs["y"].float_val[0] == 3.0


def test_labels_for_unavailable_versions_when_allowed(bases, tmp_path):
    config = tmp_path / "models.config"
    write_config(config, model_config({"a": str(bases / "a")},
                                      extra={"a": 'version_labels { key: "next" value: 3 }'}))
    server = ServerProcess(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        r = server.post("/v1/models/a/labels/next:predict", json={"instances": [[1.0, 1.0]]})
        assert r.status_code == 404 and "Specific(a, 3)" in r.json()["error"]
    finally:
        assert server.stop() == 0


def test_label_to_unavailable_version_at_start_exits(bases, tmp_path):
    config = tmp_path / "models.config"
    write_config(config, model_config({"a": str(bases / "a")},
                                      extra={"a": 'version_labels { key: "next" value: 3 }'}))
    server = ServerProcess(f"--model_config_file={config}", log_path=tmp_path / "server.log")
    assert server.proc.wait(120) != 0
    assert "version 3 of model a" in server.log()
    server.stop()


def test_config_file_poll(bases, tmp_path):
    config = tmp_path / "models.config"
    write_config(config, model_config({"a": str(bases / "a")}))
    server = ServerProcess(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                           log_path=tmp_path / "server.log", env={"PYSERVING_LOG_LEVEL": "DEBUG"}).wait_ready()
    polls = "Reading the model config file again"
    try:
        write_config(config, model_config({"a": str(bases / "a"), "b": str(bases / "b")}))
        wait_for(lambda: server.get("/v1/models/b").status_code == 200, 60, "b to be served")
        write_config(config, "model_config_list { config { name: ")
        wait_for(lambda: "Ignoring the new model config" in server.log(), 30, "the bad file to be noticed")
        seen = server.log().count(polls)
        wait_for(lambda: server.log().count(polls) >= seen + 3, 30, "three more polls of the bad file")
        assert server.log().count("Ignoring the new model config") == 1  # once, not every poll
        assert server.post("/v1/models/a:predict", json={"instances": [[1.0, 1.0]]}).json() == {
            "predictions": [{"y": [40.0], "y_sum": 40.0}]}
        assert server.get("/v1/models/b").status_code == 200
        write_config(config, model_config({"b": str(bases / "b")}))
        wait_for(lambda: server.get("/v1/models/a:predict").status_code == 404 and
                 server.post("/v1/models/a:predict", json={"instances": [[1.0, 1.0]]}).status_code == 404,
                 60, "a to be dropped")
    finally:
        assert server.stop() == 0
