"""Unit tests for pyserving.mnist: data loading, export, client and CLI wiring."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from support.server import free_port

from pyserving.mnist.cli import add_mnist_commands
from pyserving.mnist.client import ClientResult, format_result, run_client
from pyserving.mnist.data import MnistData, MnistFormatError, load_mnist, read_images, read_labels
from pyserving.mnist.export import export_mnist

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = os.environ.get("MNIST_DIR", str(REPO_ROOT.parent / "shared" / "mnist"))


@pytest.fixture(scope="module")
def data() -> MnistData:
    assert Path(MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(), f"MNIST data not found in {MNIST_DIR}"
    return load_mnist(MNIST_DIR)


@pytest.fixture(scope="module")
def exported(data: MnistData, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("models") / "mnist"
    return base, export_mnist(str(base), 1, data, training_iteration=300)


# --- data -----------------------------------------------------------------


def test_load_shapes_dtypes_ranges(data: MnistData) -> None:
    assert data.train_images.shape == (60000, 784) and data.train_images.dtype == np.float32
    assert data.test_images.shape == (10000, 784) and data.test_images.dtype == np.float32
    assert data.train_labels.shape == (60000,) and data.train_labels.dtype == np.int64
    assert data.test_labels.shape == (10000,) and data.test_labels.dtype == np.int64
    for images in (data.train_images, data.test_images):
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (data.train_labels, data.test_labels):
        assert set(np.unique(labels)) == set(range(10))


def test_load_uses_mnist_dir_env(monkeypatch: pytest.MonkeyPatch, data: MnistData) -> None:
    monkeypatch.setenv("MNIST_DIR", MNIST_DIR)
    assert np.array_equal(load_mnist().test_labels, data.test_labels)


def _write_gz(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as stream:
        stream.write(payload)
    return path


def test_truncated_gzip_is_reported(tmp_path: Path) -> None:
    whole = gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MnistFormatError, match=r"t10k-labels-idx1-ubyte\.gz.*not a valid gzip"):
        read_labels(bad)


def test_not_gzip_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(MnistFormatError, match="train-images-idx3-ubyte.gz"):
        read_images(bad)


def test_wrong_magic_is_reported(tmp_path: Path) -> None:
    # A label file where an image file is expected.
    bad = _write_gz(tmp_path / "x.gz", b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(MnistFormatError, match="magic number 0x00000801, expected 0x00000803"):
        read_images(bad)


def test_short_payload_is_reported(tmp_path: Path) -> None:
    bad = _write_gz(tmp_path / "x.gz", b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(4))
    with pytest.raises(MnistFormatError, match=r"declares shape \(10,\).*holds 4 bytes"):
        read_labels(bad)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """Says which files the folder must hold, and how to do without it (the Quickstart's
    --data-dir ../shared/mnist exists only beside this repository)."""
    with pytest.raises(MnistFormatError, match="train-images-idx3-ubyte.gz is missing") as info:
        load_mnist(str(tmp_path))
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)
    assert "drop --data-dir (and unset MNIST_DIR) to download them" in str(info.value)


# --- export ---------------------------------------------------------------


def test_export_layout_and_signature_defs(exported) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    base, result = exported
    assert result.path == str(base / "1") and result.version == 1
    assert 0.85 < result.test_accuracy <= 1.0
    # Only the final version folder: the temporary sibling was renamed away.
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    proto = saved_model_pb2.SavedModel.FromString((base / "1" / "saved_model.pb").read_bytes())
    (meta,) = proto.meta_graphs
    assert list(meta.meta_info_def.tags) == ["serve"]
    predict = meta.signature_def["predict_images"]
    assert predict.method_name == "tensorflow/serving/predict"
    assert set(predict.inputs) == {"images"} and set(predict.outputs) == {"scores"}
    assert predict.inputs["images"].name == "x:0" and predict.outputs["scores"].name == "y:0"
    classify = meta.signature_def["serving_default"]
    assert classify.method_name == "tensorflow/serving/classify"
    assert set(classify.inputs) == {"inputs"} and set(classify.outputs) == {"classes", "scores"}
    assert classify.inputs["inputs"].name == "tf_example:0"


def test_predict_images_error_rate(exported, data: MnistData) -> None:
    import tensorflow as tf

    base, _ = exported
    predict = tf.saved_model.load(str(base / "1")).signatures["predict_images"]
    scores = predict(images=tf.constant(data.test_images[:1000]))["scores"].numpy()
    assert scores.shape == (1000, 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4)
    error_rate = float(np.mean(scores.argmax(axis=1) != data.test_labels[:1000]))
    assert error_rate < 0.15


def _serialized_example(image: np.ndarray) -> bytes:
    import tensorflow as tf

    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=image.tolist()))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_serving_default_classifies_examples(exported, data: MnistData) -> None:
    import tensorflow as tf

    base, _ = exported
    classify = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    examples = [_serialized_example(image) for image in data.test_images[:20]]
    out = classify(inputs=tf.constant(examples))
    classes, scores = out["classes"].numpy(), out["scores"].numpy()
    assert classes.shape == (20, 10) and scores.shape == (20, 10)
    digits = {str(d).encode() for d in range(10)}
    for row_classes, row_scores in zip(classes, scores):
        assert set(row_classes) == digits
        assert np.all(np.diff(row_scores) <= 0)
    top = np.array([int(row[0]) for row in classes])
    assert np.mean(top == data.test_labels[:20]) >= 0.75


def test_export_refuses_existing_version(exported, data: MnistData) -> None:
    base, _ = exported
    with pytest.raises(ValueError, match="already exists"):
        export_mnist(str(base), 1, data, training_iteration=1)


# --- client against fake servers -------------------------------------------


def _always_zero(num: int = 1) -> list[list[float]]:
    return [[1.0] + [0.0] * 9 for _ in range(num)]


def _expected_rate(data: MnistData, num_tests: int) -> float:
    return float(np.mean(data.test_labels[:num_tests] != 0))


@pytest.fixture()
def grpc_server():
    """A PredictionService that answers "0" for model `mnist` (in float_val, as TF Serving does)
    and `packed` (in tensor_content, as other servers may), and NOT_FOUND otherwise."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - gRPC method name
            if request.model_spec.name not in ("mnist", "packed"):
                context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found")
            assert request.model_spec.signature_name == "predict_images"
            assert list(tf.make_ndarray(request.inputs["images"]).shape) == [1, 784]
            response = predict_pb2.PredictResponse()
            if request.model_spec.name == "packed":
                response.outputs["scores"].CopyFrom(tf.make_tensor_proto(np.float32(_always_zero())))
                assert not response.outputs["scores"].float_val
                return response
            # float_val, like TensorFlow Serving's own responses.
            scores = response.outputs["scores"]
            scores.dtype = tf.float32.as_datatype_enum
            scores.tensor_shape.dim.add(size=1)
            scores.tensor_shape.dim.add(size=10)
            scores.float_val.extend(_always_zero()[0])
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_grpc_client_counts_errors(grpc_server: str, data: MnistData) -> None:
    result = run_client(grpc_server, data, num_tests=50, concurrency=4)
    assert (result.num_tests, result.num_failures) == (50, 0), result.failure_messages
    assert result.error_rate == pytest.approx(_expected_rate(data, 50))


