"""Admission control: past --max_pending_requests, or with a full batch queue, requests are
refused at once (UNAVAILABLE / 503 + Retry-After) before they take a worker thread."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from support import models
from support.server import ServerProcess, serve_half_plus_two, system_tool, wait_for
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.serving.admission import OVERLOADED_MESSAGE

# Run alone after the parallel phase (tools/run-tests.sh): latency bounds and refusals under load.
pytestmark = pytest.mark.serial

SLEEP_MICROS = 1_500_000


def _sleep_request(micros: int = SLEEP_MICROS) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "sleeper"
    request.inputs["micros"].CopyFrom(tf.make_tensor_proto(np.int64(micros)))
    return request


def _call(stub, request) -> tuple[str, float, dict]:
    start = time.monotonic()
    try:
        stub.Predict(request, 30)
        return "OK", time.monotonic() - start, {}
    except grpc.RpcError as e:
        return e.code().name, time.monotonic() - start, dict(e.trailing_metadata() or ())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload")
    models.export_sleeper(str(root / "sleeper" / "1"))
    models.export_batch_sleeper(str(root / "batch_sleeper" / "1"))
    return root


def test_requests_past_the_bound_are_refused_at_once(tmp_path, base):
    server = ServerProcess("--model_name=sleeper", f"--model_base_path={base / 'sleeper'}",
                           "--grpc_max_threads=1", "--max_pending_requests=2",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        with server.channel() as channel, ThreadPoolExecutor(8) as pool:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            futures = [pool.submit(_call, stub, _sleep_request()) for _ in range(8)]
            # While two requests hold the server, REST is refused too, with Retry-After.
            wait_for(lambda: sum(f.done() for f in futures) >= 6, 10, "the excess to be refused")
            r = server.post("/v1/models/sleeper:predict", json={"inputs": {"micros": 1}})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert "--max_pending_requests=2" in r.json()["error"]
            results = [f.result() for f in futures]
        codes = sorted(code for code, _, _ in results)
        assert codes == ["OK"] * 2 + ["UNAVAILABLE"] * 6, codes
        for code, seconds, trailers in results:
            if code == "UNAVAILABLE":
                assert seconds < SLEEP_MICROS / 1e6 / 2, seconds  # not queued behind the sleepers
                assert trailers.get("retry-after") == "1"
        # Once the work is done the server takes requests again.
        with server.channel() as channel:
            assert _call(prediction_service_pb2_grpc.PredictionServiceStub(channel), _sleep_request(1))[0] == "OK"
    finally:
        assert server.stop() == 0


def test_a_request_that_would_miss_its_deadline_is_refused_at_once(tmp_path, base):
    monitoring = tmp_path / "monitoring.pbtxt"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    server = ServerProcess("--model_name=sleeper", f"--model_base_path={base / 'sleeper'}",
                           "--grpc_max_threads=1", f"--monitoring_config_file={monitoring}",
                           log_path=tmp_path / "server.log").wait_ready()
    in_flight = ':pyserving:requests_in_flight{model_name="sleeper"} 1'
    try:
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(3):  # the server learns what a request costs (it trusts no fewer answers)
                assert _call(stub, _sleep_request())[0] == "OK"
            running = stub.Predict.future(_sleep_request(), 30)
            wait_for(lambda: in_flight in server.get("/metrics").text, 10, "the first request to run")
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(_sleep_request(), 1.0)  # behind a 1.5 s request with a 1 s deadline
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "past its deadline" in info.value.details()
            assert time.monotonic() - start < 0.5  # refused now, not after the deadline
            # With time enough, the same request waits its turn and is served.
            assert _call(stub, _sleep_request(1))[0] == "OK"
            running.result()
    finally:
        assert server.stop() == 0


def test_full_batch_queue_refuses_before_taking_a_thread(tmp_path, base):
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 1 } batch_timeout_micros { value: 0 } "
                      "max_enqueued_batches { value: 1 } num_batch_threads { value: 1 }")
    server = ServerProcess("--model_name=sleeper", f"--model_base_path={base / 'batch_sleeper'}",
                           "--enable_batching", f"--batching_parameters_file={params}",
                           "--max_pending_requests=0", log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        with server.channel() as channel, ThreadPoolExecutor(6) as pool:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            # micros as a [1] tensor: batchable along dim 0.
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "sleeper"
            request.inputs["micros"].CopyFrom(tf.make_tensor_proto(np.array([SLEEP_MICROS], np.int64)))
            results = [f.result() for f in [pool.submit(_call, stub, request) for _ in range(6)]]
        refused = [(s, t) for code, s, t in results if code == "UNAVAILABLE"]
        assert refused and any(code == "OK" for code, _, _ in results), results
        assert all(s < SLEEP_MICROS / 1e6 / 2 for s, _ in refused), refused
    finally:
        assert server.stop() == 0


def _rest_client(server: ServerProcess, until: float, micros: int) -> list[tuple[int, float, float, str, bool]]:
    """One keep-alive connection sending back to back: (status, sent at, latency, Retry-After, refused
    by the REST gate) each."""
    answers = []
    with requests.Session() as session:
        while time.monotonic() < until:
            sent = time.monotonic()
            r = session.post(server.rest_url + "/v1/models/sleeper:predict", timeout=30, json={"inputs": {"micros": micros}})
            answers.append((r.status_code, sent, time.monotonic() - sent, r.headers.get("Retry-After", ""),
                            "Date" not in r.headers))  # the gate's prepared answer has none: refused at the connection
            if r.status_code == 503:
                assert r.json()["error"] == OVERLOADED_MESSAGE
    return answers


def test_a_standing_rest_queue_is_shed_at_the_connection(tmp_path, base):
    """48 connections back to back on a slow model that runs one at a time: without shedding each
    request would wait behind the 47 others. With it, the excess is refused (at the connection,
    mostly) and accepted requests wait about the target (16 requests' worth, for a slow model)."""
    server = ServerProcess("--model_name=sleeper", f"--model_base_path={base / 'sleeper'}",
                           "--grpc_max_threads=1", "--queue_delay_target_in_ms=5",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(48) as pool:
            futures = [pool.submit(_rest_client, server, start + 5, 10_000) for _ in range(48)]
            answers = [a for f in futures for a in f.result()]
        assert {status for status, *_ in answers} == {200, 503}, Counter(s for s, *_ in answers)
        assert all(retry == "1" for status, _, _, retry, _ in answers if status == 503)
        assert any(gate for status, *_, gate in answers if status == 503)  # cheap refusals did happen
        # The backlog taken in before the queue counted as standing (about a second) drains first.
        settled = sorted(latency for status, sent, latency, *_ in answers if status == 200 and sent > start + 3.5)
        unshed = 48 * min(latency for status, _, latency, *_ in answers if status == 200)
        assert len(settled) > 10 and settled[len(settled) // 2] < unshed / 2, (unshed, settled)
        # The flood over, nothing is refused.
        assert server.post("/v1/models/sleeper:predict", json={"inputs": {"micros": 1}}).status_code == 200
    finally:
        assert server.stop() == 0


def _grpc_frame(request: predict_pb2.PredictRequest) -> bytes:
    message = request.SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _hpt_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0, 5.0], np.float32)))
    return request


