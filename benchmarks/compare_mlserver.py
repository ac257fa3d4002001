"""pyserving vs MLServer vs a bare reference server: batch-1 Predict on TF Serving's half_plus_two.

Usage: make bench    (or: python benchmarks/compare_mlserver.py [--seconds 5] [--rounds 3]
                      [--concurrency 1,4,16,64] [--pyserving-flags=--num_workers=2] [--model DIR] [--v2])

--v2: the same pyserving process is measured a second time, as "pyserving-v2", on the Open Inference
Protocol with MLServer's very request bytes (gRPC GRPCInferenceService/ModelInfer, REST POST
/v2/models/half_plus_two/infer): the same protocol and bytes for both servers, and V2 against TF
Serving's API on one server. Results then go to compare_mlserver_v2.json / .png.

Three servers serve the same SavedModel (saved_model_half_plus_two_cpu, serving_default, x=[[1.0]]
-> 2.5) on loopback; all are started once, and only the one measured gets traffic:
- pyserving (tensorflow_model_server): gRPC PredictionService/Predict, REST POST .../v1/models/half_plus_two:predict
  with TF Serving's quickstart body {"instances": [1.0]};
- MLServer 1.7.1 in its own venv (--mlserver-venv, created on first use with tensorflow-cpu), through the
  smallest custom runtime (tf.saved_model.load + signature call, NumpyCodec): gRPC
  GRPCInferenceService/ModelInfer and REST POST /v2/models/half_plus_two/infer (Open Inference Protocol V2);
  its defaults are kept except loopback host, free ports and debug off (debug logs every request);
- benchmarks/bare_reference.py: parse, Session callable, respond, one process per core: the ceiling.
Load comes from C generators, one in flight per connection: h2load (gRPC over h2c) and wrk (REST,
HTTP/1.1 keep-alive). Each point runs --warmup then --seconds; a round measures every protocol x
concurrency x server, the server order reversing each round so drift hits all alike. Throughput counts
successful answers only (gRPC: h2load's DATA bytes / the OK response size, since gRPC errors are HTTP 200);
p50/p99 come from h2load's per-request log and wrk's histogram. The table shows the median [min-max]
over rounds; raw figures go to benchmarks/results/compare_mlserver.json, a plot to compare_mlserver.png.
The load generator shares the machine's cores with the server measured: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import requests
from _common import Load, free_port, grpc_frame, h2load, stop_group, wait_ready, wrk  # benchmarks/ is on sys.path
from bare_reference import version_dir

HERE = Path(__file__).resolve().parent
NAME = "half_plus_two"
SERVERS = ("pyserving", "MLServer", "bare")  # with --v2, "pyserving-v2" after "pyserving"
V2 = "pyserving-v2"
COLORS = {"pyserving": "tab:blue", V2: "tab:green", "MLServer": "tab:orange", "bare": "tab:gray"}
PROTOCOLS = ("grpc", "rest")
# tensorflow-cpu: what pip resolves with mlserver 1.7.1 (Python 3.11); uvloop 0.22+ crash-loops its
# inference workers ("There is no current event loop", SeldonIO/MLServer#2286), so the last that works.
MLSERVER_PINS = ("mlserver==1.7.1", "tensorflow-cpu==2.21.0", "uvloop==0.21.0")

RUNTIME = '''
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class HalfPlusTwo(MLModel):
    async def load(self) -> bool:
        self._loaded = tf.saved_model.load(self.settings.parameters.uri)
        self._predict = self._loaded.signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self._predict(x=tf.constant(x))["y"].numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
'''

# Probes, run by each server's venv python (so TensorFlow stays out of this process): the request built
# with the server's own protos, one call to check its answer, and the answer's size (h2load's OK count).
PREDICT_PROBE = '''
import json, sys, grpc
from tensorflow_serving.apis import predict_pb2
request = predict_pb2.PredictRequest()
request.model_spec.name = sys.argv[2]
x = request.inputs["x"]
x.dtype = 1  # DT_FLOAT
x.tensor_shape.dim.add(size=1)
x.tensor_shape.dim.add(size=1)
x.float_val.append(1.0)
call = grpc.insecure_channel("127.0.0.1:" + sys.argv[1]).unary_unary(sys.argv[3])
raw = call(request.SerializeToString(), timeout=30)
y = list(predict_pb2.PredictResponse.FromString(raw).outputs["y"].float_val)
print(json.dumps({"request": request.SerializeToString().hex(), "response_bytes": len(raw), "y": y}))
'''
MLSERVER_PROBE = '''
import json, sys, grpc
from mlserver.codecs import NumpyCodec
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferResponseConverter
request = pb.ModelInferRequest(model_name=sys.argv[2], inputs=[pb.ModelInferRequest.InferInputTensor(
    name="x", datatype="FP32", shape=[1, 1], contents=pb.InferTensorContents(fp32_contents=[1.0]))])
call = grpc.insecure_channel("127.0.0.1:" + sys.argv[1]).unary_unary(sys.argv[3])
raw = call(request.SerializeToString(), timeout=30)
y = NumpyCodec.decode_output(ModelInferResponseConverter.to_types(pb.ModelInferResponse.FromString(raw)).outputs[0])
print(json.dumps({"request": request.SerializeToString().hex(), "response_bytes": len(raw), "y": y.tolist()}))
'''


@dataclass
class Server:
    """A started server and the one request each protocol sends it."""
    name: str
    proc: subprocess.Popen
    log: Path
    grpc_url: str
    rest_url: str
    rest_body: bytes
    rest_answer: Callable[[dict], list]
    probe: tuple[str, str]  # (python, script)
    ready_url: str = ""  # none: the bare server prints "ready" once every process serves
    grpc_request: bytes = b""
    grpc_response_bytes: int = 0
    settings: dict = field(default_factory=dict)


def parse_args() -> argparse.Namespace:
    repo = HERE.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(repo.parent / "shared/tfs-testdata/saved_model_half_plus_two_cpu"),
                        help="half_plus_two base path (holds version 00000123)")
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per point")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated connection counts")
    parser.add_argument("--pyserving-flags", default="--num_workers=2", help="extra tensorflow_model_server flags")
    parser.add_argument("--mlserver-venv", default=str(Path.home() / ".cache/pyserving-bench/mlserver-venv"))
    parser.add_argument("--python", default="python3.11", help="interpreter for a new MLServer venv")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON and PNG")
    parser.add_argument("--v2", action="store_true", help="pyserving on the Open Inference Protocol, MLServer's bytes")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def check_tools() -> None:
    missing = [tool for tool in ("h2load", "wrk") if not shutil.which(tool)]
    if missing:
        sys.exit(f"{' and '.join(missing)} not found: apt-get install nghttp2-client wrk")


def ensure_mlserver_venv(venv: Path, python: str) -> Path:
    """The MLServer venv's python, after creating the venv and installing the pins if needed."""
    marker = venv / ".pyserving-bench-installed"
    if not marker.exists() or marker.read_text().split() != list(MLSERVER_PINS):
        print(f"Creating the MLServer venv {venv} ({' '.join(MLSERVER_PINS)}): a few minutes, only the first time",
              flush=True)
        if not (venv / "bin/python").exists():
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *MLSERVER_PINS], check=True)
        marker.write_text(" ".join(MLSERVER_PINS) + "\n")
    return venv / "bin/python"