def test_grpc_client_reads_packed_scores(grpc_server: str, data: MnistData) -> None:
    result = run_client(grpc_server, data, num_tests=20, concurrency=2, model_name="packed")
    assert result.num_failures == 0, result.failure_messages
    assert result.error_rate == pytest.approx(_expected_rate(data, 20))


def test_grpc_client_counts_failures(grpc_server: str, data: MnistData) -> None:
    result = run_client(grpc_server, data, num_tests=10, concurrency=2, model_name="nope")
    assert result.num_failures == 10 and result.num_errors == 0
    assert 0 < len(result.failure_messages) <= 10
    assert result.failure_messages[0] == "NOT_FOUND: Servable not found"
    down = run_client(f"127.0.0.1:{free_port()}", data, num_tests=2, timeout=5)  # nothing listens
    assert down.num_failures == 2 and down.failure_messages[0].startswith("UNAVAILABLE: ")


@pytest.fixture()
def rest_server():
    """TF Serving's REST API for model `mnist`, answering "0": columnar predict (a lone output
    comes without its name) and the metadata that names it."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server hook name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/models/mnist:predict":
                self._answer(404, {"error": "Servable not found"})
                return
            assert body["signature_name"] == "predict_images"
            assert np.asarray(body["inputs"]["images"]).shape == (1, 784)
            self._answer(200, {"outputs": _always_zero()})

        def do_GET(self) -> None:  # noqa: N802 - http.server hook name
            assert self.path == "/v1/models/mnist/metadata", self.path
            signature = {"inputs": {"images": {"name": "x:0"}}, "outputs": {"scores": {"name": "y:0"}}}
            self._answer(200, {"model_spec": {"name": "mnist", "version": "1"},
                               "metadata": {"signature_def": {"signature_def": {"predict_images": signature}}}})

        def _answer(self, status: int, answer: dict) -> None:
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rest_client(rest_server: str, data: MnistData) -> None:
    result = run_client(rest_server, data, num_tests=30, concurrency=3, rest=True)
    assert result.num_failures == 0
    assert result.error_rate == pytest.approx(_expected_rate(data, 30))
    failed = run_client(rest_server, data, num_tests=4, rest=True, model_name="nope")
    assert failed.num_failures == 4 and failed.failure_messages[0] == "NOT_FOUND: Servable not found"
    down = run_client(f"127.0.0.1:{free_port()}", data, num_tests=2, rest=True)  # nothing listens
    assert down.num_failures == 2 and down.failure_messages[0].startswith("ConnectionError: ")


def test_format_result() -> None:
    ok = ClientResult(num_tests=1000, num_errors=92, num_failures=0, error_rate=0.092)
    assert format_result(ok) == "Inference error rate: 9.2%"
    some = ClientResult(1000, 99, 10, 0.099, ["UNAVAILABLE: down"])
    assert format_result(some).splitlines() == [
        "Failed requests: 10 of 1000", "  UNAVAILABLE: down", "Inference error rate: 10.0% of the 990 answered"]
    down = ClientResult(5, 0, 5, 0.0, ["UNAVAILABLE: connection refused"])
    assert format_result(down).splitlines() == [
        "Failed requests: 5 of 5", "  UNAVAILABLE: connection refused",
        "Inference error rate: unknown (no request was answered)"]


# --- CLI wiring -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyserving")
    add_mnist_commands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_defaults_and_tutorial_spellings() -> None:
    args = _parser().parse_args(["mnist", "export", "/tmp/models"])
    assert (args.training_iteration, args.model_version, args.seed, args.export_dir) == (1000, 1, 0, "/tmp/models")
    assert callable(args.func)
    args = _parser().parse_args(["mnist", "client", "--num_tests=7", "--server=h:1", "--concurrency", "3", "--rest"])
    assert (args.num_tests, args.server, args.concurrency, args.rest, args.model_name) == (7, "h:1", 3, True, "mnist")
    assert _parser().parse_args(["mnist", "client"]).server == "localhost:8500"


def test_cli_client_exit_code(rest_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert Path(MNIST_DIR).is_dir(), "no MNIST data"
    ok = _parser().parse_args(["mnist", "client", "--rest", f"--server={rest_server}",
                               "--num_tests=5", f"--data-dir={MNIST_DIR}"])
    assert ok.func(ok) == 0
    assert "Inference error rate:" in capsys.readouterr().out
    bad = _parser().parse_args(["mnist", "client", "--rest", f"--server={rest_server}",
                                "--num_tests=5", "--model_name=nope", f"--data-dir={MNIST_DIR}"])
    assert bad.func(bad) == 1


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert Path(MNIST_DIR).is_dir(), "no MNIST data"
    args = _parser().parse_args(["mnist", "export", "--training_iteration=20", "--model_version=3",
                                 f"--data-dir={MNIST_DIR}", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Training model..." and out[1].startswith("training accuracy ")
    assert out[2] == f"Exporting trained model to {tmp_path / '3'}" and out[3] == "Done exporting!"
    assert args.func(args) == 2  # the version now exists


def test_no_data_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch) -> None:
    from pyserving.mnist import data as mnist_data

    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setattr(mnist_data, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(mnist_data, "MIRROR_URL", f"http://127.0.0.1:{free_port()}/")  # nothing listens
    with pytest.raises(mnist_data.MnistFormatError) as failure:
        mnist_data.load_mnist(None)
    message = str(failure.value)
    assert str(tmp_path / "cache") in message and "--data-dir" in message and "$MNIST_DIR" in message
