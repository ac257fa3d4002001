"""Cheap model calls run on the event loop; slow ones stay in worker threads and never block it."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from support import models
from support.server import ServerProcess, model_config
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.serving.inline import (
    BAN_SECONDS,
    BAN_STRIKES,
    INLINE_MAX_SECONDS,
    PREEMPTED_MAX_SECONDS,
    InlinePolicy,
    preemptions,
)

# Run alone after the parallel phase (tools/run-tests.sh): event-loop latency while a slow model runs.
pytestmark = pytest.mark.serial

HALF_PLUS_TWO = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"


def test_policy_learns_from_measured_calls():
    policy = InlinePolicy()
    assert not policy.inline("m", small=True)  # unmeasured: a thread first
    policy.record("m", INLINE_MAX_SECONDS * 10, inline=False)  # a first call that built its callable
    assert not policy.inline("m", small=True)
    for _ in range(20):
        policy.record("m", INLINE_MAX_SECONDS / 10, inline=False)
    assert policy.inline("m", small=True)
    assert not policy.inline("m", small=False)  # big requests decode and encode in a thread
    policy.record("m", BAN_SECONDS / 2, inline=True)  # slowish on the loop: threads for a while
    assert not policy.inline("m", small=True)
    for _ in range(20):
        policy.record("m", INLINE_MAX_SECONDS / 10, inline=False)
    assert policy.inline("m", small=True)
    for strike in range(BAN_STRIKES):  # it blocked the loop: threads for a while, then for good
        policy.record("m", BAN_SECONDS * 2, inline=True)
        assert not policy.inline("m", small=True)
        for _ in range(100):
            policy.record("m", INLINE_MAX_SECONDS / 10, inline=False)
        assert policy.inline("m", small=True) == (strike < BAN_STRIKES - 1), strike
    # One stall now and then (the process descheduled, a collection) is forgiven.
    occasional = InlinePolicy()
    occasional.record("m", INLINE_MAX_SECONDS / 10, inline=False)
    for _ in range(10):
        occasional.record("m", BAN_SECONDS * 2, inline=True)
        for _ in range(500):
            occasional.record("m", INLINE_MAX_SECONDS / 10, inline=True)
    assert occasional.inline("m", small=True)
    assert not InlinePolicy(max_seconds=0).inline("m", small=True)


def test_a_preempted_call_is_the_machines_time_not_the_models():
    policy = InlinePolicy()
    for _ in range(20):
        policy.record("m", INLINE_MAX_SECONDS / 10, inline=False)
    for _ in range(BAN_STRIKES * 10):  # a busy node: the kernel takes the loop's CPU mid-call
        policy.record("m", BAN_SECONDS * 4, inline=True, preempted=True)
    assert policy.inline("m", small=True)
    for _ in range(BAN_STRIKES):  # preempted or not, this long blocks the loop
        policy.record("m", PREEMPTED_MAX_SECONDS * 2, inline=True, preempted=True)
        for _ in range(100):
            policy.record("m", INLINE_MAX_SECONDS / 10, inline=False)
    assert not policy.inline("m", small=True)


PREEMPTION_SCRIPT = """
import os, sys, time
from pyserving.serving.inline import preemptions
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU, which a spinning child shares
child = os.fork()
if child == 0:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        pass
    os._exit(0)
before, deadline = preemptions(), time.monotonic() + 0.5
while time.monotonic() < deadline:
    pass
after = preemptions()
os.kill(child, 9)
print(before, after)
"""


def test_preemptions_counts_the_kernel_taking_the_threads_cpu():
    out = subprocess.run([sys.executable, "-c", PREEMPTION_SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert after - before >= 5, (before, after)  # CFS shares one CPU in slices of a few ms
    assert preemptions() >= 0


def test_slow_model_never_blocks_the_loop(tmp_path):
    models.export_sleeper(str(tmp_path / "sleeper" / "1"))
    config = tmp_path / "models.config"
    config.write_text(model_config({"sleeper": str(tmp_path / "sleeper"), "fast": str(HALF_PLUS_TWO)}))
    server = ServerProcess(f"--model_config_file={config}", log_path=tmp_path / "server.log").wait_ready()
    try:
        fast = predict_pb2.PredictRequest()
        fast.model_spec.name = "fast"
        fast.inputs["x"].CopyFrom(tf.make_tensor_proto(np.float32([1.0])))
        slow = predict_pb2.PredictRequest()
        slow.model_spec.name = "sleeper"
        with server.channel() as channel, ThreadPoolExecutor(4) as pool:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            slow.inputs["micros"].CopyFrom(tf.make_tensor_proto(np.int64(200_000)))
            for _ in range(50):  # the fast model runs inline now
                stub.Predict(fast, 10)
            for _ in range(3):  # a sleeping model costs no CPU: it may block the loop once, then never
                stub.Predict(slow, 10)
            slow.inputs["micros"].CopyFrom(tf.make_tensor_proto(np.int64(1_000_000)))
            sleeping = [pool.submit(stub.Predict, slow, 30) for _ in range(3)]
            # Until the sleepers are done (seconds of model calls), the fast model keeps answering.
            latencies, answers = [], []
            while not all(f.done() for f in sleeping):
                started = time.monotonic()
                answers.append(stub.Predict(fast, 10).outputs["y"].float_val[0])
                latencies.append(time.monotonic() - started)
            assert [f.result().outputs["slept"].int64_val[0] for f in sleeping] == [1_000_000] * 3
        assert len(answers) > 20 and set(answers) == {2.5}
        assert max(latencies) < 0.25, max(latencies)
    finally:
        assert server.stop() == 0
