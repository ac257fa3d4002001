"""Classify, Regress and MultiInference over gRPC (official stubs) and REST."""

from __future__ import annotations

import math

import grpc
import pytest
import tensorflow as tf
from support import models
from support.server import serve_models
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("example_models")
    server = serve_models(root, {"ex": models.export_tf1_examples, "tf2": models.export_tf2_linear})
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def stub(server):
    channel = server.channel()
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def example(**features: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()}))


def example_input(*xs: float) -> input_pb2.Input:
    request_input = input_pb2.Input()
    request_input.example_list.examples.extend(example(x=x) for x in xs)
    return request_input


def softmax_pos(x: float) -> float:
    return math.exp(x) / (math.exp(x) + math.exp(-x))


def test_classify(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "classify"
    request.input.CopyFrom(example_input(0.5, -1.0))
    response = stub.Classify(request, 10)
    assert response.model_spec.name == "ex" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "classify"
    first, second = response.result.classifications
    assert [c.label for c in first.classes] == ["neg", "pos"]
    assert first.classes[1].score == pytest.approx(softmax_pos(0.5), rel=1e-5)
    assert second.classes[1].score == pytest.approx(softmax_pos(-1.0), rel=1e-5)


def test_classify_scores_only_has_empty_labels(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "scores_only"
    request.input.CopyFrom(example_input(0.0))
    (classification,) = stub.Classify(request, 10).result.classifications
    assert [(c.label, c.score) for c in classification.classes] == [("", 0.5), ("", 0.5)]


def test_regress_default_signature_and_2d_outputs(stub):
    for signature in ("", "regress_2d"):
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "ex"
        request.model_spec.signature_name = signature
        request.input.CopyFrom(example_input(1.5, -2.0))
        response = stub.Regress(request, 10)
        assert [r.value for r in response.result.regressions] == [3.0, -4.0]
        assert response.model_spec.signature_name == (signature or "serving_default")


def test_example_list_with_context(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "regress"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(example(bias=10.0))
    with_context.examples.extend([example(x=1.0), example(x=2.0, bias=-1.0)])
    response = stub.Regress(request, 10)
    # context merged into every example; the example's own feature wins
    assert [r.value for r in response.result.regressions] == [12.0, 3.0]


def test_multi_inference(stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "tensorflow/serving/classify"),
                              ("regress", "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.name = "ex"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.CopyFrom(example_input(1.0, 2.0))
    response = stub.MultiInference(request, 10)
    classify, regress = response.results
    assert classify.model_spec.signature_name == "classify"
    assert len(classify.classification_result.classifications) == 2
    assert [r.value for r in regress.regression_result.regressions] == [2.0, 4.0]
    assert regress.model_spec.version.value == 1


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.tasks.add(model_spec={"name": "tf2", "signature_name": "x"},
                           method_name="tensorflow/serving/regress"), "same model name"),
    (lambda r: r.tasks.add(model_spec={"name": "ex", "signature_name": "regress"},
                           method_name="tensorflow/serving/regress"), "Duplicate evaluation of signature: regress"),
    (lambda r: r.tasks.add(model_spec={"name": "ex", "signature_name": "predict"},
                           method_name="tensorflow/serving/predict"), "Unsupported signature method_name"),
])
def test_multi_inference_errors(stub, mutate, needle):
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec={"name": "ex", "signature_name": "regress"},
                      method_name="tensorflow/serving/regress")
    mutate(request)
    request.input.CopyFrom(example_input(1.0))
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


def test_method_name_is_checked(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "regress"
    request.input.CopyFrom(example_input(1.0))
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensorflow/serving/classify" in info.value.details()


def test_signature_must_be_a_regression(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "tf2"  # TF2 'serving_default': a float tensor in, y and y_sum out
    request.input.CopyFrom(example_input(1.0))
    with pytest.raises(grpc.RpcError) as info:
        stub.Regress(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # TF Serving's checks, in its order: the outputs first; the input's dtype is the graph's to judge.
    assert "to have an output named outputs" in info.value.details()


def test_empty_input(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "ex"
    request.model_spec.signature_name = "classify"
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Input is empty" in info.value.details()


def test_rest_classify_and_regress(server):
    r = server.post("/v1/models/ex:classify",
                    json={"signature_name": "classify", "examples": [{"x": 0.5}, {"x": [-1.0]}]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [label for label, _ in results[0]] == ["neg", "pos"]
    assert results[0][1][1] == pytest.approx(softmax_pos(0.5), rel=1e-5)
    r = server.post("/v1/models/ex/versions/1:regress",
                    json={"signature_name": "regress", "context": {"bias": 1.0}, "examples": [{"x": 1.0}, {"x": 2.5}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [3.0, 6.0]}


@pytest.mark.parametrize("body, needle", [
    ({"examples": []}, "empty"),
    ({"examples": {"x": 1}}, "'examples' must be a JSON list"),
    ({"examples": [{"x": [1, "a"]}]}, "feature examples[0].x"),
    ({"signature_name": "classify", "examples": [{"y": 1.0}]}, "x"),
    # JSON integers become int64 features, as in TF Serving; the model wants floats.
    ({"signature_name": "regress", "examples": [{"x": 1}]}, "Data types don't match"),
])
def test_rest_example_errors(server, body, needle):
    r = server.post("/v1/models/ex:regress", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
