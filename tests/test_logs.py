"""Logs: TensorFlow's C++ start-up lines stay out unless asked for; client errors only at DEBUG."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from support.server import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

HALF_PLUS_TWO = Path(__file__).resolve().parents[2] / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
# absl's C++ log prefix (I0000 00:00:... file.cc:NN]) and its pre-initialisation warning.
TF_CPP_LINE = re.compile(r"^([IWEF]\d{4} .*\.cc:\d+\]|WARNING: All log messages before absl)", re.M)


def _start_and_stop(tmp_path: Path) -> str:
    server = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}",
                           log_path=tmp_path / "server.log").wait_ready()
    r = server.post("/v1/models/hpt:predict", json={"instances": [1.0]})
    assert r.json() == {"predictions": [2.5]}
    assert server.stop() == 0
    return server.log()


def test_a_cpu_start_prints_no_tensorflow_cpp_lines(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log = _start_and_stop(tmp_path)
    assert TF_CPP_LINE.findall(log) == []
    assert "cuInit" not in log
    assert "Running gRPC ModelServer" in log
    # One line per version loaded: its path, runtime, load time and signatures.
    assert re.search(r"Loaded \S+/00000123 with the session runtime in \d+\.\d\d s; "
                     r"signatures: .*regress_x_to_y.*serving_default", log)


def test_tf_cpp_min_log_level_brings_them_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert TF_CPP_LINE.search(_start_and_stop(tmp_path))


def _client_mistakes(server: ServerProcess) -> None:
    assert server.post("/v1/models/nope:predict", json={"instances": [1.0]}).status_code == 404
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope"
    with server.channel() as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("an unknown model was answered")


def test_client_errors_are_logged_with_their_reason_at_debug_only(tmp_path):
    flags = ("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}")
    debug = ServerProcess(*flags, log_path=tmp_path / "debug.log", env={"PYSERVING_LOG_LEVEL": "DEBUG"}).wait_ready()
    info = ServerProcess(*flags, log_path=tmp_path / "info.log").wait_ready()
    for server in (debug, info):
        _client_mistakes(server)
        assert server.stop() == 0
    assert "REST answered NOT_FOUND: Servable not found for request: Latest(nope)" in debug.log()
    assert "gRPC Predict answered NOT_FOUND: Servable not found for request: Latest(nope)" in debug.log()
    assert "answered NOT_FOUND" not in info.log() and "Traceback" not in info.log()
    assert "pyserving.access" not in info.log()  # the access log is off by default


def test_json_logs_and_the_access_log(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    server = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}", "--log_format=json",
                           "--access_log", log_path=tmp_path / "server.log").wait_ready()
    assert server.post("/v1/models/hpt:predict", json={"instances": [1.0]}).status_code == 200
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    request.inputs["x"].CopyFrom(tf_float([[1.0]]))
    with server.channel() as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    _client_mistakes(server)
    # Refused before the model was reached: a body that isn't JSON, a message that isn't the proto.
    bad = server.post("/v1/models/hpt:predict", data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(b"\xff\xff", timeout=10)
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    lines = [e for e in entries if e["logger"] == "pyserving.access"]
    access = [{k: e[k] for k in ("protocol", "api", "model", "version", "status", "http_status")} for e in lines]
    assert access == [
        {"protocol": "REST", "api": "predict", "model": "hpt", "version": 123, "status": "OK", "http_status": 200},
        {"protocol": "GRPC", "api": "predict", "model": "hpt", "version": 123, "status": "OK", "http_status": None},
        {"protocol": "REST", "api": "predict", "model": "(unknown)", "version": None, "status": "NOT_FOUND",
         "http_status": 404},
        {"protocol": "GRPC", "api": "predict", "model": "(unknown)", "version": None, "status": "NOT_FOUND",
         "http_status": None},
        {"protocol": "REST", "api": "predict", "model": "hpt", "version": None, "status": "INVALID_ARGUMENT",
         "http_status": 400},
        {"protocol": "GRPC", "api": "predict", "model": "(unknown)", "version": None, "status": "INVALID_ARGUMENT",
         "http_status": None}]
    assert all(e["latency_ms"] >= 0 for e in lines)
    assert all(re.fullmatch(r"(ipv4:)?127\.0\.0\.1:\d+", e["client"]) for e in lines), [e["client"] for e in lines]
    assert [bool(e["reason"]) for e in lines] == [False, False, True, True, True, True]
    assert "Could not parse the request as tensorflow.serving.PredictRequest" in lines[-1]["reason"]


def tf_float(rows):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(rows)),
                                                   tensor_shape_pb2.TensorShapeProto.Dim(size=len(rows[0]))])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape,
                                  float_val=[v for row in rows for v in row])
