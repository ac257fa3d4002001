"""TF Serving's Session flags act: --tensorflow_session_config_file, --mixed_precision=bfloat16,
--xla_cpu_compilation_enabled. Each is seen in what the model answers or in TensorFlow's own log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tensorflow as tf
from support.server import BIN_DIR, ServerProcess

from pyserving.runtime.loader import bfloat16_rewrite_runs

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata"
# 1.0001 * 64 * 2 + 1: float32 keeps the 0.0001s; bfloat16 (8 bits of mantissa) rounds x to 1.0.
X = [[1.0001] * 64]
FLOAT32_SUM, BFLOAT16_SUM = 129.01272, 129.0
# TensorFlow rewrites to bfloat16 only where oneDNN supports it (AVX-512F or AVX-NE-CONVERT);
# elsewhere the documented fallback is float32 and one warning at start. Both are asserted.
BFLOAT16_HERE = bfloat16_rewrite_runs()
REWRITTEN_SUM = BFLOAT16_SUM if BFLOAT16_HERE else FLOAT32_SUM
INERT_WARNING = "bfloat16 mixed precision has no effect on this CPU"


def export_matmul(path: str) -> str:
    """y = relu(x @ ones(64, 64) * 2 + 1): a MatMul the bfloat16 rewrite takes, and enough ops
    that no optimizer removes for XLA's auto-clustering to compile a cluster (4 at least)."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, shape=[None, 64], name="x")
        y = tf.identity(tf.nn.relu(tf.matmul(x, tf.ones([64, 64])) * 2.0 + 1.0), name="y")
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            "serving_default": tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")})
        builder.save()
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("session_flags")
    export_matmul(str(root / "matmul" / "1"))
    return root / "matmul"


def _first_output(server: ServerProcess) -> float:
    r = server.post("/v1/models/m:predict", json={"instances": X})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0][0]


def _serve(tmp_path: Path, base: Path, *flags: str, **kw) -> ServerProcess:
    return ServerProcess("--model_name=m", f"--model_base_path={base}", *flags,
                         log_path=tmp_path / "server.log", **kw).wait_ready()


def _assert_bfloat16_warning(server: ServerProcess, wanted: bool) -> None:
    """The warning appears exactly when bfloat16 was asked for and the CPU can't honour it."""
    assert server.log().count(INERT_WARNING) == (1 if wanted and not BFLOAT16_HERE else 0), server.log()


@pytest.mark.parametrize("flags,expected", [((), FLOAT32_SUM), (("--mixed_precision=bfloat16",), REWRITTEN_SUM)])
def test_mixed_precision_bfloat16(tmp_path, base, flags, expected):
    server = _serve(tmp_path, base, *flags)
    try:
        assert _first_output(server) == pytest.approx(expected, abs=1e-4)
        _assert_bfloat16_warning(server, wanted=bool(flags))
    finally:
        assert server.stop() == 0


def test_xla_cpu_compilation(tmp_path, base):
    server = _serve(tmp_path, base, "--xla_cpu_compilation_enabled", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    try:
        assert _first_output(server) == pytest.approx(FLOAT32_SUM, abs=1e-4)
        assert "Compiled cluster using XLA" in server.log()
    finally:
        assert server.stop() == 0


def test_session_config_file(tmp_path, base):
    """A text ConfigProto reaches every model's Session: bfloat16 from its rewrite options, and
    soft placement off, so the GPU-pinned export fails as it does on TF Serving's CPU build, and,
    as TF Serving does with an initial model that can't load, the server exits naming it."""
    config = tmp_path / "session.pbtxt"
    config.write_text("allow_soft_placement: false\n"
                      "graph_options { rewrite_options { auto_mixed_precision_onednn_bfloat16: ON } }\n")
    server = _serve(tmp_path, base, f"--tensorflow_session_config_file={config}")
    try:
        assert _first_output(server) == pytest.approx(REWRITTEN_SUM, abs=1e-4)
        _assert_bfloat16_warning(server, wanted=True)
    finally:
        assert server.stop() == 0
    models = tmp_path / "models.config"
    models.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" }}\n'
                      f'  config {{ name: "gpu" base_path: "{TESTDATA / "saved_model_half_plus_two_gpu"}" '
                      'model_platform: "tensorflow" } }\n')
    result = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), f"--model_config_file={models}",
                             f"--tensorflow_session_config_file={config}", "--max_num_load_retries=0",
                             "--port=0", "--grpc_socket_path=" + str(tmp_path / "grpc.sock")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "did not become available" in line]
    assert "1 model(s) did not become available: {{name: gpu version: 123}: " in line
    assert "Cannot assign a device for operation" in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag,needle", [
    ("--tensorflow_session_config_file={bad}", "Error parsing text-format tensorflow.ConfigProto"),
    ("--tensorflow_session_config_file=/no/such/file", "Error parsing text-format tensorflow.ConfigProto"),
    ("--mixed_precision=float16", "--mixed_precision=float16 is not supported"),
])
def test_bad_session_flags_exit_with_one_line(tmp_path, base, flag, needle):
    bad = tmp_path / "bad.pbtxt"
    bad.write_text("no_such_field: 1\n")
    result = subprocess.run([str(BIN_DIR / "tensorflow_model_server"), "--model_name=m", f"--model_base_path={base}",
                             flag.format(bad=bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
