"""Batching at full speed: a heavy Keras model behind --enable_batching vs. the same model in-process.

    .venv/bin/python benchmarks/batching.py [--model mobilenet_v2|resnet50] [--seconds 20] [--rounds 3]
        [--clients 32] [--max-batch 32] [--timeout-us 50000] [--batch-threads 1] [--server-flags "..."]

Builds a Keras application with random weights (``weights=None``, 224x224x3), exports it with
``model.export`` as model/1 and serves it with the real ``tensorflow_model_server --enable_batching``.
h2load drives gRPC Predict with ``--clients`` connections, one call in flight on each, every call one
random float32 image (tensor_content): a warmup, then a timed run. Server images/s counts calls that
returned gRPC OK (h2load's DATA bytes / the OK answer's size, cross-checked with the server's
``request_count{status="OK"}``); the server's ``processed_batch_size`` histogram over the timed run
gives the batch sizes it ran. Then, the server stopped, the same SavedModel runs in this process at
those batch sizes, through a tf.function signature (on a tf.constant) and a TF1 Session callable (on a
numpy array), for the same time; the faster counts. Rounds repeat both phases (this machine's speed
drifts by 10% and more over minutes); the ratio is their median. Also in-process at batch 32, and
CPU use (cores busy) of every phase. Target: server >= 0.95 x in-process. Writes results/batching.json
(MobileNetV2) or results/batching_<model>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import requests
from _common import free_port, grpc_frame, h2load, stop_group  # benchmarks/ is on sys.path

BIN = Path(sys.executable).parent / "tensorflow_model_server"
RESULTS = Path(__file__).resolve().parent / "results"
BATCH = ":tensorflow:serving:batching_session:processed_batch_size"
FULL = 32  # in-process is also measured at this batch size
# 2 cores: one batch thread, since one batch already keeps both cores busy (TensorFlow's intra-op
# pool); a second would split the cores between two batches. 32 clients never queue more than 32
# rows: max_enqueued_batches 4 is headroom. The timeout: with exactly 32 clients a full batch only
# forms once every answer is back and every client has sent again, so the model would idle while the
# server takes in 32 x 600 KB (~60 ms); a shorter timeout (50 ms) lets the clients settle into two
# groups whose batches alternate, one group's round trip overlapping the other's run.
BATCHING = ("max_batch_size {{ value: {max} }} batch_timeout_micros {{ value: {timeout} }} "
            "num_batch_threads {{ value: {threads} }} max_enqueued_batches {{ value: 4 }}\n")
Metrics = list[tuple[str, dict[str, str], float]]
Call = Callable[[], object]


def export_model(name: str, version_dir: Path) -> tuple[str, str]:
    """Export the Keras application with random weights; return its (input, output) aliases."""
    import keras

    from pyserving.runtime.saved_model import read_meta_graph

    build = {"mobilenet_v2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50}[name]
    with contextlib.redirect_stdout(io.StringIO()):  # model.export prints the whole signature
        build(weights=None, input_shape=(224, 224, 3)).export(str(version_dir))
    signature = read_meta_graph(str(version_dir), ["serve"]).signature_def["serving_default"]
    (x,), (y,) = list(signature.inputs), list(signature.outputs)  # Keras 3: keras_tensor, output_0
    return x, y


def start_server(work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int, str]:
    (work / "batching.pbtxt").write_text(
        BATCHING.format(max=args.max_batch, timeout=args.timeout_us, threads=args.batch_threads))
    (work / "monitoring.pbtxt").write_text("prometheus_config { enable: true }\n")
    grpc_port, rest_port = free_port(), free_port()
    cmd = [str(BIN), f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=m",
           f"--model_base_path={work / 'model'}", "--enable_batching",
           f"--batching_parameters_file={work / 'batching.pbtxt'}",
           f"--monitoring_config_file={work / 'monitoring.pbtxt'}", *shlex.split(args.server_flags)]
    with open(work / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, grpc_port, f"http://127.0.0.1:{rest_port}"


def wait_available(rest: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            states = requests.get(f"{rest}/v1/models/m", timeout=2).json().get("model_version_status", [])
            if any(s.get("state") == "AVAILABLE" for s in states):
                return
        time.sleep(0.2)
    raise SystemExit("the model never became AVAILABLE")


def predict_request(x: str):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    image = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    request.inputs[x].CopyFrom(tf.make_tensor_proto(image))
    assert request.inputs[x].tensor_content, "the image should travel as tensor_content"
    return request


def check_answer(grpc_port: int, request, y: str) -> int:
    """One real gRPC call: the answer must be [1, 1000]; returns its framed size (h2load's OK unit)."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
    shape = [d.size for d in response.outputs[y].tensor_shape.dim]
    if shape != [1, 1000]:
        raise SystemExit(f"unexpected answer shape {shape}")
    return len(grpc_frame(response.SerializeToString()))


def scrape(rest: str) -> Metrics:
    """Every sample of the Prometheus page as (name, labels, value)."""
    samples = []
    for line in requests.get(rest + "/monitoring/prometheus/metrics", timeout=10).text.splitlines():
        if match := re.match(r"(\S+?)\{(.*)\} (\S+)$", line):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2)))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def value(samples: Metrics, name: str, **labels: str) -> float:
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def delta_histogram(before: Metrics, after: Metrics, name: str) -> dict:
    """A histogram between two scrapes: its non-empty buckets as [low, high, count], sum and count."""
    les = sorted({l["le"] for n, l, _ in after if n == name + "_bucket"}, key=float)
    cumulative = [value(after, name + "_bucket", le=le) - value(before, name + "_bucket", le=le) for le in les]
    highs = [float(le) for le in les]
    buckets = [[low, high, c - p] for low, high, c, p in zip([0.0] + highs, highs, cumulative, [0.0] + cumulative)
               if c - p]
    return {"buckets": buckets, "sum": value(after, name + "_sum") - value(before, name + "_sum"),
            "count": value(after, name + "_count") - value(before, name + "_count")}


