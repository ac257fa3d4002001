"""What a hostile model folder can do to the server: fail its own load, never the process or the
other models (docs/security.md)."""

from __future__ import annotations

import struct

from pyserving.codecs import tfrecord
from support import models
from support.server import ServerProcess, model_config


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
