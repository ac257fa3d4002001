"""Budgets of loaded models. --max_loaded_models: 200 configured models (TF Serving's half_plus_two,
linked 200 times) on a budget of 10: each loads on its first request, the least recently used idle
ones make room, and every request is answered right, over the official gRPC stub and REST.
--max_loaded_model_memory_mb: models of 8 MB of weights under 20 MiB."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from support.server import HALF_PLUS_TWO, ServerProcess, model_config
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODELS = 200
BUDGET = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    for i in range(MODELS):  # a link per model: 200 base paths, one SavedModel on disk
        (root / f"m{i:03d}").symlink_to(HALF_PLUS_TWO, target_is_directory=True)
    config = root / "models.config"
    config.write_text(model_config({f"m{i:03d}": str(root / f"m{i:03d}") for i in range(MODELS)}))
    (root / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }')
    server = ServerProcess(f"--model_config_file={config}", f"--max_loaded_models={BUDGET}", "--preload_models=m000",
                           "--rest_api_enable_model_control",
                           f"--monitoring_config_file={root / 'monitoring.config'}",
                           log_path=root / "server.log").wait_ready()
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def _loaded(server: ServerProcess) -> set[str]:
    """The models with an AVAILABLE version, from the server's own status (GET /v1/models)."""
    listing = server.get("/v1/models").json()["model_version_status"]
    return {name for name, versions in listing.items() if any(v["state"] == "AVAILABLE" for v in versions)}


def _residency(server: ServerProcess) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.name == ":pyserving:model_residency_count_total":
                counts[sample.labels["event"]] = counts.get(sample.labels["event"], 0) + sample.value
    return counts


def _memory(server: ServerProcess) -> dict[str, float]:
    return {s.labels["model_name"]: s.value for f in text_string_to_metric_families(server.get("/metrics").text)
            for s in f.samples if s.name == ":pyserving:model_memory_bytes"}


def test_only_preloaded_models_load_at_start_and_all_are_ready(server):
    assert _loaded(server) == {"m000"}
    assert server.get("/readyz").status_code == 200  # the others load on demand: ready
    assert server.get("/v2/health/ready").status_code == 200


def test_status_and_the_v2_repository_say_not_loaded_and_a_v2_load_loads(server):
    # A model never asked for has no versions yet, and its status says why (one loaded and evicted
    # shows its version END, as TF Serving shows unloaded versions).
    name = "m199"
    r = server.get(f"/v1/models/{name}")
    assert "not loaded: version 123 loads on its first request" in r.json()["error"]
    assert server.get("/v1/models").json()["model_state"][name] == "UNLOADED"
    summary = {m["name"]: m for m in server.get("/v1/status").json()["models"]}
    assert summary[name]["state"] == "UNLOADED" and summary["m000"]["state"] == "LOADED"
    index = {e["name"]: e for e in server.post("/v2/repository/index").json()}
    assert len(index) == MODELS and index[name]["state"] == "UNAVAILABLE" and "not loaded" in index[name]["reason"]
    r = server.post(f"/v2/repository/models/{name}/load")
    assert r.status_code == 200, r.text
    assert name in _loaded(server) and len(_loaded(server)) <= BUDGET
    assert {e["name"]: e for e in server.post("/v2/repository/index").json()}[name]["state"] == "READY"
    assert server.get("/v1/models").json()["model_state"][name] == "LOADED"
    assert 0.5 * 2**20 < _memory(server)[name] < 2 * 2**20  # its 24 KB of files and 1 MiB a version


