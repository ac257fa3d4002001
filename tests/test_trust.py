"""Trust (docs/security.md): who may change the server, and what a hostile model folder, bucket,
config or request can touch: its own load or its own answer, never the host or the process."""

from __future__ import annotations

import glob
import re
import socket
import struct
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from support import models
from support.server import BIN_DIR, HALF_PLUS_TWO, ServerProcess, arrive, listeners, model_config, wait_state
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.codecs import tfrecord


def _hp2(tmp_path: Path, *flags: str) -> ServerProcess:
    """TF Serving's half_plus_two, in place, as model "hp2"."""
    return ServerProcess("--model_name=hp2", f"--model_base_path={HALF_PLUS_TWO}", *flags,
                         log_path=tmp_path / "server.log").wait_ready()


def _serves(server: ServerProcess, model: str = "hp2") -> bool:
    return server.post(f"/v1/models/{model}:predict", json={"instances": [1.0]}).json() == {"predictions": [2.5]}


def _hostile_warmup(version_dir) -> None:
    """A 112-byte TFRecord whose first header declares a 2^40-byte record, with a valid CRC."""
    target = version_dir / "assets.extra"
    target.mkdir(parents=True)
    length = struct.pack("<Q", 1 << 40)
    header = length + struct.pack("<I", tfrecord.masked_crc32c(length))
    (target / "tf_serving_warmup_requests").write_bytes(header + b"\0" * (112 - len(header)))