def spawn(name: str, cmd: list[str], work: Path, **kwargs) -> tuple[subprocess.Popen, Path]:
    """A server in its own session (so stopping it reaps its workers), its output to a log file."""
    log = work / f"{name}.log"
    with open(log, "wb") as sink:
        stdout = kwargs.pop("stdout", sink)
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=sink, start_new_session=True, **kwargs)
    return proc, log


def start_pyserving(args: argparse.Namespace, work: Path, _: Path) -> Server:
    grpc_port, rest_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={grpc_port}",
           f"--rest_api_port={rest_port}", f"--model_name={NAME}", f"--model_base_path={args.model}",
           *shlex.split(args.pyserving_flags)]
    proc, log = spawn("pyserving", cmd, work, env=dict(os.environ, PYSERVING_LOG_LEVEL="WARNING"))
    return Server("pyserving", proc, log, f"http://127.0.0.1:{grpc_port}/tensorflow.serving.PredictionService/Predict",
                  f"http://127.0.0.1:{rest_port}/v1/models/{NAME}:predict", b'{"instances": [1.0]}',
                  lambda answer: answer["predictions"], (sys.executable, PREDICT_PROBE),
                  f"http://127.0.0.1:{rest_port}/v1/models/{NAME}", settings={"command": cmd})