def wait_idle(rest: str) -> Metrics:
    """Scrape once the calls h2load left in flight have finished."""
    deadline = time.monotonic() + 120
    while value(samples := scrape(rest), ":pyserving:requests_in_flight") and time.monotonic() < deadline:
        time.sleep(0.2)
    return samples


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_and_load(args: argparse.Namespace, work: Path, x: str, y: str) -> dict:
    """Phase 1: the server under h2load; its images/s, latency, batch sizes and CPU use."""
    proc, grpc_port, rest = start_server(work, args)
    try:
        wait_available(rest, proc)
        request = predict_request(x)
        (work / "body").write_bytes(grpc_frame(request.SerializeToString()))
        response_bytes = check_answer(grpc_port, request, y)
        url = f"http://127.0.0.1:{grpc_port}/tensorflow.serving.PredictionService/Predict"
        run = lambda s: h2load(url, work / "body", args.clients, s, work / "h2load.log", response_bytes)
        if run(min(args.seconds, 10)).ok == 0:  # warmup: batch sizes settle
            raise SystemExit(f"warmup: no call succeeded; see {work / 'server.log'}")
        before, cpu = wait_idle(rest), cpu_seconds(proc.pid)
        load = run(args.seconds)
        cpu = cpu_seconds(proc.pid) - cpu
        after = wait_idle(rest)
        ok = value(after, ":tensorflow:serving:request_count", status="OK") - \
            value(before, ":tensorflow:serving:request_count", status="OK")
        if not load.ok <= ok <= load.ok + args.clients:  # h2load drops the calls in flight at the end
            raise SystemExit(f"h2load counted {load.ok} OK calls but the server answered {ok:g} OK")
        batches = delta_histogram(before, after, BATCH)
        return {"images_per_s": load.rps, "ok": load.ok, "ok_by_metrics": ok, "failed": load.errors,
                "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "cores_busy": cpu / load.seconds,
                "mean_batch": batches["sum"] / batches["count"], "batches": batches}
    finally:
        stop_group(proc)


def replay_sizes(batches: dict, max_batch: int) -> list[int]:
    """The server's batch sizes, to replay in-process. Its buckets are powers of two, so within each
    bucket (low, high] the sizes are taken as low+1 + t*(high-low-1), one t for every bucket, chosen
    so that the rows add up to the histogram's sum (floor/ceil mixed), buckets interleaved."""
    spans = [(int(low) + 1, min(high, max_batch) - int(low) - 1, int(n)) for low, high, n in batches["buckets"]]
    width = sum(n * span for _, span, n in spans)
    t = min(max((batches["sum"] - sum(n * first for first, _, n in spans)) / width, 0.0), 1.0) if width else 0.0
    keyed = []
    for first, span, n in spans:
        size = first + t * span
        keyed += [((j + 0.5) / n, int(size) + int((j + 1) * (size % 1)) - int(j * (size % 1))) for j in range(n)]
    return [size for _, size in sorted(keyed)]