def test_warmup_file_declaring_a_huge_record_fails_only_its_load(tmp_path):
    models.export_tf1_half_plus_two(str(tmp_path / "good" / "1"))
    (tmp_path / "evil").mkdir()
    config = tmp_path / "models.config"
    config.write_text(model_config({"good": str(tmp_path / "good"), "evil": str(tmp_path / "evil")}))
    server = ServerProcess(f"--model_config_file={config}", "--max_num_load_retries=0",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        def evil_version(path: str) -> None:
            models.export_tf1_half_plus_two(path)
            _hostile_warmup(Path(path))

        arrive(tmp_path / "evil", 1, evil_version)
        status = wait_state(server, "evil", 1, "END")
        assert status["status"]["error_code"] == "DATA_LOSS"
        assert "declares 1099511627776 bytes, more than the 96 left in the file" in status["status"]["error_message"]
        assert server.post("/v1/models/good:predict", json={"instances": [[2.0]]}).json() == {"predictions": [[3.0]]}
        assert "Traceback" not in server.log()
    finally:
        assert server.stop() == 0


# ---- the control plane: who may change the server --------------------------------------------

TOKEN = "s3cr3t-admin-token-7f9c"


def _reload_request(base: Path, name: str = "hp2") -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(model_config({name: str(base)}), request.config)
    return request


def _status_code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _listening_address(port: int) -> str:
    """The address a TCP listener on ``port`` is bound to."""
    found = listeners(port)
    if not found:
        raise AssertionError(f"nothing listens on port {port}")
    return found[0][0]


def test_an_admin_token_locks_reloads_and_the_profiler_but_not_inference(tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = _hp2(tmp_path, f"--admin_token_file={token_file}", "--grpc_bind_address=127.0.0.1",
                  "--rest_api_bind_address=127.0.0.1")
    try:
        with server.channel() as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            reload = _reload_request(HALF_PLUS_TWO, "renamed")
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
                assert _status_code(lambda: models.HandleReloadConfigRequest(
                    reload, 30, metadata=metadata)) == grpc.StatusCode.UNAUTHENTICATED
            profile = channel.unary_unary("/tensorflow.ProfilerService/Profile")
            assert _status_code(lambda: profile(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
            # Refused calls changed nothing; the data plane needs no token.
            assert _serves(server)
            assert server.get("/v1/models/renamed").status_code == 404
            answer = models.HandleReloadConfigRequest(reload, 60, metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert answer.status.error_code == 0
        assert server.post("/v1/models/renamed:predict", json={"instances": [1.0]}).json() == {"predictions": [2.5]}
        log = server.log()
        assert TOKEN not in log
        assert ("Control plane on the gRPC port (config reloads (HandleReloadConfigRequest), model loads and "
                "unloads (V2 RepositoryModelLoad/Unload) and the profiler): this machine only, with the admin "
                "token (--admin_token_file)") in log
        assert ("Control plane on the REST port (model loads and unloads (POST /v2/repository/models/{name}/"
                "load|unload)): this machine only, with the admin token") in log
        # With the token the REST port's unload is open to its holders (and refused without it).
        assert server.post("/v2/repository/models/renamed/unload").status_code == 401
        r = server.post("/v2/repository/models/renamed/unload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert _listening_address(server.grpc_port) == "127.0.0.1"
        assert _listening_address(server.rest_port) == "127.0.0.1"
    finally:
        assert server.stop() == 0


def test_the_rest_port_has_no_open_control_plane_by_default(tmp_path):
    """TF Serving has no REST control plane: without the token or --rest_api_enable_model_control,
    REST's unload is refused (403) and the model keeps serving; gRPC's keeps TF Serving's default. The
    start-up lines judge each port from its own bind address."""
    server = _hp2(tmp_path, "--grpc_bind_address=127.0.0.1", "--rest_api_bind_address=0.0.0.0")
    try:
        for action in ("unload", "load"):
            r = server.post(f"/v2/repository/models/hp2/{action}")
            assert r.status_code == 403 and "--rest_api_enable_model_control" in r.json()["error"], r.text
        assert server.post("/v2/repository/index").status_code == 200  # reads stay open
        assert _serves(server)
        log = server.log()
        assert "Control plane on the gRPC port (config reloads" in log and "): open to this machine only" in log
        assert ("Control plane on the REST port (model loads and unloads (POST /v2/repository/models/{name}/"
                "load|unload)): closed (TF Serving has no REST control plane)") in log
    finally:
        assert server.stop() == 0
    server = _hp2(tmp_path, "--rest_api_enable_model_control", "--rest_api_bind_address=0.0.0.0")
    try:
        assert server.post("/v2/repository/models/hp2/unload").json() == {"name": "hp2", "unload": True}
        assert "Control plane on the REST port (model loads and unloads (POST /v2/repository/models/{name}/" \
               "load|unload)): open to every client that reaches the REST port (0.0.0.0)" in server.log()
    finally:
        assert server.stop() == 0


def test_config_reloads_over_rpc_can_be_turned_off(tmp_path):
    server = _hp2(tmp_path, "--enable_config_reload_rpc=false")
    try:
        with server.channel() as channel:
            with pytest.raises(grpc.RpcError) as info:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    _reload_request(HALF_PLUS_TWO, "renamed"), 30)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "--enable_config_reload_rpc=false" in info.value.details()
        # The Open Inference Protocol's unload is turned off with reloads (and the index stays open).
        r = server.post("/v2/repository/models/hp2/unload")
        assert r.status_code == 501 and "--enable_config_reload_rpc=false" in r.json()["error"]
        assert server.post("/v2/repository/index").status_code == 200
        assert _serves(server)
        log = server.log()
        assert ("Control plane on the gRPC port (the profiler (config reloads, model loads and unloads over RPC "
                "are off)): open to every client that reaches the gRPC port") in log
        assert "Control plane on the REST port (model loads and unloads" in log and \
            "off (--enable_config_reload_rpc=false)" in log
        assert _listening_address(server.grpc_port) in ("0.0.0.0", "::")  # TF Serving's default stays
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flag,needle", [
    ("--admin_token_file={missing}", "cannot read it"),
    ("--admin_token_file={empty}", "must hold one token"),
    ("--grpc_bind_address=not-an-address", "is not an IP address"),
])
def test_bad_control_plane_flags_exit_with_one_line(tmp_path, flag, needle):
    (tmp_path / "empty").write_text("\n")
    result = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), "--model_name=m",
                             f"--model_base_path={HALF_PLUS_TWO}",
                             flag.format(missing=tmp_path / "missing", empty=tmp_path / "empty")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_logging_config_without_a_request_log_dir_is_refused_at_start(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(model_config({"hp2": str(HALF_PLUS_TWO)}, {"hp2": (
        'logging_config { sampling_config { sampling_rate: 1 } '
        'log_collector_config { filename_prefix: "/etc/cron.d/job" } }')}))
    result = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), f"--model_config_file={config}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "writes request logs, which this server writes only inside the folder named by --request_log_dir" \
        in result.stderr, result.stderr
    assert not glob.glob("/etc/cron.d/job*")


# ---- what a base path can do to the server's status ------------------------------------------

def test_version_folders_past_int64_and_a_base_path_of_proc_break_nothing(tmp_path):
    """Folders named past int64 are skipped as TF Serving skips them, with one line naming them;
    /proc's process folders fail to load as versions (as in TF Serving); every status URL answers."""
    base = tmp_path / "m"
    base.mkdir()
    for name in ("1", "9223372036854775808", "99999999999999999999999"):
        (base / name).symlink_to(HALF_PLUS_TWO / "00000123", target_is_directory=True)
    config = tmp_path / "models.config"
    forged = "2026-01-01 00:00:00,000 E pyserving.server] forged"
    served = {"m": str(base), "hp2": str(HALF_PLUS_TWO), "evil\\n" + forged: str(tmp_path / "missing")}
    config.write_text(model_config(served))
    server = ServerProcess(f"--model_config_file={config}", "--max_num_load_retries=0",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        # /proc at start would stop the server (its newest process folder can't load, as in TF
        # Serving): it comes by reload, which answers that it did not become available.
        with server.channel() as channel:
            request = model_management_pb2.ReloadConfigRequest()
            text_format.Parse(model_config({**served, "proc": "/proc"}), request.config)
            with pytest.raises(grpc.RpcError) as info:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, 60)
            assert info.value.code() == grpc.StatusCode.UNKNOWN and "{name: proc version: " in info.value.details()
        status = server.get("/v1/models/m").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
        for path in ("/", "/v1/status", "/v1/models", "/v1/models/hp2", "/v1/models/proc"):
            assert server.get(path).status_code == 200, path
        (proc,) = server.get("/v1/models/proc").json()["model_version_status"]
        assert proc["state"] == "END" and proc["status"]["error_code"] != "OK"
        assert _serves(server)
        log = server.log()
        assert ("Model m: ignoring 2 numbered folders under " in log
                and "9223372036854775808: its number is larger than a version can be (int64)" in log)
        assert "Traceback" not in log
        # A name from a config (or a reload) can't forge a log line: controls are escaped.
        assert "of model evil\\n" + forged in log
        assert not [line for line in log.splitlines() if line.startswith(forged)]
    finally:
        assert server.stop() == 0


# ---- bounded work per request ------------------------------------------------------------------

MIB = 1 << 20


def _gzip_bomb(inflated: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MIB)
    return b"".join([packer.compress(chunk) for _ in range(inflated // MIB)] + [packer.flush()])


@pytest.mark.serial  # measures the event loop's latency while bombs inflate
def test_gzip_bombs_stop_at_100_mb_off_the_event_loop(tmp_path):
    bomb = _gzip_bomb(1024 * MIB)  # ~1 MB on the wire, 1 GiB inflated
    server = _hp2(tmp_path)
    try:
        health_latencies: list[float] = []
        with ThreadPoolExecutor(3) as pool:
            bombs = [pool.submit(server.post, "/v1/models/hp2:predict", data=bomb,
                                 headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
                     for _ in range(3)]
            while not all(b.done() for b in bombs):
                sent = time.monotonic()
                assert server.get("/healthz").status_code == 200
                health_latencies.append(time.monotonic() - sent)
            answers = [b.result() for b in bombs]
        for r in answers:
            assert r.status_code == 413, r.text
            assert r.json()["error"] == ("Request body inflates to more than the limit of 104857600 bytes "
                                         "(--rest_api_max_decompressed_bytes)")
        # Inflating ran in threads: the loop kept answering (it stalled 8.6 s inflating on the loop).
        assert max(health_latencies) < 1.0, max(health_latencies)
        assert _serves(server)
    finally:
        assert server.stop() == 0


POST_ROUTES = ("/v1/models/hp2:predict", "/v1/models/hp2/versions/123:classify", "/v2/models/hp2/infer",
               "/v2/models/hp2/versions/123/infer", "/v2/repository/index", "/v2/repository/models/hp2/load",
               "/v2/repository/models/hp2/unload", "/v1/no/such/route")


def test_expect_100_continue_over_the_limit_is_413_before_the_body(tmp_path):
    server = _hp2(tmp_path, "--rest_api_max_request_bytes=1048576")
    try:
        for path, (length, first_line) in ((p, c) for p in POST_ROUTES
                                           for c in ((99999999999, b"HTTP/1.1 413"), (100, b"HTTP/1.1 100 Continue"))):
            with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as conn:
                conn.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (path.encode(), length))
                assert conn.recv(4096).startswith(first_line), path
        assert _serves(server)
    finally:
        assert server.stop() == 0


# ---- TensorFlow's answers, whatever the input ------------------------------------------------

def _export_scalar_string(path: str) -> str:
    """y = x * 2, plus a scalar string output (a model's name or version tag, say)."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, shape=[None], name="x")
        tag = tf.identity(tf.constant("v1-\u00e9"), name="tag")
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            "serving_default": tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {"y": info(tf.identity(x * 2, name="y")), "tag": info(tag)},
                "tensorflow/serving/predict")})
        builder.save()
    return path


def test_invalid_utf8_into_parse_example_and_scalar_string_outputs(tmp_path):
    """Bytes that are not UTF-8 in TensorFlow's error message: INVALID_ARGUMENT, not an INTERNAL
    traceback; a scalar string output answers over REST as over gRPC."""
    _export_scalar_string(str(tmp_path / "tag" / "1"))
    config = tmp_path / "models.config"
    config.write_text(model_config({"hp2": str(HALF_PLUS_TWO), "tag": str(tmp_path / "tag")}))
    server = ServerProcess(f"--model_config_file={config}", log_path=tmp_path / "server.log").wait_ready()
    try:
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for signature in ("classify_x_to_y", "regress_x_to_y"):
                request = predict_pb2.PredictRequest()
                request.model_spec.name, request.model_spec.signature_name = "hp2", signature
                request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.array([b"\xff\xfe\x80"], dtype=object)))
                with pytest.raises(grpc.RpcError) as info:
                    stub.Predict(request, 10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "\\xff\\xfe\\x80" in info.value.details()
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tag"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.float32([1.0, 2.0])))
            assert stub.Predict(request, 10).outputs["tag"].string_val == ["v1-é".encode()]
        bad = server.post("/v1/models/hp2:predict",
                          json={"signature_name": "classify_x_to_y", "instances": [{"b64": "//6A"}]})
        assert bad.status_code == 400 and "\\xff\\xfe\\x80" in bad.json()["error"]
        rows = server.post("/v1/models/tag:predict", json={"instances": [1.0, 2.0]})  # a scalar has no rows
        assert rows.status_code == 400 and "use the columnar 'inputs' format" in rows.json()["error"]
        columns = server.post("/v1/models/tag:predict", json={"inputs": {"x": [1.0, 2.0]}})
        assert columns.json() == {"outputs": {"y": [2.0, 4.0], "tag": "v1-é"}}
        assert "Traceback" not in server.log()
    finally:
        assert server.stop() == 0


# ---- a client's mistakes are never our errors ------------------------------------------------

_HOSTILE_HEADERS = [{"Inference-Header-Content-Length": v} for v in ("²", "٣", "1" * 5000, "-1", "7 ", "0x10", "1_0")] + [
    {"Content-Encoding": "br"}, {"Content-Encoding": "gzip"}, {"Content-Type": "a/\x7f"},
    {"Authorization": "Bearer " + "x" * 5000}, {"Authorization": "Bearer \u00e9"},
    {"Expect": "fish"}, {"Accept-Encoding": "gzip;q=" + "9" * 4000}]
_HOSTILE_BODIES = [b"", b"{", b"\xff\xfe", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": ["1"]}]}',
                   b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"id": 5, "inputs": []}',
                   b'{"parameters": {"signature_name": 1}, "inputs": [{"name": "x"}]}']


def test_a_hostile_corpus_over_every_route_logs_no_traceback_and_no_error(tmp_path):
    server = _hp2(tmp_path)
    try:
        paths = POST_ROUTES + ("/v1/models/hp2", "/v1/models/hp2/metadata", "/v2/models/hp2", "/v2/models/hp2/ready",
                               "/v2", "/v2/health/ready", "/v1/models/hp2/labels/x:regress", "/v1/status")
        for path in paths:
            for headers in _HOSTILE_HEADERS:
                for body in _HOSTILE_BODIES:
                    r = server.post(path, data=body, headers={k: v.encode() for k, v in headers.items()})
                    assert r.status_code < 500, (path, headers, body[:40], r.status_code, r.text[:200])
        assert _serves(server)
    finally:
        assert server.stop() == 0
    log = server.log()
    errors = [line for line in log.splitlines() if re.match(r"\S+ \S+ [EC] ", line)]  # our ERROR / CRITICAL
    assert "Traceback" not in log and not errors, errors[:5] or log[-3000:]
