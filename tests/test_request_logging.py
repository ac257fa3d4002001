"""Request logging (a model's logging_config) and `pyserving warmup-from-log`.

The server tests run the real server on TF Serving's half_plus_two (a copy in tmp_path where a new
version is added, the original in place otherwise), send traffic with the official stubs and
`requests`, and read the TFRecord files back as tensorflow.serving.PredictionLog.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from support.server import BIN_DIR, HALF_PLUS_TWO, ServerProcess, model_config, wait_for
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pyserving import cli
from pyserving.codecs import tfrecord
from pyserving.config.model_config import ConfigError, LoggingSettings, ModelConfig, parse_model_server_config
from pyserving.observability import warmup_from_log
from pyserving.observability.request_log import RequestLogger, predict_log
from pyserving.runtime import warmup
from pyserving.serving.dataplane import ModelSpec

PredictionLog = prediction_log_pb2.PredictionLog
HPT_VERSION = HALF_PLUS_TWO / "00000123"
NAME = re.compile(r"\.\d{8}T\d{6}Z\.\d+\.\d{5}\.tfrecord$")


def read_logs(pattern: str) -> list[PredictionLog]:
    records = []
    for path in sorted(glob.glob(pattern)):
        records += [PredictionLog.FromString(data) for data in tfrecord.read_file(path)]
    return records


def has_records(pattern: str, count: int) -> bool:
    try:
        return len(read_logs(pattern)) >= count
    except tfrecord.TFRecordError:  # the writer is in the middle of a record
        return False


def simple_record(model: str = "m", value: float = 1.0) -> PredictionLog:
    record = PredictionLog()
    record.log_metadata.model_spec.name = model
    record.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[value]], np.float32)))
    record.predict_log.response.outputs["y"].CopyFrom(tf.make_tensor_proto(np.array([[value]], np.float32)))
    return record


# ---- TFRecord framing ---------------------------------------------------------------------

def test_tfrecord_framing_is_tensorflows_byte_for_byte_and_checked_on_read(tmp_path):
    rng = np.random.default_rng(0)
    payloads = [b"", b"x", rng.bytes(1000), rng.bytes(70_000), simple_record().SerializeToString()]
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "theirs.tfrecord"
    ours.write_bytes(b"".join(tfrecord.frame(p) for p in payloads))
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for p in payloads:
            writer.write(p)
    assert ours.read_bytes() == theirs.read_bytes()
    assert list(tf.data.TFRecordDataset(str(ours)).as_numpy_iterator()) == payloads
    assert list(tfrecord.read_file(str(ours))) == payloads
    assert ours.stat().st_size == sum(tfrecord.framed_size(len(p)) for p in payloads)

    data = bytearray(ours.read_bytes())
    data[tfrecord.framed_size(0) + tfrecord.HEADER_BYTES] ^= 0xFF  # record 1's data, "x"
    with pytest.raises(tfrecord.TFRecordError, match="record 1 is corrupt"):
        list(tfrecord.read_records(io.BytesIO(bytes(data))))
    cut = ours.read_bytes()[:-5]
    with pytest.raises(tfrecord.TFRecordError, match="record 4 is truncated"):
        list(tfrecord.read_records(io.BytesIO(cut)))


# ---- config ---------------------------------------------------------------------------------

LOGGED = """model_config_list { config { name: "m" base_path: "/models/m"
  logging_config { sampling_config { sampling_rate: 0.1 } log_collector_config { filename_prefix: "/tmp/logs/m" } } } }"""


def test_logging_config_is_read_from_the_model_config():
    (model,) = parse_model_server_config(LOGGED)
    assert model.logging == LoggingSettings(0.1, "/tmp/logs/m")
    (plain,) = parse_model_server_config('model_config_list { config { name: "m" base_path: "/m" } }')
    assert plain.logging is None
    for bad, reason in [(LOGGED.replace("0.1", "1.5"), "between 0 and 1"),
                        (LOGGED.replace('filename_prefix: "/tmp/logs/m"', ""), "filename_prefix"),
                        (LOGGED.replace("/tmp/logs/m", "gs://bucket/m"), "local path")]:
        with pytest.raises(ConfigError, match=reason):
            parse_model_server_config(bad)


# ---- the logger, in process -----------------------------------------------------------------

def logger_for(tmp_path, rate: float = 1.0, **kw) -> tuple[RequestLogger, list]:
    events: list = []
    logger = RequestLogger(on_record=lambda model, status: events.append(status), **kw)
    logger.configure([ModelConfig("m", "/m", logging=LoggingSettings(rate, str(tmp_path / "logs" / "m")))])
    return logger, events


def test_a_link_planted_in_the_log_folder_makes_no_folder_elsewhere(tmp_path):
    """The prefix was confined to logs/a/b/m; then logs/a became a link out. Nothing is written,
    and no folder is created through the link (checked before the missing folders are made)."""
    from pyserving.config.model_config import confine_request_logs

    logs, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
    logs.mkdir()
    elsewhere.mkdir()
    (model,) = confine_request_logs([ModelConfig("m", "/m", logging=LoggingSettings(1.0, "a/b/m"))], str(logs))
    (logs / "a").symlink_to(elsewhere, target_is_directory=True)
    events: list = []
    logger = RequestLogger(on_record=lambda name, status: events.append(status))
    logger.configure([model])
    logger.maybe_log("m", simple_record)
    logger.close()
    assert events == ["dropped"] and logger.written == 0
    assert list(elsewhere.iterdir()) == []


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path, caplog):
    logger, events = logger_for(tmp_path, queue_size=2)
    taken, gate = threading.Event(), threading.Event()

    def blocked_build(value):
        taken.set()
        gate.wait(30)  # a disk that does not keep up
        return simple_record(value=value)

    logger.maybe_log("m", blocked_build, 0.0)
    assert taken.wait(10)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="pyserving.request_log"):
        for i in range(1, 101):
            logger.maybe_log("m", simple_record, "m", float(i))
    assert time.perf_counter() - start < 1.0  # never waited for the writer
    assert logger.dropped == 98 and events.count("dropped") == 98  # 2 fitted in the queue
    assert len([r for r in caplog.records if "dropping sampled requests" in r.message]) == 1
    gate.set()
    logger.close()
    values = [r.predict_log.request.inputs["x"].float_val[0] for r in read_logs(str(tmp_path / "logs" / "m.*"))]
    assert values == [0.0, 1.0, 2.0] and events.count("logged") == 3


def test_queued_tensor_bytes_are_bounded_too(tmp_path):
    logger, events = logger_for(tmp_path, queue_bytes=1000)
    taken, gate = threading.Event(), threading.Event()

    def blocked_build():
        taken.set()
        gate.wait(30)
        return simple_record(value=-1.0)

    logger.maybe_log("m", blocked_build)
    assert taken.wait(10)
    spec = ModelSpec("m")
    image = {"x": np.zeros((1, 200), np.float32)}  # 800 bytes
    for value in (1.0, 2.0):
        logger.maybe_log("m", predict_log, spec, 1, "serving_default", image, (), {"y": np.array([value], np.float32)})
    logger.maybe_log("m", simple_record, "m", 3.0)  # holds no tensors: fits
    assert logger.dropped == 1 and events == ["dropped"]
    gate.set()
    logger.close()
    records = read_logs(str(tmp_path / "logs" / "m.*"))
    assert [tf.make_ndarray(r.predict_log.response.outputs["y"]).ravel().tolist() for r in records] == [[-1.0], [1.0], [3.0]]
    assert tf.make_ndarray(records[1].predict_log.request.inputs["x"]).shape == (1, 200)  # 2.0 was dropped


def test_an_unwritable_prefix_drops_records_and_says_so_once(tmp_path, caplog):
    (tmp_path / "logs").write_text("a file where the log folder should be")
    logger, events = logger_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pyserving.request_log"):
        for i in range(5):
            logger.maybe_log("m", simple_record, "m", float(i))
        logger.close()
    assert logger.dropped == 5 and events == ["dropped"] * 5 and logger.written == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0].getMessage()


def test_close_writes_everything_queued(tmp_path):
    logger, events = logger_for(tmp_path)

    def slow_build(value):
        time.sleep(0.002)
        return simple_record(value=value)

    for i in range(100):
        logger.maybe_log("m", slow_build, float(i))
    logger.close()
    assert len(read_logs(str(tmp_path / "logs" / "m.*"))) == 100 == logger.written
    logger.maybe_log("m", simple_record, "m", 1.0)  # after close: ignored, nothing raised
    assert logger.written == 100 and events == ["logged"] * 100


def test_sampling_rate_is_the_share_of_requests_logged(tmp_path):
    logger, events = logger_for(tmp_path, rate=0.25, queue_size=5000)
    for i in range(4000):
        logger.maybe_log("m", simple_record, "m", float(i))
    logger.maybe_log("other", simple_record, "other", 1.0)  # no logging_config: never logged
    logger.close()
    records = read_logs(str(tmp_path / "logs" / "m.*"))
    assert 850 <= len(records) <= 1150 and events.count("logged") == len(records)  # binomial sd ~27
    assert {r.log_metadata.model_spec.name for r in records} == {"m"}
    assert {r.log_metadata.sampling_config.sampling_rate for r in records} == {0.25}


def test_files_rotate_before_passing_the_size_limit(tmp_path):
    logger, _ = logger_for(tmp_path, max_file_bytes=500)
    for i in range(20):
        logger.maybe_log("m", simple_record, "m", float(i))
    big = simple_record(value=-1.0)
    big.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 300), np.float32)))
    logger.maybe_log("m", lambda: big)
    logger.close()
    paths = sorted(glob.glob(str(tmp_path / "logs" / "m.*")))
    assert len(paths) >= 5 and all(NAME.search(p) for p in paths), paths
    assert [n for p in paths if (n := os.path.getsize(p)) > 500] == [os.path.getsize(paths[-1])]  # the big one, alone
    assert len(list(tfrecord.read_file(paths[-1]))) == 1
    records = read_logs(str(tmp_path / "logs" / "m.*"))
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in records[:20]] == [float(i) for i in range(20)]
    assert records[20].predict_log.request.inputs["x"].tensor_shape.dim[1].size == 300


# ---- the warmup-from-log command, in process --------------------------------------------------

def test_warmup_from_log_keeps_requests_up_to_the_warmup_cap(tmp_path, capsys):
    assert warmup_from_log.MAX_RECORDS == warmup.MAX_RECORDS
    log_file, torn = tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"
    session_run = PredictionLog()
    session_run.session_run_log.request.feed.add()
    log_file.write_bytes(b"".join(tfrecord.frame(r.SerializeToString())
                                  for r in [session_run] + [simple_record("m", i) for i in range(1005)]))
    torn.write_bytes(tfrecord.frame(simple_record("n", 7.0).SerializeToString()) + b"\x01\x02")
    version = tmp_path / "2"
    version.mkdir()
    assert cli.main(["warmup-from-log", "--log", str(log_file), "--output", str(version)]) == 0
    written = warmup.read_warmup_records(str(version / warmup.WARMUP_FILE))  # the server's own reader
    printed = capsys.readouterr().out
    assert len(written) == 1000 and "Wrote 1000 warmup records" in printed and "skipped 1 record(s)" in printed
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in written[:3]] == [0.0, 1.0, 2.0]
    assert not any(r.predict_log.HasField("response") for r in written)

    out = tmp_path / "only_n"
    assert cli.main(["warmup-from-log", "--log", str(log_file), str(torn), "--model", "n", "--output", str(out)]) == 0
    assert [r.log_metadata.model_spec.name for r in warmup.read_warmup_records(str(out))] == ["n"]
    assert "record 1 is truncated" in capsys.readouterr().err
    assert cli.main(["warmup-from-log", "--log", str(log_file), "--model", "zz", "--output", str(out)]) == 1
    with pytest.raises(SystemExit):
        cli.main(["warmup-from-log", "--log", str(log_file), "--output", str(out), "--max", "1001"])


# ---- the real server ------------------------------------------------------------------------

def logging_config(prefix: Path, rate: float) -> str:
    return (f"logging_config {{ sampling_config {{ sampling_rate: {rate} }} "
            f'log_collector_config {{ filename_prefix: "{prefix}" }} }}')


def examples_input(target, *values: float) -> None:
    for v in values:
        target.example_list.examples.add().features.feature["x"].float_list.value.append(v)


class Traffic:
    """What was sent to "hpt", and what the gRPC calls answered."""

    grpc_x = [float(i) for i in range(6)]
    rest_x = [100.0 + i for i in range(4)]
    total = len(grpc_x) + len(rest_x) + 5  # + Classify, Regress, MultiInference, REST classify, regress

    def __init__(self, server: ServerProcess) -> None:
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for x in self.grpc_x:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "hpt"
                request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[x]], np.float32)))
                stub.Predict(request, 10)
            request.model_spec.name = "quiet"  # sampling_rate 0
            stub.Predict(request, 10)
            classify = classification_pb2.ClassificationRequest()
            classify.model_spec.name, classify.model_spec.signature_name = "hpt", "classify_x_to_y"
            examples_input(classify.input, 1.0, 3.0)
            self.classify = stub.Classify(classify, 10)
            regress = regression_pb2.RegressionRequest()
            regress.model_spec.name, regress.model_spec.signature_name = "hpt", "regress_x_to_y"
            examples_input(regress.input, 4.0)
            self.regress = stub.Regress(regress, 10)
            multi = inference_pb2.MultiInferenceRequest()
            for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                                      ("regress_x_to_y", "tensorflow/serving/regress")):
                task = multi.tasks.add()
                task.model_spec.name, task.model_spec.signature_name, task.method_name = "hpt", signature, method
            examples_input(multi.input, 6.0)
            self.multi = stub.MultiInference(multi, 10)
        for x in self.rest_x:
            assert server.post("/v1/models/hpt:predict", json={"instances": [[x]]}).json() == {"predictions": [[x / 2 + 2]]}
        assert server.post("/v1/models/quiet:predict", json={"instances": [[1.0]]}).status_code == 200
        for verb, signature in (("classify", "classify_x_to_y"), ("regress", "regress_x_to_y")):
            body = {"signature_name": signature, "examples": [{"x": 8.0}]}
            assert server.post(f"/v1/models/hpt:{verb}", json=body).status_code == 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("request_logging")
    base, logs = root / "hpt", root / "logs"
    shutil.copytree(HPT_VERSION, base / "1")  # a copy: a version 2 is added to it below
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    config = root / "models.config"
    config.write_text(model_config({"hpt": str(base), "quiet": str(HALF_PLUS_TWO)},
                                   {"hpt": logging_config(logs / "hpt", 1.0),
                                    "quiet": logging_config(logs / "quiet", 0.0)}))
    server = ServerProcess(f"--model_config_file={config}", "--request_log_max_file_bytes=1024",
                           f"--request_log_dir={logs}",
                           f"--monitoring_config_file={root / 'monitoring.config'}",
                           log_path=root / "server.log").wait_ready()
    try:
        traffic = Traffic(server)
        wait_for(lambda: has_records(str(logs / "hpt.*"), Traffic.total), 30, "the request log records")
        yield server, root, traffic
    finally:
        server.stop()


def hpt_records(root: Path) -> list[PredictionLog]:
    return read_logs(str(root / "logs" / "hpt.*"))


def test_predicts_over_both_protocols_round_trip(served):
    server, root, _ = served
    records = hpt_records(root)
    assert len(records) == Traffic.total
    predicts = [r for r in records if r.WhichOneof("log_type") == "predict_log"]
    sent = [tf.make_ndarray(r.predict_log.request.inputs["x"]) for r in predicts]
    assert [a.item() for a in sent] == Traffic.grpc_x + Traffic.rest_x  # in the order they were answered
    for record in predicts:
        x = tf.make_ndarray(record.predict_log.request.inputs["x"])
        np.testing.assert_array_equal(tf.make_ndarray(record.predict_log.response.outputs["y"]), x / 2 + 2)
        assert x.shape == (1, 1) and x.dtype == np.float32
        assert record.predict_log.request.model_spec.name == "hpt"
        served_spec = record.log_metadata.model_spec
        assert (served_spec.name, served_spec.version.value, served_spec.signature_name) == ("hpt", 1, "serving_default")
        assert record.predict_log.response.model_spec == served_spec
        assert list(record.log_metadata.saved_model_tags) == ["serve"]
        assert record.log_metadata.sampling_config.sampling_rate == 1.0
        assert abs(record.log_metadata.timestamp_secs - time.time()) < 600


def test_classify_regress_and_multi_inference_log_the_answers_sent(served):
    _, root, traffic = served
    by_kind: dict[str, list] = {}
    for record in hpt_records(root):
        by_kind.setdefault(record.WhichOneof("log_type"), []).append(record)
    grpc_classify, rest_classify = by_kind["classify_log"]
    assert grpc_classify.classify_log.response == traffic.classify
    assert [e.features.feature["x"].float_list.value[0] for e in grpc_classify.classify_log.request.input.example_list.examples] == [1.0, 3.0]
    assert grpc_classify.log_metadata.model_spec.signature_name == "classify_x_to_y"
    assert rest_classify.classify_log.response.result.classifications[0].classes[0].score == 6.0
    grpc_regress, rest_regress = by_kind["regress_log"]
    assert grpc_regress.regress_log.response == traffic.regress
    assert rest_regress.regress_log.response.result.regressions[0].value == 6.0
    (multi,) = by_kind["multi_inference_log"]
    assert multi.multi_inference_log.response == traffic.multi
    assert [t.model_spec.signature_name for t in multi.multi_inference_log.request.tasks] == ["classify_x_to_y", "regress_x_to_y"]


def test_sampling_rate_zero_writes_nothing_and_files_rotate(served):
    server, root, _ = served
    assert glob.glob(str(root / "logs" / "quiet*")) == []  # answered, never logged
    paths = sorted(glob.glob(str(root / "logs" / "hpt.*")))
    assert len(paths) >= 3 and all(NAME.search(p) and os.path.getsize(p) <= 1024 for p in paths), paths
    metrics = server.get("/monitoring/prometheus/metrics").text
    assert f':pyserving:request_log_count{{model_name="hpt",status="logged"}} {Traffic.total}' in metrics
    assert ':pyserving:request_log_count{model_name="quiet"' not in metrics


def test_a_version_warms_up_on_the_logged_requests(served, tmp_path):
    server, root, _ = served
    staging = tmp_path / "2"
    shutil.copytree(HPT_VERSION, staging)
    out = subprocess.run([str(BIN_DIR / "pyserving"), "warmup-from-log", "--log",
                          *sorted(glob.glob(str(root / "logs" / "hpt.*"))),
                          "--output", str(staging / "assets.extra" / "tf_serving_warmup_requests")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"Wrote {Traffic.total} warmup records" in out.stdout
    os.rename(staging, root / "hpt" / "2")  # appears whole to the server's poll

    def version_2_available() -> bool:
        status = server.get("/v1/models/hpt/versions/2").json()
        return status.get("model_version_status", [{}])[0].get("state") == "AVAILABLE"
    wait_for(version_2_available, 60, "version 2 to load")
    assert (f"Finished reading warmup data for model at {root / 'hpt' / '2'}. "
            f"Number of warmup records read: {Traffic.total}.") in server.log()


def reload(server: ServerProcess, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    with server.channel() as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, 60)
    assert response.status.error_code == 0


def test_a_reload_changes_what_is_logged_where(served):
    server, root, _ = served
    logs = root / "logs"
    before = len(hpt_records(root))
    reload(server, model_config({"hpt": str(root / "hpt"), "quiet": str(HALF_PLUS_TWO)},
                                {"hpt": logging_config(logs / "hpt2", 1.0),
                                 "quiet": logging_config(logs / "quiet", 1.0)}))
    for model in ("hpt", "quiet"):
        assert server.post(f"/v1/models/{model}:predict", json={"instances": [[1.0]]}).status_code == 200
    wait_for(lambda: has_records(str(logs / "hpt2.*"), 1) and has_records(str(logs / "quiet.*"), 1),
             30, "records under the new prefixes")
    assert len(hpt_records(root)) == before  # the old prefix is no longer written
    (quiet,) = read_logs(str(logs / "quiet.*"))
    assert quiet.log_metadata.model_spec.name == "quiet"
    with pytest.raises(grpc.RpcError) as refused:  # a bad logging_config is refused, the running one stays
        reload(server, model_config({"hpt": str(root / "hpt")}, {"hpt": logging_config(logs / "x", 2.0)}))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Files only inside --request_log_dir: a reload can't make the server write anywhere else.
    for prefix in (root / "elsewhere" / "job", logs / ".." / "job", Path("../job")):
        with pytest.raises(grpc.RpcError) as refused:
            reload(server, model_config({"hpt": str(root / "hpt")}, {"hpt": logging_config(prefix, 1.0)}))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is outside --request_log_dir=" in refused.value.details()
    assert server.get("/v1/models/hpt").status_code == 200  # (no request: later tests count records)
    assert not (root / "elsewhere").exists() and not list(root.glob("job*"))
    assert {f.stat().st_mode & 0o777 for f in logs.glob("*.tfrecord")} == {0o640}


def test_stopping_the_server_flushes_what_was_sampled(served):
    server, root, _ = served
    pattern = str(root / "logs" / "hpt*")
    wait_for(lambda: has_records(pattern, 0), 10, "complete files")
    before = len(read_logs(pattern))
    for i in range(20):
        assert server.post("/v1/models/hpt:predict", json={"instances": [[float(i)]]}).status_code == 200
    assert server.stop() == 0
    assert len(read_logs(pattern)) == before + 20  # no polling: the drain closed the files
    everything = len(read_logs(str(root / "logs" / "*")))
    assert f"Request log closed: {everything} records written, 0 dropped" in server.log()
