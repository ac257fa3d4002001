"""Trust (docs/security.md): who may change the server, and what a hostile model folder, bucket,
config or request can touch: its own load or its own answer, never the host or the process."""

from __future__ import annotations

import glob
import ipaddress
import struct
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from pyserving.codecs import tfrecord
from support import models
from support.server import BIN_DIR, HALF_PLUS_TWO, ServerProcess, model_config


def _hostile_warmup(version_dir) -> None:
    """A 112-byte TFRecord whose first header declares a 2^40-byte record, with a valid CRC."""
    target = version_dir / "assets.extra"
    target.mkdir(parents=True)
    length = struct.pack("<Q", 1 << 40)
    header = length + struct.pack("<I", tfrecord.masked_crc32c(length))
    (target / "tf_serving_warmup_requests").write_bytes(header + b"\0" * (112 - len(header)))


def test_warmup_file_declaring_a_huge_record_fails_only_its_load(tmp_path):
    for name in ("good", "evil"):
        models.export_tf1_half_plus_two(str(tmp_path / name / "1"))
    _hostile_warmup(tmp_path / "evil" / "1")
    config = tmp_path / "models.config"
    config.write_text(model_config({"good": str(tmp_path / "good"), "evil": str(tmp_path / "evil")}))
    server = ServerProcess(f"--model_config_file={config}", "--max_num_load_retries=0",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        status = server.get("/v1/models/evil").json()["model_version_status"][0]
        assert status["state"] == "END"
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
    """The address a TCP listener on ``port`` is bound to, from /proc/net/tcp and tcp6 (gRPC
    listens on IPv6 sockets, an IPv4 address as ::ffff:a.b.c.d)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, hex_port = local.split(":")
                if int(hex_port, 16) != port or state != "0A":  # LISTEN
                    continue
                raw = b"".join(struct.pack("<I", int(host[i:i + 8], 16)) for i in range(0, len(host), 8))
                address = ipaddress.ip_address(raw)
                mapped = getattr(address, "ipv4_mapped", None)
                return str(mapped or address)
    raise AssertionError(f"nothing listens on port {port}")


def test_an_admin_token_locks_reloads_and_the_profiler_but_not_inference(tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = ServerProcess("--model_name=hp2", f"--model_base_path={HALF_PLUS_TWO}",
                           f"--admin_token_file={token_file}", "--grpc_bind_address=127.0.0.1",
                           "--rest_api_bind_address=127.0.0.1", log_path=tmp_path / "server.log").wait_ready()
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
            assert server.post("/v1/models/hp2:predict", json={"instances": [1.0]}).json() == {"predictions": [2.5]}
            assert server.get("/v1/models/renamed").status_code == 404
            answer = models.HandleReloadConfigRequest(reload, 60, metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert answer.status.error_code == 0
        assert server.post("/v1/models/renamed:predict", json={"instances": [1.0]}).json() == {"predictions": [2.5]}
        log = server.log()
        assert TOKEN not in log
        assert ("Control plane (config reloads (HandleReloadConfigRequest) and the profiler): "
                "the admin token is required") in log
        assert _listening_address(server.grpc_port) == "127.0.0.1"
        assert _listening_address(server.rest_port) == "127.0.0.1"
    finally:
        assert server.stop() == 0


def test_config_reloads_over_rpc_can_be_turned_off(tmp_path):
    server = ServerProcess("--model_name=hp2", f"--model_base_path={HALF_PLUS_TWO}",
                           "--enable_config_reload_rpc=false", log_path=tmp_path / "server.log").wait_ready()
    try:
        with server.channel() as channel:
            with pytest.raises(grpc.RpcError) as info:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    _reload_request(HALF_PLUS_TWO, "renamed"), 30)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "--enable_config_reload_rpc=false" in info.value.details()
        assert server.post("/v1/models/hp2:predict", json={"instances": [1.0]}).json() == {"predictions": [2.5]}
        log = server.log()
        assert "Control plane (the profiler (config reloads over RPC are off)): open to every client" in log
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
