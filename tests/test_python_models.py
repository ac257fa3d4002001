"""Python models (model.py in a version folder, --enable_python_models): the three examples in
examples/ over TF Serving's REST and gRPC APIs and the Open Inference Protocol, errors, version
swaps under traffic, a crashing __init__, batching, and the flag off (the code never runs)."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from google.protobuf import text_format
from support.server import HALF_PLUS_TWO, ServerProcess, arrive, model_config, wait_for, wait_state
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# scikit-learn is not in the venv (TensorFlow's import would load it in every process): `make test`
# installs it here, and the iris model finds it on its server's PYTHONPATH, as a model's own library.
SKLEARN = Path(__file__).resolve().parents[1] / ".tools" / "sklearn"
YDF = Path(__file__).resolve().parents[1] / ".tools" / "ydf"  # the forest example's, the same way
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


def _example(name: str, script: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(out, "JPEG")
    return out.getvalue()


def _write_linear(folder: str, scale: float, at_import: str = "", in_init: str = "pass") -> None:
    """A model.py that is the whole model, y = scale * x, with a helper module of its own (each
    version's helper.py must be its own); ``rows``: how many rows predict was handed."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.py").write_text(
        f"import numpy as np\nfrom helper import SCALE\n{at_import}\n"
        "class Model:\n"
        "    signatures = {'serving_default': {'inputs': {'x': ('float32', [-1])},\n"
        "                                      'outputs': {'y': ('float32', [-1]), 'rows': ('int64', [-1])}}}\n"
        "    def __init__(self, path):\n"
        f"        {in_init}\n"
        "    def predict(self, inputs, signature_name):\n"
        "        x = inputs['x']\n"
        "        return {'y': (x * SCALE).astype(np.float32), 'rows': np.full(x.shape, len(x), np.int64)}\n")
    (path / "helper.py").write_text(f"SCALE = {scale}\n")


