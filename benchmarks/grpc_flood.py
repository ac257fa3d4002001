"""gRPC under a flood: 200 Predicts kept in flight against a model served on the event loop.

    python benchmarks/grpc_flood.py [--seconds 10] [--in-flight 200] [--model half_plus_two|mnist]

Serves TF Serving's half_plus_two (../shared/tfs-testdata; served on the event loop) or the
tutorial's MNIST export (one image a call; served in worker threads) and measures on loopback:
1. capacity: h2load, 16 connections back to back, OK answers a second;
2. a closed-loop flood: h2load with --in-flight calls always outstanding (8 connections x N
   streams), far more than the server answers at once;
3. an open-loop flood: calls arriving at twice the capacity of step 1 (h2load --rps), whatever
   the answers, as independent clients do;
4. during each flood a probe: one call every 20 ms from a separate client (with a 10 s deadline,
   so never shed: it waits its turn as TF Serving's clients do), each one's status and latency.
h2load can't read gRPC's status (a trailer), so it gives the counts (an OK answer carries DATA, a
refusal none; its calls carry no deadline, so they are the ones shed) and the probe gives the
latency of a call that waits its turn. Four servers in one run: shipped defaults,
--queue_delay_target_in_ms=5, no admission control (TF Serving's), and HTTP/2's stream limit.
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
from _common import each_configuration, free_port, grpc_frame, h2load, stop, wait_ready
from _common import percentile as pct
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
PATH = "/tensorflow.serving.PredictionService/Predict"


def _request(model: str = "half_plus_two") -> predict_pb2.PredictRequest:
    from pyserving.codecs.tensor_proto import from_numpy

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    if model == "mnist":
        request.model_spec.signature_name = "predict_images"
        request.inputs["images"].CopyFrom(from_numpy(np.full((1, 784), 0.5, np.float32)))
    else:
        request.inputs["x"].CopyFrom(from_numpy(np.array([1.0, 2.0, 5.0], np.float32)))
    return request


def _model_path(model: str, work: Path) -> Path:
    if model == "half_plus_two":
        return MODEL
    from pyserving.mnist.data import load_mnist
    from pyserving.mnist.export import export_mnist

    root = work / "mnist"
    if not root.exists():
        export_mnist(str(root), 1, load_mnist(str(MODEL.parent.parent / "mnist")), training_iteration=200)
    return root


def _probe(target: str, stop_at: float, results: list, model: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = _request(model)
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
         "--model_name=m", f"--model_base_path={_model_path(args.model, work)}", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = work / "request.bin"
    body.write_bytes(grpc_frame(_request(args.model).SerializeToString()))
    url = f"http://127.0.0.1:{port}{PATH}"
    try:
        wait_ready(f"http://127.0.0.1:{rest}/v1/models/m/ready", server)
        ok_size = _response_size(port, args.model)
        h2load(url, body, 4, 2, work / "warm.log", ok_size)
        capacity = h2load(url, body, 16, args.seconds / 2, work / "capacity.log", ok_size).rps
        streams = max(1, args.in_flight // 8)
        closed = _flood(["-m", str(streams)], port, url, body, ok_size, args)
        # Open loop: calls arrive at twice capacity whatever the answers, up to 100 in flight a connection.
        rate = max(1, round(2 * capacity / 8))
        opened = _flood(["-m", "100", f"--rps={rate}"], port, url, body, ok_size, args)
    finally:
        stop(server)
    return {"capacity_rps": capacity, "closed_loop": dict(closed, in_flight=8 * streams),
            "open_loop": dict(opened, offered_rps=8 * rate)}


def _flood(shape: list[str], port: int, url: str, body: Path, ok_size: int, args) -> dict:
    """h2load on 8 connections shaped by ``shape``, a probe beside it: counts and latencies."""
    probes: list = []
    prober = threading.Thread(target=_probe, args=(f"127.0.0.1:{port}", time.monotonic() + args.seconds, probes, args.model))
    prober.start()
    cmd = ["h2load", "-c", "8", *shape, "-D", str(args.seconds), "-d", str(body),
           "-H", "content-type:application/grpc", "-H", "te:trailers", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60).stdout
    prober.join()
    done = int(re.search(r"requests: .*?(\d+) done", out).group(1))
    ok = min(done, int(re.search(r"\((\d+)\) data", out).group(1)) // ok_size)
    accepted = [ms for status, ms in probes if status == "OK"]
    refused = [ms for status, ms in probes if status != "OK"]
    return {"answered_rps": done / args.seconds, "accepted_rps": ok / args.seconds,
            "refused_rps": (done - ok) / args.seconds,
            "probe_accepted": len(accepted), "probe_refused": len(refused),
            "accepted_p50_ms": pct(accepted, 0.5), "accepted_p99_ms": pct(accepted, 0.99),
            "refused_p50_ms": pct(refused, 0.5), "refused_p99_ms": pct(refused, 0.99)}


def _response_size(port: int, model: str) -> int:
    """The DATA bytes of one OK answer (length prefix included), as h2load counts them."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(model), timeout=10)
    return len(grpc_frame(response.SerializeToString()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--model", choices=("half_plus_two", "mnist"), default="half_plus_two")
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
    print(f"\n{label}: capacity {m['capacity_rps']:.0f} OK/s")
    for name, f in (("closed loop", m["closed_loop"]), ("open loop", m["open_loop"])):
        load = (f"{f['in_flight']} in flight" if "in_flight" in f else f"{f['offered_rps']} calls/s offered")
        print(f"  {name}, {load}: {f['accepted_rps']:.0f} accepted/s, {f['refused_rps']:.0f} refused/s; "
              f"probe {f['probe_accepted']} accepted (p50 {f['accepted_p50_ms']:.1f} ms, "
              f"p99 {f['accepted_p99_ms']:.1f} ms), {f['probe_refused']} refused (p50 {f['refused_p50_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
