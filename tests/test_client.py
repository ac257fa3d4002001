"""pyserving.client against the real server, over both protocols, with TF Serving's half_plus_two."""

from __future__ import annotations

import numpy as np
import pytest
from support.server import serve_half_plus_two
from tensorflow.core.example import example_pb2

from pyserving.client import Client
from pyserving.errors import Code, ServingError


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = serve_half_plus_two(tmp_path_factory.mktemp("client"))
    yield server
    assert server.stop() == 0


@pytest.fixture(params=["grpc", "rest"])
def client(request, server):
    target = server.grpc_target if request.param == "grpc" else server.rest_url
    with Client(target, protocol=request.param, timeout=10) as c:
        yield c


def test_predict(client):
    outputs = client.predict("hpt", {"x": np.array([[1.0], [2.0], [5.0]], np.float32)})
    np.testing.assert_array_equal(outputs["y"], [[2.5], [3.0], [4.5]])
    by_version = client.predict("hpt", {"x": np.array([[4.0]], np.float32)}, version=123)
    np.testing.assert_array_equal(by_version["y"], [[4.0]])


def test_classify_and_regress(client):
    classes = client.classify("hpt", [{"x": 1.0}, {"x": 3.0}], signature_name="classify_x_to_y")
    assert [[score for _, score in row] for row in classes] == [[2.5], [3.5]]
    values = client.regress("hpt", [{"x": 2.0}], signature_name="regress_x_to_y")
    np.testing.assert_array_equal(values, [3.0])


def test_status_and_metadata(client):
    assert client.status("hpt") == [{"version": 123, "state": "AVAILABLE", "error": ""}]
    signatures = client.metadata("hpt")
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y"} <= set(signatures["signature_def"])


def test_errors_carry_the_same_code_on_both_protocols(client):
    with pytest.raises(ServingError) as missing:
        client.predict("nope", {"x": np.array([[1.0]], np.float32)})
    assert missing.value.code == Code.NOT_FOUND and "nope" in missing.value.message
    with pytest.raises(ServingError) as bad:
        client.predict("hpt", {"no_such_input": np.array([[1.0]], np.float32)})
    assert bad.value.code == Code.INVALID_ARGUMENT


def test_one_behaviour_on_both_protocols(client):
    """A bare array goes to the signature's only input, and outputs come back in the model's
    dtypes (REST's JSON numbers are float32 again), over gRPC as over REST."""
    outputs = client.predict("hpt", np.array([[1.0], [3.0]], np.float32))
    assert outputs["y"].dtype == np.float32
    np.testing.assert_array_equal(outputs["y"], [[2.5], [3.5]])
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(3.0)
    scores = client.predict("hpt", np.array([example.SerializeToString()], object), signature_name="classify_x_to_y")
    assert scores["scores"].dtype == np.float32 and scores["scores"].tolist() == [[3.5]]
