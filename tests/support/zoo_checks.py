"""Serving a zoo family (zoo.py) and checking every answer against the same signature run
in-process: TF Serving's REST and gRPC, the Open Inference Protocol through Triton's own client,
and the metadata against `saved_model_cli show`."""

from __future__ import annotations

import base64
import contextlib
import io
import re

import numpy as np
import pytest
import tensorflow as tf
import tritonclient.http as triton
from tensorflow.core.framework import types_pb2
from tensorflow.python.tools import saved_model_cli
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from . import zoo
from .server import ServerProcess, serve_models


def serve(tmp_path_factory, names: list[str]) -> tuple:
    """Export ``names`` under one root and serve them: (root, server)."""
    root = tmp_path_factory.mktemp("zoo")
    server = serve_models(root, {name: zoo.FAMILIES[name].export for name in names})
    return root, server


def stop(server: ServerProcess) -> None:
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def served(names: list[str]):
    """A module fixture: ``names`` exported and served, (root, server)."""
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory):
        root, server = serve(tmp_path_factory, names)
        yield root, server
        stop(server)
    return fixture


def _json_value(array: np.ndarray):
    if array.dtype == object:
        def one(b: bytes):
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(b).decode()}
        return np.vectorize(one, otypes=[object])(array).tolist()
    return array.tolist()


def _from_json(value, like: np.ndarray) -> np.ndarray:
    if like.dtype == object:
        return np.array(value, dtype=object).astype(str).astype(object) if np.ndim(value) else np.array(value)
    return np.array(value, dtype=like.dtype)


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)
    elif want.dtype == object:
        assert [_text(v) for v in got.flatten()] == [_text(v) for v in want.flatten()], what
    else:
        assert np.array_equal(got, want), what


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _in_process(path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _rest(server, name: str, inputs: dict[str, np.ndarray], expected: dict) -> None:
    r = server.post(f"/v1/models/{name}:predict", json={"inputs": {k: _json_value(v) for k, v in inputs.items()}})
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    if len(expected) == 1:  # TF Serving's columnar answer: the one output's value, unnamed
        outputs = {next(iter(expected)): outputs}
    for key, want in expected.items():
        _same(_from_json(outputs[key], want), want, f"REST {name}.{key}")


def _grpc(server, name: str, inputs: dict[str, np.ndarray], expected: dict) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 60)
    assert set(response.outputs) == set(expected)
    for key, want in expected.items():
        _same(tf.make_ndarray(response.outputs[key]), want, f"gRPC {name}.{key}")


V2_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(object): "BYTES"}


def _open_inference(server, name: str, inputs: dict[str, np.ndarray], expected: dict) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.rest_port}", network_timeout=60)
    requested = []
    for key, value in inputs.items():
        tensor = triton.InferInput(key, list(value.shape), V2_TYPES[value.dtype])
        tensor.set_data_from_numpy(value, binary_data=True)
        requested.append(tensor)
    result = client.infer(name, requested, outputs=[triton.InferRequestedOutput(k, binary_data=True) for k in expected])
    for key, want in expected.items():
        _same(result.as_numpy(key), want, f"V2 {name}.{key}")


def _saved_model_cli(path) -> dict[str, tuple[str, str, str]]:
    """`saved_model_cli show --tag_set serve --signature_def serving_default`, parsed: (inputs|outputs,
    key) -> (dtype, shape, tensor name). Its own function, in this process: the command would
    import TensorFlow again for every model."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        saved_model_cli._show_inputs_outputs(str(path), "serve", "serving_default")
    return {(kind, key): (dtype, shape, tensor) for kind, key, dtype, shape, tensor in re.findall(
        r"(inputs|outputs)\['(.+?)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\S.*?)\s+name: (\S+)", out.getvalue())}


def _metadata(server, name: str) -> dict[str, tuple[str, str, str]]:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    with server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, 30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    found = {}
    for kind, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        for key, info in tensors.items():
            shape = ("unknown_rank" if info.tensor_shape.unknown_rank else
                     "(" + ", ".join(str(d.size) for d in info.tensor_shape.dim) + ")")
            found[(kind, key)] = (types_pb2.DataType.Name(info.dtype), shape, info.name)
    return found


def check(root, server, name: str) -> None:
    """Every way of asking ``name`` answers as in-process; its metadata is saved_model_cli's."""
    inputs = zoo.FAMILIES[name].inputs()
    expected = _in_process(root / name / "1", inputs)
    _rest(server, name, inputs, expected)
    _grpc(server, name, inputs, expected)
    _open_inference(server, name, inputs, expected)
    shown = _saved_model_cli(root / name / "1")
    assert shown and _metadata(server, name) == shown
