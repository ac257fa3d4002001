"""The TF Serving MNIST tutorial, end to end, against the real server process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from support.server import ServerProcess
from support.tutorial_export import export_like_tutorial
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.mnist.data import load_mnist

BIN = Path(sys.executable).parent
NUM_TESTS = 1000


@pytest.fixture(scope="module")
def data(mnist_dir):
    return load_mnist(mnist_dir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir):
    """Version 1 from `pyserving mnist export`, exactly as a user runs it."""
    base = tmp_path_factory.mktemp("tutorial") / "mnist"
    out = subprocess.run([str(BIN / "pyserving"), "mnist", "export", f"--data-dir={mnist_dir}",
                          "--model_version=1", str(base)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Done exporting!" in out.stdout
    return base


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    server = ServerProcess("--model_name=mnist", f"--model_base_path={exported}",
                           log_path=tmp_path_factory.mktemp("logs") / "server.log").wait_ready()
    yield server
    assert server.stop() == 0


def official_client_error_rate(target: str, data, num_tests: int = NUM_TESTS) -> float:
    """TF Serving's mnist_client.py way: make_tensor_proto in, float_val out, futures."""
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    futures = []
    for image, label in zip(data.test_images[:num_tests], data.test_labels[:num_tests]):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.model_spec.signature_name = "predict_images"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(image, shape=[1, image.size]))
        futures.append((stub.Predict.future(request, 10.0), label))
    errors = 0
    for future, label in futures:
        response = np.array(future.result().outputs["scores"].float_val)
        errors += int(np.argmax(response) != label)
    channel.close()
    return errors / num_tests


def test_official_client_on_pyserving_export(server, data):
    rate = official_client_error_rate(server.grpc_target, data)
    assert 0.0 < rate < 0.12


def test_official_client_on_tutorial_tf1_export(tmp_path, data):
    base = tmp_path / "mnist"
    export_like_tutorial(str(base), 1, data)
    server = ServerProcess("--model_name=mnist", f"--model_base_path={base}",
                           log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        rate = official_client_error_rate(server.grpc_target, data)
        assert 0.0 < rate < 0.12
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_pyserving_mnist_client_command(server, mnist_dir, protocol):
    target = server.grpc_target if protocol == "grpc" else f"127.0.0.1:{server.rest_port}"
    args = [str(BIN / "pyserving"), "mnist", "client", f"--server={target}", "--num_tests=1000",
            "--concurrency=4", f"--data-dir={mnist_dir}"] + (["--rest"] if protocol == "rest" else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"Inference error rate: ([\d.]+)%", out.stdout)
    assert match, out.stdout
    assert 0.0 < float(match.group(1)) < 12.0


def test_classification_signature_via_predict(server, data):
    """serving_default takes serialized tf.Examples with feature x; answers classes and scores."""
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=image))})).SerializeToString()
        for image in data.test_images[:20]]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(examples))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10)
    classes = tf.make_ndarray(response.outputs["classes"])
    scores = tf.make_ndarray(response.outputs["scores"])
    assert classes.shape == (20, 10) and scores.shape == (20, 10)
    assert np.all(np.diff(scores, axis=1) <= 0)  # top_k: best first
    predicted = np.array([int(c) for c in classes[:, 0]])
    assert np.mean(predicted == data.test_labels[:20]) >= 0.8


def test_mnist_classify_over_grpc_and_rest(server, data):
    """The tutorial's serving_default classification signature through both protocols."""
    from tensorflow_serving.apis import classification_pb2

    images, labels = data.test_images[:50], data.test_labels[:50]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "mnist"
    for image in images:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(image)
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, 10)
    grpc_best = [int(c.classes[0].label) for c in response.result.classifications]
    assert np.mean(np.array(grpc_best) == labels) >= 0.8
    r = server.post("/v1/models/mnist:classify", json={"examples": [{"x": image.tolist()} for image in images]})
    assert r.status_code == 200, r.text
    rest_best = [int(result[0][0]) for result in r.json()["results"]]
    assert rest_best == grpc_best