def callers(version_dir: Path, x: str, y: str) -> dict[str, Callable[[int], Call]]:
    """For each in-process way to call the model: batch size -> a call on a batch made beforehand."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    tf.get_logger().setLevel("ERROR")  # the TF1 loader's deprecation notice
    batch = lambda n: np.random.default_rng(n).random((n, 224, 224, 3), dtype=np.float32)
    function = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        sig = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir)).signature_def
    sig = sig["serving_default"]
    run = session._make_callable_from_options(config_pb2.CallableOptions(
        feed=[sig.inputs[x].name], fetch=[sig.outputs[y].name]))
    return {"tf.function": lambda n: (lambda c=tf.constant(batch(n)): function(**{x: c})),
            "session callable": lambda n: (lambda a=batch(n): run(a))}


def in_process(ways: dict[str, Callable[[int], Call]], sizes: list[int], seconds: float,
               rounds: int = 4) -> dict[str, dict]:
    """Each way's images/s and cores busy over ``seconds``, in rounds alternating the ways (A B A B)
    so that other load on the machine falls on both alike."""
    calls = {way: {n: make(n) for n in set(sizes)} for way, make in ways.items()}
    for call in (c for by_size in calls.values() for c in by_size.values()):
        call()  # first calls build kernels
    rows, wall, cpu = dict.fromkeys(ways, 0), dict.fromkeys(ways, 0.0), dict.fromkeys(ways, 0.0)
    for _ in range(rounds):
        for way, by_size in calls.items():
            start, start_cpu, i = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - start < seconds / rounds:
                by_size[sizes[i % len(sizes)]]()
                rows[way], i = rows[way] + sizes[i % len(sizes)], i + 1
            wall[way] += time.perf_counter() - start
            cpu[way] += time.process_time() - start_cpu
    return {way: {"images_per_s": rows[way] / wall[way], "cores_busy": cpu[way] / wall[way]} for way in ways}


def one_round(args: argparse.Namespace, work: Path, x: str, y: str, ways: dict) -> dict:
    """The server phase, then (server stopped) in-process at the batch sizes it ran; prints both."""
    server = serve_and_load(args, work, x, y)
    sizes = replay_sizes(server["batches"], args.max_batch)
    local = in_process(ways, sizes, args.seconds)
    best = max(local, key=lambda way: local[way]["images_per_s"])
    ratio = server["images_per_s"] / local[best]["images_per_s"]
    b = server["batches"]
    print(f"server:      {server['images_per_s']:7.1f} images/s, {server['cores_busy']:.2f} cores busy "
          f"({server['ok']} OK, {server['failed']} failed; p50 {server['p50_ms']:.0f} ms, p99 {server['p99_ms']:.0f} ms)")
    print(f"batches:     mean {server['mean_batch']:.2f} over {b['count']:g}; by bucket "
          f"{', '.join(f'({lo:g},{hi:g}]: {n:g}' for lo, hi, n in b['buckets'])}; replayed {sorted(set(sizes))}")
    for way, figures in local.items():
        print(f"in-process:  {figures['images_per_s']:7.1f} images/s, {figures['cores_busy']:.2f} cores busy "
              f"at the server's batch sizes, {way}")
    print(f"ratio:       {ratio:.3f} (server / in-process, {best})", flush=True)
    return {"server": server, "replayed_sizes": sizes, "in_process": local, "fastest": best, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mobilenet_v2", "resnet50"), default="mobilenet_v2")
    parser.add_argument("--seconds", type=float, default=20, help="of each timed phase")
    parser.add_argument("--rounds", type=int, default=3, help="server + in-process rounds (median ratio)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32, help="max_batch_size")
    parser.add_argument("--timeout-us", type=int, default=50_000, help="batch_timeout_micros")
    parser.add_argument("--batch-threads", type=int, default=1, help="num_batch_threads")
    parser.add_argument("--server-flags", default="", help="more tensorflow_model_server flags")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="batching-bench-"))
    x, y = export_model(args.model, work / "model" / "1")
    ways = callers(work / "model" / "1", x, y)  # loaded here, called only while no server runs
    print(f"{args.model}, {args.clients} clients, max_batch_size {args.max_batch}, batch_timeout_micros "
          f"{args.timeout_us}, num_batch_threads {args.batch_threads}, {args.seconds:g} s per phase")
    rounds = [one_round(args, work, x, y, ways) for _ in range(args.rounds)]
    best = rounds[-1]["fastest"]
    full = in_process({best: ways[best]}, [FULL], args.seconds)[best]
    print(f"in-process:  {full['images_per_s']:7.1f} images/s, {full['cores_busy']:.2f} cores busy "
          f"at batch {FULL}, {best}")
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(f"ratio:       {ratio:.3f} median of {[round(r['ratio'], 3) for r in rounds]} (target >= 0.95)")
    RESULTS.mkdir(exist_ok=True)
    name = "batching.json" if args.model == "mobilenet_v2" else f"batching_{args.model}.json"
    (RESULTS / name).write_text(json.dumps({
        "model": args.model, "clients": args.clients, "seconds": args.seconds, "max_batch": args.max_batch,
        "timeout_us": args.timeout_us, "batch_threads": args.batch_threads, "server_flags": args.server_flags,
        "rounds": rounds, f"in_process_batch{FULL}": full, "ratio": ratio}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
