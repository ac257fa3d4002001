"""SIGTERM / SIGINT while the server starts: failing loads, their retry waits, a load busy in TensorFlow."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf
from support import models
from support.server import ServerProcess, model_config, port_open, wait_for
from tensorflow_serving.apis import prediction_log_pb2

# Run alone after the parallel phase (tools/run-tests.sh): exits are timed to a 2 s bound.
pytestmark = pytest.mark.serial

EXIT_SECONDS = 2.0  # what a SIGTERM during start-up may take, as a Kubernetes pod's shutdown would want
LOG_TIMEOUT = 120.0  # the server's own start (TensorFlow's import) on a busy 2-core machine


def signal_and_time(server: ServerProcess, sig: int) -> tuple[int, float]:
    """Send ``sig``; the exit code and how long the process took to exit (a minute at most)."""
    start = time.monotonic()
    server.proc.send_signal(sig)
    try:
        code = server.proc.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    return code, time.monotonic() - start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_failing_initial_load_exits_at_once(tmp_path, sig):
    # Default retry settings: 5 retries, 60 s apart. Nothing but SIGKILL used to stop this.
    models.write_corrupt_version(str(tmp_path / "bad" / "1"))
    server = ServerProcess("--model_name=bad", f"--model_base_path={tmp_path / 'bad'}",
                           log_path=tmp_path / "server.log")
    try:
        wait_for(lambda: "retrying in" in server.log() or server.proc.poll() is not None,
                 LOG_TIMEOUT, "the first load retry to be announced")
        log = server.log()
        assert "Loading servable {name: bad version: 1} failed (attempt 1 of 6):" in log, log
        assert "retrying in 60.0 s" in log, log
        assert server.proc.poll() is None
        assert not port_open(server.rest_port)  # still starting: ports open after the initial loads
    finally:
        code, seconds = signal_and_time(server, sig)
    assert seconds < EXIT_SECONDS, server.log()
    assert code == 128 + sig  # non-zero: it never served
    log = server.log()
    assert f"{signal.Signals(sig).name} received while starting" in log, log


def write_warmup(version_dir, request_inputs: dict) -> None:
    record = prediction_log_pb2.PredictionLog()
    for key, value in request_inputs.items():
        record.predict_log.request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    target = os.path.join(version_dir, "assets.extra")
    os.makedirs(target, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(target, "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


def test_sigterm_with_a_good_model_a_retry_wait_and_a_load_busy_in_tensorflow(tmp_path):
    models.export_tf1_half_plus_two(str(tmp_path / "good" / "1"))
    models.write_corrupt_version(str(tmp_path / "bad" / "1"))
    # Its warmup request sleeps two minutes inside TensorFlow, in a load thread nothing can stop.
    models.export_sleeper(str(tmp_path / "slow" / "1"))
    write_warmup(tmp_path / "slow" / "1", {"micros": np.int64(120_000_000)})
    config = tmp_path / "models.config"
    config.write_text(model_config({name: str(tmp_path / name) for name in ("good", "bad", "slow")}))
    server = ServerProcess(f"--model_config_file={config}", "--load_retry_interval_micros=30000000",
                           log_path=tmp_path / "server.log")
    slow_path = str(tmp_path / "slow" / "1")
    try:
        wait_for(lambda: server.proc.poll() is not None or (
                 "Successfully loaded servable version {name: good version: 1}" in server.log()
                 and "{name: bad version: 1} failed (attempt 1 of 6)" in server.log()
                 and f"Loaded {slow_path} with" in server.log()),  # its warmup has begun
                 LOG_TIMEOUT, "the good model to load, the bad one to wait and the slow one to warm up")
        assert server.proc.poll() is None, server.log()
        assert "retrying in 30.0 s" in server.log()
        assert not port_open(server.rest_port)
    finally:
        code, seconds = signal_and_time(server, signal.SIGTERM)
    log = server.log()
    assert seconds < EXIT_SECONDS, log
    assert code == 128 + signal.SIGTERM, log
    assert "SIGTERM received while starting" in log
    assert "Exiting without waiting for a model load or model call still running in TensorFlow" in log
    assert "Finished reading warmup data" not in log.split("SIGTERM received")[0]