def _flood_and_probe(server: ServerProcess, tmp_path, seconds: float) -> tuple[list, list]:
    """h2load keeps 320 Predicts in flight against half_plus_two (served on the event loop, so
    they queue in grpc's core) while the official stubs probe: (answers to Predicts without a
    deadline, codes of Predicts with one and of GetModelStatus)."""
    body = tmp_path / "predict.bin"
    body.write_bytes(_grpc_frame(_hpt_request()))
    flood = subprocess.Popen(
        [system_tool("h2load"), "-c", "8", "-m", "40", "-D", str(seconds), "-d", str(body),
         "-H", "content-type:application/grpc", "-H", "te:trailers",
         f"http://{server.grpc_target}/tensorflow.serving.PredictionService/Predict"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers, statuses = [], []
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "hpt"
    try:
        with server.channel() as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
            while flood.poll() is None:
                try:
                    response = predict(_hpt_request())  # no deadline, as h2load's calls
                    answers.append(("OK", list(tf.make_ndarray(response.outputs["y"])), {}))
                except grpc.RpcError as e:
                    answers.append((e.code().name, e.details(), dict(e.trailing_metadata() or ())))
                for call, request in ((predict, _hpt_request()), (status, status_request)):
                    try:
                        call(request, 30)
                        statuses.append("OK")
                    except grpc.RpcError as e:
                        statuses.append(e.code().name)
    finally:
        flood.wait(30)
    return answers, statuses


def test_a_grpc_flood_is_shed_with_unavailable(tmp_path):
    """A flood that queues in grpc's core (where no handler sees it) is shed by the wait measured
    there (protocols/grpc/gate.py): a share of Predicts without a deadline refused UNAVAILABLE with
    Retry-After, the rest answered right; calls with a deadline wait their turn (TF Serving's
    clients send bursts of futures with one) and the model service is never refused; once the
    flood ends, nothing is."""
    server = serve_half_plus_two(tmp_path)
    try:
        answers, statuses = _flood_and_probe(server, tmp_path, 5)
        counts = Counter(code for code, *_ in answers)
        assert set(counts) == {"OK", "UNAVAILABLE"}, counts
        for code, detail, trailers in answers:
            if code == "OK":
                assert detail == [2.5, 3.0, 4.5]
            else:
                assert detail == OVERLOADED_MESSAGE and trailers.get("retry-after") == "1"
        assert statuses and set(statuses) == {"OK"}, Counter(statuses)
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            wait_for(lambda: _call(stub, _hpt_request())[0] == "OK", 10, "the flood's share to decay")
            assert [_call(stub, _hpt_request())[0] for _ in range(20)] == ["OK"] * 20
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()


def test_a_grpc_flood_is_queued_without_a_delay_target(tmp_path):
    """--queue_delay_target_in_ms=0: TF Serving's behaviour, every call waits its turn."""
    server = serve_half_plus_two(tmp_path, "--queue_delay_target_in_ms=0")
    try:
        answers, _ = _flood_and_probe(server, tmp_path, 3)
        assert answers and {code for code, *_ in answers} == {"OK"}, Counter(code for code, *_ in answers)
    finally:
        assert server.stop() == 0


def _h2load(server: ServerProcess, tmp_path, *shape: str) -> str:
    """h2load's Predicts of half_plus_two on 8 connections shaped by ``shape``; its report."""
    body = tmp_path / "predict.bin"
    body.write_bytes(_grpc_frame(_hpt_request()))
    return subprocess.run(
        [system_tool("h2load"), *shape, "-d", str(body), "-H", "content-type:application/grpc",
         "-H", "te:trailers", f"http://{server.grpc_target}/tensorflow.serving.PredictionService/Predict"],
        capture_output=True, text=True, timeout=120, check=True).stdout


def test_a_flood_past_the_cores_limit_leaves_no_refusals_behind(tmp_path):
    """8,000 calls in flight, past the 3,000 grpc's core holds for a handler: the core cancels
    the excess at once and channelz never counts those calls finished. The gate took them for a
    queue that never drained, and kept refusing calls after the flood had passed."""
    server = serve_half_plus_two(tmp_path)
    try:
        _h2load(server, tmp_path, "-c", "8", "-m", "1000", "-D", "3")
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            wait_for(lambda: _call(stub, _hpt_request())[0] == "OK", 10, "the flood's share to decay")
            assert [_call(stub, _hpt_request())[0] for _ in range(50)] == ["OK"] * 50
    finally:
        assert server.stop() == 0


def test_calls_with_deadlines_under_a_flood_never_wait_them_out(tmp_path):
    """Calls arriving at twice capacity, each with a 5 s deadline (the security review's case):
    none waits out its deadline to fail DEADLINE_EXCEEDED having held queue space for nothing.
    The excess is refused as it comes: UNAVAILABLE with Retry-After when taken, or CANCELLED at
    once by grpc's core when it holds all it will; answers keep coming."""
    server = serve_half_plus_two(tmp_path)
    try:
        report = _h2load(server, tmp_path, "-c", "16", "-D", "2")
        capacity = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", report).group(1))
        log = tmp_path / "flood.log"
        flood = threading.Thread(target=_h2load, args=(
            server, tmp_path, "-c", "8", "-m", "1000", f"--rps={max(1, round(2 * capacity / 8))}",
            "-D", "6", "-H", "grpc-timeout:5S", f"--log-file={log}"))
        flood.start()
        probes = []
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while flood.is_alive():
                start = time.monotonic()
                try:
                    stub.Predict(_hpt_request(), 5)
                    probes.append(("OK", "", {}, time.monotonic() - start))
                except grpc.RpcError as e:
                    probes.append((e.code().name, e.details(), dict(e.trailing_metadata() or ()),
                                   time.monotonic() - start))
        flood.join()
        durations = [int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines() if line.strip()]
        assert len(durations) > 6 * capacity, (len(durations), capacity)
        assert max(durations) < 4.5, sorted(durations)[-10:]
        codes = Counter(code for code, *_ in probes)
        assert codes["OK"] and set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
        for code, detail, trailers, seconds in probes:
            assert seconds < 4.5, (code, seconds)
            if code == "UNAVAILABLE":
                assert detail == OVERLOADED_MESSAGE and trailers.get("retry-after") == "1"
            elif code == "CANCELLED":
                assert seconds < 0.5, seconds
    finally:
        assert server.stop() == 0