def start_mlserver(args: argparse.Namespace, work: Path, mlserver_python: Path) -> Server:
    folder = work / "mlserver"
    folder.mkdir()
    (folder / "runtime.py").write_text(RUNTIME)
    model = {"name": NAME, "implementation": "runtime.HalfPlusTwo", "parameters": {"uri": str(version_dir(args.model))}}
    settings = {"host": "127.0.0.1", "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(),
                "metrics_dir": str(folder / "metrics"), "debug": False}  # parallel_workers: MLServer's default
    (folder / "model-settings.json").write_text(json.dumps(model))
    (folder / "settings.json").write_text(json.dumps(settings))
    effective = subprocess.run([str(mlserver_python), "-c", "import json, sys; from mlserver.settings import Settings; "
                                "print(Settings(**json.loads(sys.argv[1])).model_dump_json())", json.dumps(settings)],
                               capture_output=True, text=True, check=True).stdout
    proc, log = spawn("mlserver", [str(Path(args.mlserver_venv) / "bin/mlserver"), "start", str(folder)], work,
                      cwd=folder)
    v2 = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    return Server("MLServer", proc, log, f"http://127.0.0.1:{settings['grpc_port']}/inference.GRPCInferenceService/ModelInfer",
                  f"http://127.0.0.1:{settings['http_port']}/v2/models/{NAME}/infer", json.dumps(v2).encode(),
                  lambda answer: answer["outputs"][0]["data"], (str(mlserver_python), MLSERVER_PROBE),
                  f"http://127.0.0.1:{settings['http_port']}/v2/models/{NAME}/ready",
                  settings={"settings.json": settings, "effective settings": json.loads(effective),
                            "model-settings.json": model, "runtime.py": RUNTIME})


def start_bare(args: argparse.Namespace, work: Path, _: Path) -> Server:
    grpc_port, rest_port = free_port(), free_port()
    cmd = [sys.executable, str(HERE / "bare_reference.py"), f"--grpc-port={grpc_port}", f"--rest-port={rest_port}",
           f"--model={args.model}"]
    proc, log = spawn("bare", cmd, work, stdout=subprocess.PIPE)
    return Server("bare", proc, log, f"http://127.0.0.1:{grpc_port}/tensorflow.serving.PredictionService/Predict",
                  f"http://127.0.0.1:{rest_port}/v1/models/{NAME}:predict", b'{"instances": [1.0]}',
                  lambda answer: answer["predictions"], (sys.executable, PREDICT_PROBE),
                  settings={"command": cmd, "processes": os.cpu_count()})


def v2_twin(pyserving: Server, mlserver: Server) -> Server:
    """The pyserving process again, on the Open Inference Protocol with MLServer's request bytes."""
    ours = dataclasses.replace(pyserving, name=V2, settings=dict(pyserving.settings))
    grpc_port = ours.grpc_url.removeprefix("http://127.0.0.1:").split("/", 1)[0]
    rest_port = ours.rest_url.removeprefix("http://127.0.0.1:").split("/", 1)[0]
    ours.grpc_url = f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer"
    ours.rest_url = f"http://127.0.0.1:{rest_port}/v2/models/{NAME}/infer"
    ours.rest_body, ours.rest_answer = mlserver.rest_body, mlserver.rest_answer
    ours.grpc_request = mlserver.grpc_request
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(ours.grpc_request, timeout=30)
    from pyserving.protocols.grpc.open_inference_protos import ModelInferResponse  # protobuf only, no TensorFlow

    answer = ModelInferResponse.FromString(raw)
    y = np.frombuffer(answer.raw_output_contents[0], "<f4").tolist()
    rest = requests.post(ours.rest_url, data=ours.rest_body, headers={"Content-Type": "application/json"}, timeout=30)
    if y != [2.5] or not rest.ok or ours.rest_answer(rest.json()) != [2.5]:
        raise SystemExit(f"pyserving V2 answered gRPC {y}, REST {rest.text[:200]}; expected 2.5")
    ours.grpc_response_bytes = len(raw)
    ours.settings["protocol"] = "Open Inference Protocol (V2), MLServer's request bytes"
    print(f"{V2}: gRPC and REST answer 2.5 to MLServer's requests (gRPC answer {len(raw)} bytes)", flush=True)
    return ours


def wait_until_ready(server: Server, timeout: float = 120) -> None:
    """Readiness: the model's status/ready URL answers 200, or the bare server prints ``ready``."""
    try:
        if server.ready_url:
            wait_ready(server.ready_url, server.proc, timeout)
        else:
            stdout = server.proc.stdout
            assert stdout is not None
            readable, _, _ = select.select([stdout], [], [], timeout)
            if not readable or stdout.readline().strip() != b"ready":
                raise SystemExit("the bare server did not start")
    except SystemExit:
        print(f"--- {server.name} log ({server.log}):\n" + server.log.read_text(errors="replace")[-3000:])
        raise


