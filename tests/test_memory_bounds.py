"""What one client can make the server keep: a decompression bomb stops at the body limit, made-up
model names never become metric series, a gRPC message past the limit is refused. RSS measured."""

from __future__ import annotations

import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import requests
import tensorflow as tf
from support.server import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

HALF_PLUS_TWO = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
LIMIT = 16 << 20  # --rest_api_max_request_bytes and --grpc_max_message_bytes here
MIB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    monitoring = root / "monitoring.pbtxt"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    server = ServerProcess("--model_name=half_plus_two", f"--model_base_path={HALF_PLUS_TWO}",
                           f"--rest_api_max_request_bytes={LIMIT}", f"--grpc_max_message_bytes={LIMIT}",
                           f"--monitoring_config_file={monitoring}", log_path=root / "server.log").wait_ready()
    for _ in range(20):  # warm up: first requests build callables and pools
        assert _good(server)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def _good(server: ServerProcess) -> bool:
    r = server.post("/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0, 5.0]})
    return r.json() == {"predictions": [2.5, 3.0, 4.5]}


def _rss(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _bomb(inflated: int, encoding: str) -> bytes:
    """Zeros that inflate to ``inflated`` bytes, compressed chunk by chunk (the client stays small)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    chunk = bytes(MIB)
    return b"".join([packer.compress(chunk) for _ in range(inflated // MIB)] + [packer.flush()])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_decompression_bomb_stops_at_the_limit(server, encoding):
    bomb = _bomb(512 * MIB, encoding)
    assert len(bomb) < LIMIT // 16  # small on the wire: only inflating makes it big
    before = _rss(server)
    for _ in range(4):
        r = server.post("/v1/models/half_plus_two:predict", data=bomb,
                        headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert "--rest_api_max_request_bytes" in r.json()["error"]
    grown = _rss(server) - before
    assert grown < 2 * LIMIT, f"RSS grew {grown / MIB:.0f} MiB"
    assert _good(server)


def test_made_up_model_names_cost_nothing(server):
    before = _rss(server)
    with server.channel() as channel, requests.Session() as http, ThreadPoolExecutor(8) as pool:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        x = tf.make_tensor_proto(np.float32([1.0]))  # once: the client's time is not what is measured

        def grpc_call(i: int) -> grpc.StatusCode:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = f"no-such-model-{i}-{'x' * 50}"
            request.inputs["x"].CopyFrom(x)
            try:
                stub.Predict(request, 10)
            except grpc.RpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        codes = set(pool.map(grpc_call, range(8000)))
        assert codes == {grpc.StatusCode.NOT_FOUND}
        for i in range(2000):
            r = http.post(f"{server.rest_url}/v1/models/rest-made-up-{i}:predict", json={"instances": [1.0]})
            assert r.status_code == 404
    grown = _rss(server) - before
    assert grown < 16 * MIB, f"RSS grew {grown / MIB:.1f} MiB over 10,000 made-up names"
    metrics = server.get("/metrics").text
    assert 'model_name="(unknown)"' in metrics
    assert "no-such-model" not in metrics and "rest-made-up" not in metrics
    assert 'model_name="half_plus_two"' in metrics
    assert _good(server)


def test_grpc_message_over_the_limit_is_refused(server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros(LIMIT // 4 + 16, np.float32)))
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_receive_message_length", -1),
                                                            ("grpc.max_send_message_length", -1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, 30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Just under the limit is served.
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(LIMIT // 8, np.float32)))
        response = stub.Predict(request, 30)
        assert response.outputs["y"].float_val[0] == 2.5


def test_a_compressed_grpc_message_stops_inflating_at_the_limit(server):
    """128 MB of zeros (8x the limit), gzip-compressed to ~0.1 MB on the wire: gRPC's core stops
    inflating at --grpc_max_message_bytes, so the refusal costs the limit's worth, not the message's
    (inflated whole, each would grow RSS by twice the bound below)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros(32 * MIB, np.float32)))
    data = request.SerializeToString()
    del request
    before = _rss(server)
    with grpc.insecure_channel(server.grpc_target, compression=grpc.Compression.Gzip,
                               options=[("grpc.max_send_message_length", -1)]) as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                predict(data, timeout=60)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "Decompressed message larger than max" in info.value.details()
    grown = _rss(server) - before
    assert grown < 4 * LIMIT, f"RSS grew {grown / MIB:.0f} MiB"
    assert _good(server)


def _live_within(server: ServerProcess, seconds: float) -> bool:
    return requests.get(server.rest_url + "/v2/health/live", timeout=seconds).status_code == 200


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_v2_bytes_input_declaring_a_huge_shape_with_no_data_allocates_nothing(server, protocol):
    """The security review's case: a raw BYTES input of shape [300000000] (and 2^31 - 1) with no
    bytes made the decoder allocate an object array of the declared size first (+2.3 GiB RSS, 3.8 s,
    the health probe stalled). Now the count is checked against the bytes before anything allocates."""
    import tritonclient.grpc as triton_grpc

    before = _rss(server)
    for count in (300_000_000, 2**31 - 1):
        started = time.monotonic()
        if protocol == "rest":
            header = orjson.dumps({"parameters": {"signature_name": "classify_x_to_y"}, "inputs": [
                {"name": "inputs", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": 0}}]})
            r = server.post("/v2/models/half_plus_two/infer", data=header,
                            headers={"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"})
            assert r.status_code == 400, r.text
            assert "can't hold" in r.json()["error"]
        else:
            request = triton_grpc.service_pb2.ModelInferRequest(model_name="half_plus_two")
            request.parameters["signature_name"].string_param = "classify_x_to_y"
            request.inputs.add(name="inputs", datatype="BYTES", shape=[count])
            request.raw_input_contents.append(b"")
            with server.channel() as channel:
                stub = triton_grpc.service_pb2_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "can't hold" in info.value.details()
        assert time.monotonic() - started < 1.0
        assert _live_within(server, 1.0)
    grown = _rss(server) - before
    assert grown < 32 * MIB, f"RSS grew {grown / MIB:.0f} MiB"
    assert _good(server)
