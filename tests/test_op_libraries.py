"""TF Text's ops are there, as in TF Serving's binary; an op nobody registered fails once, saying
which package would provide it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from support import models, text_models
from support.server import ServerProcess, arrive, serve_models, wait_state
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

SENTENCES = ["The  QUICK brown ﬁx jumped over the lazy dog!", "Ⅻ naïve café", "unbelievable", ""]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("tftext")
    server = serve_models(root, {"words": text_models.export_words, "bert": text_models.export_bert_tokens})
    yield root, server
    assert server.stop() == 0


def _plain(array: np.ndarray) -> list:
    """As JSON carries it: strings decoded."""
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


def _in_process(path, sentences) -> dict:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(sentences=tf.constant(sentences)).items()}


@pytest.mark.parametrize("model", ["words", "bert"])
def test_tf_text_models_answer_as_in_process(served, model):
    root, server = served
    expected = _in_process(root / model / "1", SENTENCES)
    r = server.post(f"/v1/models/{model}:predict", json={"inputs": {"sentences": SENTENCES}})
    assert r.status_code == 200, r.text
    for name, want in expected.items():
        got = np.array(r.json()["outputs"][name])
        assert got.tolist() == _plain(want), name
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["sentences"].CopyFrom(tf.make_tensor_proto(SENTENCES))
    with server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)
    for name, want in expected.items():
        assert np.array_equal(tf.make_ndarray(response.outputs[name]), want), name
    v2 = server.post(f"/v2/models/{model}/infer", json={"inputs": [
        {"name": "sentences", "shape": [len(SENTENCES)], "datatype": "BYTES", "data": SENTENCES}]})
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    for name, want in expected.items():
        assert outputs[name]["shape"] == list(want.shape)
        assert outputs[name]["data"] == _plain(want.flatten())


def test_the_start_up_log_names_the_op_libraries(served):
    _, server = served
    assert re.search(r"Op libraries: registered tensorflow-text 2\.\d+", server.log())


def _with_ops(path: str, renames: dict[str, str]) -> str:
    """half_plus_two (TF2) whose graph's ops are renamed: ops no library here registers."""
    models.export_tf2_linear(path)
    saved = saved_model_pb2.SavedModel()
    pb = f"{path}/saved_model.pb"
    with open(pb, "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    for node in [*graph.node, *(n for fn in graph.library.function for n in fn.node_def)]:
        node.op = renames.get(node.op, node.op)
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())
    return path


def test_a_model_needing_an_unregistered_op_fails_once_naming_its_package(tmp_path):
    base = tmp_path / "forest"
    server = ServerProcess(f"--model_base_path={base}", "--model_name=forest",
                           "--file_system_poll_wait_seconds=1", log_path=tmp_path / "server.log").wait_ready()
    try:
        arrive(base, 1, lambda p: _with_ops(p, {"MatMul": "SimpleMLInferenceOpWithHandle",
                                                "AddV2": "Addons>Frobnicate", "Identity": "MyCustomOp"}))
        status = wait_state(server, "forest", 1, "END", timeout=30)
        message = status["status"]["error_message"]
        assert status["status"]["error_code"] == "FAILED_PRECONDITION", status
        for fragment in ("'SimpleMLInferenceOpWithHandle' from TensorFlow Decision Forests",
                         "tensorflow-decision-forests==", "'Addons>Frobnicate' from TensorFlow Addons",
                         "'MyCustomOp' (not an op of TensorFlow", "tf.load_op_library"):
            assert fragment in message, message
        log = server.log()
        assert "attempt 1 of" in log and "not retrying: no retry registers an op" in log
        assert "attempt 2 of" not in log and "Traceback" not in log
        assert not re.search(r"^\S+ \S+ [EC] ", log, re.M), log
    finally:
        assert server.stop() == 0


def test_the_remedy_names_the_release_built_for_this_tensorflow():
    from pyserving.runtime import op_libraries as ol

    assert ol._required_tensorflow("tensorflow-text") == tf.__version__.rsplit(".", 1)[0] + ".0"
    libraries = ol.OpLibraries(tensorflow="2.19.0", unusable={"tensorflow-decision-forests": "it is not installed",
                                                               "tensorflow-text": "it is not installed"})
    message = libraries.describe_missing(["SimpleMLCreateModelResource", "TFText>NgramsStringJoin"])
    assert "pip install 'tensorflow-decision-forests==1.12.0' (the release built for TensorFlow 2.19)" in message
    assert "pip install 'tensorflow-text==2.19.*'" in message
    assert ol.TF_DF.release_for("2.99.1") is None and ol.TF_TEXT.release_for("2.21.0") == "2.21.*"
