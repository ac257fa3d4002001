"""gRPC under a flood: 200 Predicts kept in flight against a model served on the event loop.

    python benchmarks/grpc_flood.py [--seconds 10] [--in-flight 200]

Serves TF Serving's half_plus_two (../shared/tfs-testdata) and measures on loopback:
1. capacity: h2load, 16 connections back to back, OK answers a second;
2. the flood: h2load with --in-flight calls always outstanding (8 connections x N streams),
   far more than the server answers at once;
3. meanwhile a probe: one call every 20 ms from a separate client, each one's status and latency.
h2load can't read gRPC's status (a trailer), so it gives the counts (an OK answer carries DATA, a
refusal none) and the probe gives the latency of accepted and refused calls. Three servers in one
run: shipped defaults, --queue_delay_target_in_ms=5, and no admission control (TF Serving's).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from _common import each_configuration, free_port, grpc_frame, h2load, percentile as pct, stop, wait_ready

MODEL = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
PATH = "/tensorflow.serving.PredictionService/Predict"


def _request() -> predict_pb2.PredictRequest:
    from pyserving.codecs.tensor_proto import from_numpy

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(from_numpy(np.array([1.0, 2.0, 5.0], np.float32)))
    return request


def _probe(target: str, stop_at: float, results: list) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = _request()
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            try:
                stub.Predict(request, timeout=10)
                results.append(("OK", (time.monotonic() - sent) * 1000))
            except grpc.RpcError as e:
                results.append((e.code().name, (time.monotonic() - sent) * 1000))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - sent)))


def measure(flags: tuple[str, ...], args, work: Path) -> dict:
    port, rest = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}", f"--rest_api_port={rest}",
         "--model_name=m", f"--model_base_path={MODEL}", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = work / "request.bin"
    body.write_bytes(grpc_frame(_request().SerializeToString()))
    url = f"http://127.0.0.1:{port}{PATH}"
    try:
        wait_ready(f"http://127.0.0.1:{rest}/v1/models/m/ready", server)
        ok_size = _response_size(port)
        h2load(url, body, 4, 2, work / "warm.log", ok_size)
        capacity = h2load(url, body, 16, args.seconds / 2, work / "capacity.log", ok_size).rps
        probes: list = []
        prober = threading.Thread(target=_probe, args=(f"127.0.0.1:{port}", time.monotonic() + args.seconds, probes))
        prober.start()
        streams = max(1, args.in_flight // 8)
        cmd = ["h2load", "-c", "8", "-m", str(streams), "-D", str(args.seconds), "-d", str(body),
               "-H", "content-type:application/grpc", "-H", "te:trailers", url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60).stdout
        prober.join()
    finally:
        stop(server)
    done = int(re.search(r"requests: .*?(\d+) done", out).group(1))
    ok = min(done, int(re.search(r"\((\d+)\) data", out).group(1)) // ok_size)
    accepted = [ms for status, ms in probes if status == "OK"]
    refused = [ms for status, ms in probes if status != "OK"]
    return {"capacity_rps": capacity, "in_flight": 8 * streams, "answered_rps": done / args.seconds,
            "accepted_rps": ok / args.seconds, "refused_rps": (done - ok) / args.seconds,
            "probe_accepted": len(accepted), "probe_refused": len(refused),
            "accepted_p50_ms": pct(accepted, 0.5), "accepted_p99_ms": pct(accepted, 0.99),
            "refused_p50_ms": pct(refused, 0.5), "refused_p99_ms": pct(refused, 0.99)}


def _response_size(port: int) -> int:
    """The DATA bytes of one OK answer (length prefix included), as h2load counts them."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=10)
    return len(grpc_frame(response.SerializeToString()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is needed: apt-get install nghttp2-client")
    configurations = (("shipped defaults", ()),
                      ("--queue_delay_target_in_ms=5", ("--queue_delay_target_in_ms=5",)),
                      ("no admission control (TF Serving)", ("--max_pending_requests=0", "--queue_delay_target_in_ms=0")),
                      ("8 streams per connection", ("--grpc_channel_arguments=grpc.max_concurrent_streams=8",)))
    each_configuration(configurations, lambda flags, work: measure(flags, args, work), report, args.json)


def report(label: str, m: dict) -> None:
    print(f"\n{label}: capacity {m['capacity_rps']:.0f} OK/s; flood of {m['in_flight']} in flight: "
          f"{m['accepted_rps']:.0f} accepted/s, {m['refused_rps']:.0f} refused/s")
    print(f"  probe: {m['probe_accepted']} accepted (p50 {m['accepted_p50_ms']:.1f} ms, "
          f"p99 {m['accepted_p99_ms']:.1f} ms), {m['probe_refused']} refused (p50 {m['refused_p50_ms']:.1f} ms)")

if __name__ == "__main__":
    main()