def check_answers(server: Server) -> None:
    """Both protocols answer y = 2.5 for x = 1.0 before anything is measured."""
    grpc_port, path = server.grpc_url.removeprefix("http://127.0.0.1:").split("/", 1)
    python, script = server.probe
    probe = subprocess.run([python, "-c", script, grpc_port, NAME, "/" + path], capture_output=True, text=True)
    if probe.returncode:
        raise SystemExit(f"{server.name}: the gRPC probe failed:\n{probe.stderr[-3000:]}")
    answer = json.loads(probe.stdout)
    server.grpc_request, server.grpc_response_bytes = bytes.fromhex(answer["request"]), answer["response_bytes"]
    rest = requests.post(server.rest_url, data=server.rest_body, headers={"Content-Type": "application/json"}, timeout=30)
    rest_y = server.rest_answer(rest.json()) if rest.ok else rest.text
    if answer["y"] not in ([2.5], [[2.5]]) or rest_y not in ([2.5], [[2.5]]):
        raise SystemExit(f"{server.name} answered gRPC {answer['y']}, REST {rest_y}; expected 2.5")
    print(f"{server.name}: gRPC and REST answer 2.5 (gRPC answer {server.grpc_response_bytes} bytes)", flush=True)


def measure(server: Server, protocol: str, connections: int, seconds: int, work: Path) -> Load:
    if protocol == "grpc":
        body = work / f"{server.name}.grpc-body"
        body.write_bytes(grpc_frame(server.grpc_request))
        return h2load(server.grpc_url, body, connections, seconds, work / "h2load.log", server.grpc_response_bytes + 5)
    return wrk(server.rest_url, server.rest_body, "application/json", connections, seconds, work / "wrk.lua")


def run_rounds(servers: dict[str, Server], args: argparse.Namespace, work: Path) -> list[dict]:
    """Every round: each protocol x concurrency, the servers one after another (order reversed each round)."""
    raw = []
    for round_ in range(args.rounds):
        names = list(servers)
        order = names if round_ % 2 == 0 else names[::-1]
        print(f"round {round_ + 1}/{args.rounds}: {' '.join(order)}", flush=True)
        for protocol in PROTOCOLS:
            for connections in args.concurrency:
                for name in order:
                    if args.warmup:
                        measure(servers[name], protocol, connections, args.warmup, work)
                    load = measure(servers[name], protocol, connections, args.seconds, work)
                    raw.append({"round": round_ + 1, "server": name, "protocol": protocol, "concurrency": connections,
                                "rps": round(load.rps, 1), "ok": load.ok, "errors": load.errors,
                                "seconds": round(load.seconds, 3), "p50_ms": round(load.p50_ms, 3),
                                "p99_ms": round(load.p99_ms, 3)})
                    print(f"  {name:9s} {protocol:4s} c={connections:<3d} {load.rps:8.0f} req/s  p50 {load.p50_ms:7.2f} ms"
                          f"  p99 {load.p99_ms:7.2f} ms  errors {load.errors}", flush=True)
    return raw


def series(raw: list[dict], server: str, protocol: str, connections: int, key: str) -> list[float]:
    return [r[key] for r in raw if (r["server"], r["protocol"], r["concurrency"]) == (server, protocol, connections)]


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def report(raw: list[dict], concurrency: list[int], names: list[str]) -> str:
    """The table (median [min-max] over rounds) and the pyserving/MLServer, pyserving/bare throughput ratios."""
    lines = [f"{'server':9s} {'proto':5s} {'conc':>4s} {'req/s median [min-max]':>26s} {'p50 ms':>8s} {'p99 ms':>8s} errors"]
    for protocol in PROTOCOLS:
        for connections in concurrency:
            for name in names:
                lo, mid, hi = spread(series(raw, name, protocol, connections, "rps"))
                p50 = statistics.median(series(raw, name, protocol, connections, "p50_ms"))
                p99 = statistics.median(series(raw, name, protocol, connections, "p99_ms"))
                errors = sum(series(raw, name, protocol, connections, "errors"))
                lines.append(f"{name:9s} {protocol:5s} {connections:4d} {mid:9.0f} [{lo:6.0f}-{hi:6.0f}]    "
                             f"{p50:8.2f} {p99:8.2f} {errors:6d}")
    lines.append("\nThroughput ratios, median of per-round ratios [min-max]  (* = headline, concurrency 16)")
    for protocol in PROTOCOLS:
        for connections in concurrency:
            parts = []
            pairs = [("pyserving", "MLServer"), ("pyserving", "bare")]
            if V2 in names:
                pairs += [(V2, "MLServer"), (V2, "pyserving")]
            for ours, other in pairs:
                mine = series(raw, ours, protocol, connections, "rps")
                ratios = [a / b if b else float("inf") for a, b in zip(mine, series(raw, other, protocol, connections, "rps"))]
                lo, mid, hi = spread(ratios)
                parts.append(f"{ours}/{other} {mid:5.2f}x [{lo:.2f}-{hi:.2f}]")
            lines.append(f"{'*' if connections == 16 else ' '} {protocol:4s} c={connections:<3d} " + "   ".join(parts))
    return "\n".join(lines)


