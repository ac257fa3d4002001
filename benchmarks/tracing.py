"""What tracing costs: half_plus_two with tracing off, on at 1% and on at 100% sampling.

    python benchmarks/tracing.py [--seconds 4] [--rounds 6]

Each round starts three servers with the same flags (tracing only by OTEL_* variables) side by
side, and one at a time takes the load, 16 connections: gRPC Predict from h2load, REST :predict from wrk. Short runs
alternate between the three (this machine's speed drifts by 20% over minutes: runs far apart
would measure the drift). Besides throughput, each run reports the server's CPU time per answered
request (/proc: every thread of the process, the exporter's included), steadier than throughput.
Spans go over OTLP/gRPC to a receiver in this process that takes each export's bytes without
decoding them (the cost measured is the server's, not a collector's); the first export is decoded
to check it holds spans. Medians over rounds; raw figures in
results/tracing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
from _common import free_port, grpc_frame, h2load, stop, wait_ready, wrk  # benchmarks/ is on sys.path
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tensorflow_serving.apis import predict_pb2

from pyserving.codecs.tensor_proto import from_numpy

HERE = Path(__file__).resolve().parent
HPT = HERE.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
CONFIGURATIONS = {"off": None, "1%": "0.01", "100%": "1.0"}
REST_BODY = b'{"instances": [1.0]}'


class Receiver:
    """OTLP/gRPC's TraceService/Export, answered at once: it counts exports and bytes."""

    def __init__(self) -> None:
        self.port, self.exports, self.bytes, self.first = free_port(), 0, 0, None
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

        def export(request: bytes, _context) -> bytes:
            with self._lock:
                self.exports += 1
                self.bytes += len(request)
                self.first = self.first or request
            return b""

        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
            "Export": grpc.unary_unary_rpc_method_handler(export)})
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    def take(self) -> tuple[int, int, bytes | None]:
        with self._lock:
            taken = (self.exports, self.bytes, self.first)
            self.exports, self.bytes, self.first = 0, 0, None
        return taken


def _predict_body() -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    request.inputs["x"].CopyFrom(from_numpy(np.array([1.0], np.float32)))
    return request.SerializeToString()


def _serve(receiver: Receiver, ratio: str | None) -> tuple[subprocess.Popen, int, int]:
    port, rest = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYSERVING_LOG_LEVEL"] = "WARNING"
    if ratio is not None:
        env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
                   OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=ratio)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}", f"--rest_api_port={rest}",
         "--model_name=hpt", f"--model_base_path={HPT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_ready(f"http://127.0.0.1:{rest}/v1/models/hpt/ready", server)
    return server, port, rest


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _load(api: str, port: int, rest: int, work: Path, seconds: float, grpc_body: Path, size: int):
    if api == "grpc":
        url = f"http://127.0.0.1:{port}/tensorflow.serving.PredictionService/Predict"
        return h2load(url, grpc_body, 16, seconds, work / "h2load.log", size)
    return wrk(f"http://127.0.0.1:{rest}/v1/models/hpt:predict", REST_BODY, "application/json", 16, seconds,
               work / "wrk.lua")


def _measure(name: str, server: tuple, api: str, work: Path, seconds: float, grpc_body: Path, size: int) -> dict:
    process, port, rest = server
    before = _cpu_seconds(process.pid)
    load = _load(api, port, rest, work, seconds, grpc_body, size)
    cpu = _cpu_seconds(process.pid) - before
    return {"tracing": name, "api": api, "rps": round(load.rps, 1), "p50_ms": round(load.p50_ms, 4),
            "p99_ms": round(load.p99_ms, 4), "errors": load.errors,
            "cpu_us_per_request": round(cpu / max(load.ok, 1) * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", default=str(HERE / "results" / "tracing.json"))
    args = parser.parse_args()
    for tool in ("h2load", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: make bench-packages")
    work = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    receiver = Receiver()
    grpc_body = work / "predict.bin"
    grpc_body.write_bytes(grpc_frame(_predict_body()))
    size = len(grpc_frame(_response_size()))
    raw: list[dict] = []
    try:
        for round_ in range(args.rounds):
            # New servers every round: a process's speed varies by itself too (by up to 10%), so
            # each configuration's median is over as many processes as rounds.
            servers = {name: _serve(receiver, ratio) for name, ratio in CONFIGURATIONS.items()}
            try:
                for process, port, rest in servers.values():  # warm up
                    for api in ("grpc", "rest"):
                        _load(api, port, rest, work, 1, grpc_body, size)
                order = list(CONFIGURATIONS) if round_ % 2 == 0 else list(CONFIGURATIONS)[::-1]
                for api in ("grpc", "rest"):
                    for name in order:
                        row = {"round": round_ + 1,
                               **_measure(name, servers[name], api, work, args.seconds, grpc_body, size)}
                        raw.append(row)
                        print(f"round {round_ + 1} tracing {name:5s} {api:4s} {row['rps']:8.0f} req/s "
                              f"p50 {row['p50_ms']:.3f} ms p99 {row['p99_ms']:.3f} ms errors {row['errors']} "
                              f"cpu {row['cpu_us_per_request']:.0f} us/request", flush=True)
            finally:
                for process, _, _ in servers.values():
                    stop(process)  # SIGTERM: a traced server flushes its last spans before it exits
    finally:
        shutil.rmtree(work, ignore_errors=True)
    exports, sent, first = receiver.take()
    spans = sum(len(s.spans) for rs in ExportTraceServiceRequest.FromString(first).resource_spans
                for s in rs.scope_spans) if first else 0
    if not spans:
        raise RuntimeError("no spans reached the receiver")
    print(f"receiver: {exports} exports, {sent} bytes; the first held {spans} spans")
    report = _report(raw)
    print("\n" + report)
    Path(args.json).write_text(json.dumps({"raw": raw, "report": report}, indent=1) + "\n")


def _response_size() -> bytes:
    """One Predict's answer, from a server of its own (every OK answer has the same size)."""
    server, port, _ = _serve(Receiver(), None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            return channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(_predict_body(), timeout=30)
    finally:
        stop(server)


def _report(raw: list[dict]) -> str:
    """Medians over rounds; each ratio is the median of the rounds' own ratios (the three servers
    of a round ran minutes apart at most: the machine's drift between rounds cancels out)."""
    lines = []
    for api in ("grpc", "rest"):
        rows = {(r["round"], r["tracing"]): r for r in raw if r["api"] == api}
        rounds = sorted({r for r, _ in rows})

        def median(name: str, key: str) -> float:
            return statistics.median(rows[(r, name)][key] for r in rounds)

        def ratio(name: str, key: str, inverse: bool = False) -> float:
            values = [rows[(r, name)][key] / rows[(r, "off")][key] for r in rounds]
            return statistics.median(1 / v if inverse else v for v in values)
        lines.append(f"{api}: " + "; ".join(
            f"{name} {median(name, 'rps'):.0f} req/s ({ratio(name, 'rps'):.2f}x) "
            f"p50 {median(name, 'p50_ms'):.2f} ms p99 {median(name, 'p99_ms'):.2f} ms, "
            f"{median(name, 'cpu_us_per_request'):.0f} us CPU a request ({ratio(name, 'cpu_us_per_request', True):.2f}x)"
            for name in CONFIGURATIONS))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