BROKEN = """
import numpy as np

class Model:
    signatures = {name: {"inputs": {"x": ("float32", [-1])}, "outputs": {"y": ("float32", [-1])}}
                  for name in ("crash", "wrong_dtype", "missing")}

    def __init__(self, path):
        pass

    def predict(self, inputs, signature_name):
        if signature_name == "crash":
            return {"y": inputs["x"] / 0 if inputs["x"].size > 99 else 1 // 0}
        if signature_name == "wrong_dtype":
            return {"y": inputs["x"].astype(np.float64)}
        return {}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("python-models")
    assert (SKLEARN / "sklearn").is_dir(), f"scikit-learn is not in {SKLEARN}: `make test` installs it"
    assert (YDF / "ydf").is_dir(), f"YDF is not in {YDF}: `make test` installs it"
    sys.path.extend((str(SKLEARN), str(YDF)))  # to train them here
    _example("sklearn_iris", "train.py").write_version(str(root / "iris" / "1"))
    _example("ydf_forest", "train.py").write_version(str(root / "forest" / "1"))
    _example("image_classifier", "export.py").write_version(str(root / "images" / "1"))
    export_mnist(str(root / "mnist"), 1, load_mnist(mnist_dir), training_iteration=100)  # writes mnist/1
    (root / "mnist" / "1" / "model.py").write_bytes((EXAMPLES / "mnist_top_k" / "model.py").read_bytes())
    _write_linear(str(root / "linear" / "1"), 2.0)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.py").write_text(BROKEN)
    config = root / "models.config"
    config.write_text(model_config({n: str(root / n) for n in ("iris", "forest", "images", "mnist", "linear", "broken")}))
    # No load retries: a version whose __init__ fails is END at once, not after 5 minutes of retries.
    server = ServerProcess(f"--model_config_file={config}", "--enable_python_models", "--max_num_load_retries=0",
                           "--file_system_poll_wait_seconds=1", log_path=root / "server.log",
                           env={"PYTHONPATH": os.pathsep.join((str(SKLEARN), str(YDF)))}).wait_ready()
    server.root = root
    yield server
    assert server.stop() == 0


def _predict(server: ServerProcess, model: str, inputs: dict, timeout: float = 30):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    with server.channel() as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout)


# ---- the examples, over every API -------------------------------------------------------------

def test_ydf_forest_without_a_saved_model(server):
    """A decision forest with no TF-DF build for this TensorFlow: YDF in a Python model."""
    rows = [{"age": 25.0, "country": "fr"}, {"age": 60.0, "country": "fr"}, {"age": 60.0, "country": "jp"}]
    r = server.post("/v1/models/forest:predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    rest = np.array(r.json()["predictions"], np.float32)
    assert rest.shape == (3,) and rest[1] > 0.7 and rest[0] < 0.3 and rest[2] < 0.3, rest  # the rule it learnt
    response = _predict(server, "forest", {"age": np.array([r["age"] for r in rows], np.float32),
                                           "country": np.array([r["country"].encode() for r in rows], object)})
    assert tf.make_ndarray(response.outputs["probability"]).tolist() == rest.tolist()
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    age, country = triton_http.InferInput("age", [1], "FP32"), triton_http.InferInput("country", [1], "BYTES")
    age.set_data_from_numpy(np.array([60.0], np.float32))
    country.set_data_from_numpy(np.array([b"fr"], object))
    assert http.infer("forest", [age, country]).as_numpy("probability").tolist() == rest[1:2].tolist()
    bad = server.post("/v1/models/forest:predict", json={"inputs": {"age": [30.0, 40.0], "country": ["fr"]}})
    assert bad.status_code == 400 and "age and country must be lists of one length" in bad.json()["error"], bad.text


def test_sklearn_model_without_a_saved_model(server):
    r = server.post("/v1/models/iris:predict", json={"instances": [SETOSA, VIRGINICA]})
    assert r.status_code == 200, r.text
    assert [p["species"] for p in r.json()["predictions"]] == ["setosa", "virginica"]
    response = _predict(server, "iris", {"measurements": np.array([SETOSA], np.float32)})
    assert tf.make_ndarray(response.outputs["species"]).tolist() == [b"setosa"]
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, 3)
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    x = triton_http.InferInput("measurements", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([VIRGINICA], np.float32))
    assert http.infer("iris", [x]).as_numpy("species").tolist() == [b"virginica"]
    assert http.get_model_metadata("iris")["inputs"] == [{"name": "measurements", "datatype": "FP32", "shape": [-1, 4]}]
    assert http.get_model_metadata("iris")["platform"] == "python"  # not a SavedModel's
    assert http.get_model_config("iris")["backend"] == "python"
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "iris"
    with server.channel() as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(metadata, 30)
    assert answer.model_spec.version.value == 1


def test_image_classifier_decodes_jpeg_and_runs_its_saved_model(server):
    images = [_jpeg((200, 30, 30)), _jpeg((20, 30, 220))]
    response = _predict(server, "images", {"image": np.array(images, dtype=object)})
    labels = tf.make_ndarray(response.outputs["label"]).tolist()
    assert set(labels) <= {b"cat", b"dog", b"bird", b"fish"} and len(labels) == 2
    scores = tf.make_ndarray(response.outputs["score"])
    assert scores.shape == (2,) and all(0 < s <= 1 for s in scores)
    r = server.post("/v1/models/images:predict",
                    json={"instances": [{"b64": base64.b64encode(images[0]).decode()}]})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"].encode() == labels[0], r.text
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    x = triton_grpc.InferInput("image", [1], "BYTES")
    x.set_data_from_numpy(np.array([images[1]], dtype=object))
    assert grpc_client.infer("images", [x]).as_numpy("label").tolist() == [labels[1]]
    # Bytes that are no image: the model's InvalidInput, a 400 naming the reason.
    r = server.post("/v1/models/images:predict", json={"instances": [{"b64": base64.b64encode(b"nope").decode()}]})
    assert r.status_code == 400 and "not a JPEG or PNG" in r.json()["error"]


def test_top_k_post_processes_the_saved_model_scores(server, mnist_dir):
    data = load_mnist(mnist_dir)
    images = data.test_images[:4].reshape(4, 784).astype(np.float32)
    response = _predict(server, "mnist", {"images": images})
    digits = tf.make_ndarray(response.outputs["digits"])
    scores = tf.make_ndarray(response.outputs["scores"])
    assert digits.shape == (4, 3) and scores.shape == (4, 3)
    assert all(list(row) == sorted(row, reverse=True) for row in scores)
    names = "zero one two three four five six seven eight nine".split()
    assert sum(d[0].decode() == names[label] for d, label in zip(digits, data.test_labels[:4])) >= 2
    with pytest.raises(grpc.RpcError) as info:
        _predict(server, "mnist", {"images": images[:, :700]})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "[n, 784]" in info.value.details()
    r = server.post("/v1/models/mnist:predict", json={"instances": images[:1].tolist()})
    assert r.status_code == 200 and r.json()["predictions"][0]["digits"] == [d.decode() for d in digits[0]]
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    x = triton_grpc.InferInput("images", [2, 784], "FP32")
    x.set_data_from_numpy(images[:2])
    assert grpc_client.infer("mnist", [x]).as_numpy("digits").tolist() == digits[:2].tolist()


def test_python_models_are_in_the_status_page_and_metrics(server):
    assert server.post("/v1/models/iris:predict", json={"instances": [SETOSA]}).status_code == 200
    summary = server.get("/v1/status").json()
    iris = next(m for m in summary["models"] if m["name"] == "iris")
    assert iris["served_version"] == 1 and iris["state"] == "LOADED"
    assert iris["requests"]["total"] >= 1
    iris = server.get("/v1/status", params={"model": "iris"}).json()  # the details: signatures
    assert [s["name"] for s in iris["signatures"]] == ["serving_default"]
    assert {t["alias"] for t in iris["signatures"][0]["outputs"]} == {"species", "probabilities"}


# ---- versions: swaps under traffic, a crashing __init__ --------------------------------------

def test_version_swap_under_traffic_fails_nothing(server):
    answers, stop = [], threading.Event()

    def traffic():
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(f"{server.rest_url}/v1/models/linear:predict", json={"instances": [1.0]}, timeout=30)
                answers.append((r.status_code, r.json()))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        arrive(server.root / "linear", 2, lambda path: _write_linear(path, 3.0))
        wait_for(lambda: answers and answers[-1][1].get("predictions", [{}])[0].get("y") == 3.0, 60,
                 "version 2 to answer")
    finally:
        stop.set()
        thread.join(30)
    assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    assert {a["predictions"][0]["y"] for _, a in answers} == {2.0, 3.0}  # each version with its own helper.py


def test_a_crashing_init_leaves_the_previous_version_serving(server):
    arrive(server.root / "linear", 3, lambda path: _write_linear(path, 4.0, in_init="raise RuntimeError('no GPU here')"))
    state = wait_state(server, "linear", 3, "END")
    assert "no GPU here" in state["status"]["error_message"]
    r = server.post("/v1/models/linear:predict", json={"instances": [1.0]})
    assert r.status_code == 200 and r.json()["predictions"][0]["y"] in (2.0, 3.0)


def test_model_code_failures_are_internal_and_say_what_failed_not_where_it_lives(server):
    cases = {"crash": "ZeroDivisionError", "wrong_dtype": "output 'y' is float64", "missing": "output 'y'"}
    for signature, words in cases.items():
        r = server.post("/v1/models/broken:predict", json={"signature_name": signature, "instances": [1.0]})
        error = r.json()["error"]
        assert r.status_code == 500 and words in error and "The Python model" in error, r.text
        assert str(server.root) not in error and "broken/1" not in error, error  # the server's folders stay its own
        with pytest.raises(grpc.RpcError) as info:
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = "broken", signature
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
            with server.channel() as channel:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)
        assert info.value.code() == grpc.StatusCode.INTERNAL
    for _ in range(20):  # a model failing on every request logs its traceback now and then, not each time
        server.post("/v1/models/broken:predict", json={"signature_name": "crash", "instances": [1.0]})
    log = server.log()
    assert log.count("raised in predict") == 1 and "ZeroDivisionError" in log
    assert f"Python model {server.root / 'broken' / '1'} raised in predict" in log  # the operator's log names it
    assert server.post("/v1/models/linear:predict", json={"instances": [1.0]}).status_code == 200


# ---- the flag off: the code never runs -------------------------------------------------------

def test_without_the_flag_the_folder_fails_to_load_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "imported"
    _write_linear(str(tmp_path / "m" / "1"), 2.0, at_import=f"open({str(marker)!r}, 'w').close()")
    server = ServerProcess("--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--max_num_load_retries=0",
                           log_path=tmp_path / "server.log")
    assert server.proc.wait(120) != 0  # an initial model that can't load ends the start, as in TF Serving
    server.stop()
    assert "--enable_python_models" in server.log()
    assert not marker.exists()


# ---- batching: predict receives the batch ----------------------------------------------------

def test_batching_hands_predict_the_batched_inputs(tmp_path):
    _write_linear(str(tmp_path / "linear" / "1"), 2.0)
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 50000 } "
                      "num_batch_threads { value: 1 }")
    server = ServerProcess("--model_name=linear", f"--model_base_path={tmp_path / 'linear'}",
                           "--enable_python_models", "--enable_batching", f"--batching_parameters_file={params}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        results = []

        def call(value: float):
            response = _predict(server, "linear", {"x": np.array([value], np.float32)})
            results.append((value, tf.make_ndarray(response.outputs["y"]).tolist(),
                            tf.make_ndarray(response.outputs["rows"]).tolist()))

        threads = [threading.Thread(target=call, args=(float(i),)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(v for v, _, _ in results) == [float(i) for i in range(8)]
        assert all(y == [2 * v] for v, y, _ in results)  # each caller gets its own row back
        assert max(rows[0] for _, _, rows in results) > 1  # predict saw several requests as one batch
    finally:
        assert server.stop() == 0


def test_a_python_model_without_the_flag_is_refused_at_once_not_retried(tmp_path):
    """A refusal by policy can't change on retry: the version ends with the reason, and the reload
    that asked for it answers within seconds, not after the load retries (5 x 60 s by default)."""
    _write_linear(str(tmp_path / "py" / "1"), 2.0)
    server = ServerProcess("--model_name=hpt", f"--model_base_path={HALF_PLUS_TWO}",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(model_config({"hpt": str(HALF_PLUS_TWO), "py": str(tmp_path / "py")}), request.config)
        with server.channel() as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, 60)
            took = time.monotonic() - started
        assert took < 10, f"the reload took {took:.1f} s"
        assert "--enable_python_models" in info.value.details() and "name: py" in info.value.details()
        status = server.get("/v1/models/py").json()["model_version_status"][0]
        assert status["state"] == "END", status
        assert "--enable_python_models" in status["status"]["error_message"]
        assert "retrying in" not in server.log() and "not retrying: the server's flags refuse it" in server.log()
        r = server.post("/v1/models/hpt:predict", json={"instances": [1.0, 2.0, 5.0]})
        assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    finally:
        assert server.stop() == 0