def test_random_traffic_over_200_models_stays_within_the_budget(server):
    rng = random.Random(7)
    names = [f"m{i:03d}" for i in range(MODELS)]
    order = rng.sample(names, MODELS) + [rng.choice(names) for _ in range(MODELS // 2)]  # each one at least once
    stop, peaks, errors = threading.Event(), [], []

    def watch():  # the budget, as status shows it, sampled every 20 ms while the traffic runs
        while not stop.wait(0.02):
            peaks.append(len(_loaded(server)))

    def call(i_model):
        i, model = i_model
        try:
            if i % 2:
                with server.channel() as channel:
                    request = predict_pb2.PredictRequest()
                    request.model_spec.name = model
                    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [3.0]], np.float32)))
                    y = tf.make_ndarray(prediction_service_pb2_grpc.PredictionServiceStub(channel)
                                        .Predict(request, 60).outputs["y"]).tolist()
                assert y == [[2.5], [3.5]], y
            else:
                r = server.post(f"/v1/models/{model}:predict", json={"instances": [1.0, 3.0]})
                assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.5]}, r.text
        except (AssertionError, grpc.RpcError) as e:
            errors.append((model, repr(e)[:300]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(call, enumerate(order)))
    finally:
        stop.set()
        watcher.join(30)
    assert not errors, errors[:5]
    assert peaks and max(peaks) <= BUDGET, max(peaks)
    assert len(_loaded(server)) <= BUDGET and "m000" in _loaded(server)  # preloaded: never evicted
    counts = _residency(server)
    distinct = MODELS - 1  # every model but the preloaded one
    assert counts.get("load", 0) >= distinct and counts.get("evict", 0) >= distinct - (BUDGET - 1), counts


def test_metadata_loads_a_model_and_status_lists_every_model(server):
    r = server.get("/v1/models/m150/metadata")
    assert r.status_code == 200 and "serving_default" in r.text
    assert "m150" in _loaded(server)
    assert len(server.get("/v1/models").json()["models"]) == MODELS


def _export_weights(path: str, megabytes: int) -> None:
    """y = x + w[0], with ``megabytes`` of random float32 weights (all restored at load)."""
    module = tf.Module()
    module.w = tf.Variable(np.random.default_rng(megabytes).random(megabytes << 18, dtype=np.float32))
    module.serve = tf.function(lambda x: {"y": x + module.w[0]},
                               input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def test_a_memory_budget_unloads_the_least_recently_used_to_stay_within_it(tmp_path):
    _export_weights(str(tmp_path / "w8" / "1"), 8)  # ~9 MiB each as estimated: two fit in 20 MiB
    _export_weights(str(tmp_path / "huge" / "1"), 24)
    for name in ("a", "b", "c"):
        (tmp_path / name).symlink_to(tmp_path / "w8", target_is_directory=True)
    config = tmp_path / "models.config"
    # A label on a model not loaded: it names a version that loads on demand (TF Serving refuses
    # labels on versions not AVAILABLE, which would refuse every label under a budget).
    config.write_text(model_config({n: str(tmp_path / n) for n in ("a", "b", "c", "huge")},
                                   {"b": 'version_labels { key: "stable" value: 1 }'}))
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }')
    server = ServerProcess(f"--model_config_file={config}", "--max_loaded_model_memory_mb=20",
                           f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        first = server.post("/v1/models/a:predict", json={"instances": [1.0]}).json()["predictions"][0]
        for path in ("b/labels/stable", "c", "a"):  # c evicts a (least recently used), then a evicts b
            r = server.post(f"/v1/models/{path}:predict", json={"instances": [1.0]})
            assert r.status_code == 200 and r.json()["predictions"] == [first], r.text
        states = server.get("/v1/models").json()["model_state"]
        assert states == {"a": "LOADED", "b": "UNLOADED", "c": "LOADED", "huge": "UNLOADED"}, states
        memory = _memory(server)
        assert set(memory) == {"a", "c"} and all(8 << 20 < v < 10 << 20 for v in memory.values()), memory
        r = server.post("/v1/models/huge:predict", json={"instances": [1.0]})
        assert r.status_code == 400 and "more than --max_loaded_model_memory_mb (20 MiB)" in r.json()["error"], r.text
        assert server.get("/v1/models").json()["model_state"] == states  # the refusal unloaded nothing
        assert "oneDNN kernels off" in server.log()  # so an unloaded model's memory goes back
        log = server.log()  # an eviction says so, and why
        assert ("Evicting model a (the least recently used idle model) to load c on its first request within "
                "the budget of loaded models (--max_loaded_model_memory_mb=20)") in log
        assert "Unloaded servable version {name: a version: 1} (evicted under the budget of loaded models)" in log
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
