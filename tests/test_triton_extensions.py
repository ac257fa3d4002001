"""Triton's model-configuration and statistics extensions, read by Triton's own clients (what
perf_analyzer and Model Analyzer ask first), over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from support.server import serve_half_plus_two
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = serve_half_plus_two(tmp_path_factory.mktemp("triton"))
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def _clients(server):
    return (triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}"),
            triton_grpc.InferenceServerClient(server.grpc_target))


def test_model_config_names_the_signatures_tensors(server):
    http, grpc = _clients(server)
    config = http.get_model_config("hpt")
    assert config["name"] == "hpt" and config["platform"] == "tensorflow_savedmodel"
    assert config["backend"] == "tensorflow" and config["max_batch_size"] == 0
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 1]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 1]}]
    assert http.get_model_config("hpt", "123") == config
    answer = grpc.get_model_config("hpt").config
    assert (answer.name, answer.platform, answer.backend, answer.max_batch_size) == (
        "hpt", "tensorflow_savedmodel", "tensorflow", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in answer.input] == [("x", 11, [-1, 1])]  # TYPE_FP32
    assert [(t.name, t.data_type, list(t.dims)) for t in answer.output] == [("y", 11, [-1, 1])]
    assert "model_configuration" in http.get_server_metadata()["extensions"]


def test_unknown_models_and_versions_are_not_found(server):
    http, grpc = _clients(server)
    for call in (lambda: http.get_model_config("nope"), lambda: http.get_inference_statistics("nope"),
                 lambda: http.get_inference_statistics("hpt", "7"), lambda: http.get_model_config("hpt", "x")):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() in ("404", "400"), e.value
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_config("nope")
    assert "StatusCode.NOT_FOUND" in e.value.status()


def _infer(client, module, value: float) -> None:
    x = module.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.array([value], np.float32))
    assert client.infer("hpt", [x]).as_numpy("y").tolist() == [value / 2 + 2]


def test_statistics_count_inferences_and_where_their_time_went(server):
    http, grpc = _clients(server)
    before = http.get_inference_statistics("hpt")["model_stats"][0]
    for value in (1.0, 2.0, 3.0):
        _infer(http, triton_http, value)
    _infer(grpc, triton_grpc, 4.0)
    bad = triton_http.InferInput("x", [2], "FP32")
    bad.set_data_from_numpy(np.array([1.0, 2.0], np.float32))
    with pytest.raises(InferenceServerException):
        http.infer("hpt", [bad], model_version="1")  # no version 1: refused before any version ran
    stats = http.get_inference_statistics("hpt")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("hpt", "123")]
    after = stats[0]
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 4
    phases = after["inference_stats"]
    assert phases["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] == after["inference_count"] and phases[phase]["ns"] > 0, phase
    assert phases["success"]["ns"] > phases["compute_infer"]["ns"]
    assert after["last_inference"] >= before["last_inference"] > 0 or before["inference_count"] == 0
    every = http.get_inference_statistics("")["model_stats"]
    assert [s["name"] for s in every] == ["hpt"]
    assert http.get_inference_statistics("hpt", "123")["model_stats"][0]["inference_count"] == after["inference_count"]
    answer = grpc.get_inference_statistics("hpt").model_stats[0]
    assert (answer.name, answer.version, answer.inference_count) == ("hpt", "123", after["inference_count"])
    assert answer.inference_stats.compute_infer.count == after["inference_count"]


def test_a_batched_model_reports_its_batch_size_without_the_batch_dimension(tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\n")
    server = serve_half_plus_two(tmp_path, "--enable_batching", f"--batching_parameters_file={params}")
    try:
        http, grpc = _clients(server)
        config = http.get_model_config("hpt")
        assert config["max_batch_size"] == 32
        assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}]
        assert grpc.get_model_config("hpt").config.max_batch_size == 32
    finally:
        assert server.stop() == 0