def plot(raw: list[dict], concurrency: list[int], path: Path, subtitle: str, names: list[str]) -> None:
    """2x2: throughput and p50/p99 latency against concurrency, gRPC on top, REST below; min-max bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    for row, protocol in enumerate(PROTOCOLS):
        for name, color in ((n, COLORS[n]) for n in names):
            rps = [spread(series(raw, name, protocol, c, "rps")) for c in concurrency]
            mids = [m for _, m, _ in rps]
            axes[row][0].errorbar(concurrency, mids, yerr=[[m - lo for lo, m, _ in rps], [hi - m for _, m, hi in rps]],
                                  color=color, marker="o", capsize=3, label=name)
            for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
                values = [statistics.median(series(raw, name, protocol, c, key)) for c in concurrency]
                axes[row][1].plot(concurrency, values, style, color=color, marker="o", label=f"{name} {key[:3]}")
        label = "gRPC (h2load)" if protocol == "grpc" else "REST (wrk)"
        axes[row][0].set(title=f"{label}: throughput, median and min-max over rounds", ylabel="req/s")
        axes[row][1].set(title=f"{label}: latency, median over rounds", ylabel="ms", yscale="log")
        for ax in axes[row]:
            ax.set_xscale("log")
            ax.set_xticks(concurrency, [str(c) for c in concurrency])
            ax.set_xlabel("concurrent connections (1 request in flight each)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        axes[row][0].set_ylim(bottom=0)
    fig.suptitle(f"half_plus_two batch-1 Predict, {os.cpu_count()} cores shared with the load generator\n{subtitle}")
    fig.savefig(path, dpi=110)


def versions(mlserver_python: Path) -> dict:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    ours = subprocess.run([sys.executable, "-c", code, "pyserving", "tensorflow", "tensorflow-serving-api", "grpcio",
                           "aiohttp"], capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run([str(mlserver_python), "-c", code, "mlserver", "tensorflow-cpu", "grpcio", "fastapi",
                             "uvicorn"], capture_output=True, text=True, check=True).stdout
    tool = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
    return {"pyserving_venv": json.loads(ours), "mlserver_venv": json.loads(theirs),
            "h2load": tool(["h2load", "--version"]), "wrk": tool(["wrk", "-v"]), "python": platform.python_version()}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu": cpu,
            "platform": platform.platform()}


def main() -> None:
    args = parse_args()
    check_tools()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on kill too, not only on Ctrl-C
    mlserver_python = ensure_mlserver_venv(Path(args.mlserver_venv), args.python)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pyserving-bench-"))
    servers: dict[str, Server] = {}
    try:
        for start in (start_pyserving, start_mlserver, start_bare):
            server = start(args, work, mlserver_python)
            servers[server.name] = server
        for server in servers.values():
            wait_until_ready(server)
            check_answers(server)
        if args.v2:
            twin = v2_twin(servers["pyserving"], servers["MLServer"])
            servers = {"pyserving": servers["pyserving"], V2: twin,
                       **{n: servers[n] for n in servers if n != "pyserving"}}
        started = time.time()
        raw = run_rounds(servers, args, work)
    except BaseException:
        print(f"server logs kept in {work}", file=sys.stderr)
        raise
    finally:
        for server in {id(s.proc): s for s in servers.values()}.values():  # the V2 twin shares a process
            stop_group(server.proc)
    shutil.rmtree(work, ignore_errors=True)
    names = list(servers)
    text = report(raw, args.concurrency, names)
    print("\n" + text)
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "measured_seconds": round(time.time() - started), "machine": machine(),
              "versions": versions(mlserver_python), "flags": vars(args),
              "servers": {s.name: s.settings for s in servers.values()}, "raw": raw, "table": text}
    stem = "compare_mlserver_v2" if args.v2 else "compare_mlserver"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    workers = servers["MLServer"].settings["effective settings"]["parallel_workers"]
    plot(raw, args.concurrency, out / f"{stem}.png",
         f"pyserving {args.pyserving_flags or '(default flags)'}; MLServer parallel_workers={workers}; "
         f"bare {os.cpu_count()} processes; {args.rounds} rounds x {args.seconds} s", names)
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.png')}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: servers stopped")
