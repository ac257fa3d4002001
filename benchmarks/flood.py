"""Load shedding under a flood: accepted requests keep their latency, the excess is refused at once.

    python benchmarks/flood.py [--seconds 15] [--clients 64] [--times 2]

Serves TF Serving's half_plus_two (../shared/tfs-testdata) over REST and measures on loopback,
with h2load (Debian package `nghttp2-client`; HTTP/1.1, per-request log) as the load generator:
1. unloaded latency: one client, one request at a time;
2. capacity: 8 clients back to back; answered requests a second;
3. the flood: 64 clients at a fixed rate adding up to --times x capacity (open loop: each client
   sends on its timer, answered or not), with each request's status and latency logged;
with admission control as shipped (--max_pending_requests and --queue_delay_target_in_ms
defaults), with a tight 5 ms queue-delay target, and without admission control (both 0: TF
Serving's behaviour), in the same run. With --clients far above what the server serves at once
(e.g. 512), the flood stands for clients with no bound on their concurrency.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _common import each_configuration, free_port, stop, wait_ready  # benchmarks/ is on sys.path when run as a script
from _common import percentile as pct

MODEL = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"
BODY = b'{"instances": [1.0, 2.0, 5.0]}'


def h2load(url: str, work: Path, *args: str) -> list[tuple[int, float]]:
    """(status, latency ms) of every request h2load sent."""
    log, body = work / "h2load.log", work / "body.json"
    body.write_bytes(BODY)
    log.unlink(missing_ok=True)
    subprocess.run(["h2load", "--h1", "-d", str(body), "-H", "content-type: application/json",
                    f"--log-file={log}", *args, url], capture_output=True, check=True)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    return [(int(status), int(micros) / 1000) for _, status, micros in rows]


def measure(flags: tuple[str, ...], args, work: Path) -> dict:
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={grpc_port}",
         f"--rest_api_port={port}", "--model_name=m", f"--model_base_path={MODEL}", *flags, *args.server_flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/models/m:predict"
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/m/ready", server)
        h2load(url, work, "-c1", "-n500")  # warm up
        unloaded = [ms for _, ms in h2load(url, work, "-c1", "-n3000")]
        capacity = sum(1 for st, _ in h2load(url, work, "-c8", f"-D{args.seconds}") if st == 200) / args.seconds
        rps = max(1, round(args.times * capacity / args.clients))
        flood = h2load(url, work, f"-c{args.clients}", f"--rps={rps}", f"-D{args.seconds}")
    finally:
        stop(server)
    accepted = [ms for st, ms in flood if st == 200]
    refused = [ms for st, ms in flood if st == 503]
    return {"unloaded_p50_ms": pct(unloaded, 0.5), "unloaded_p99_ms": pct(unloaded, 0.99),
            "capacity_rps": capacity, "offered_rps": rps * args.clients,
            "accepted": len(accepted), "refused": len(refused), "other": len(flood) - len(accepted) - len(refused),
            "accepted_p50_ms": pct(accepted, 0.5), "accepted_p99_ms": pct(accepted, 0.99),
            "refused_p50_ms": pct(refused, 0.5), "refused_p99_ms": pct(refused, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--times", type=float, default=2.0, help="offered load, as a multiple of capacity")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--server-flags", default="", help="more flags for both servers, space-separated")
    args = parser.parse_args()
    args.server_flags = args.server_flags.split()
    if not shutil.which("h2load"):
        sys.exit("h2load is needed: apt-get install nghttp2-client")
    configurations = (("shipped defaults (--queue_delay_target_in_ms=50)", ()),
                      ("tight: --queue_delay_target_in_ms=5", ("--queue_delay_target_in_ms=5",)),
                      ("no admission control", ("--max_pending_requests=0", "--queue_delay_target_in_ms=0")))
    each_configuration(configurations, lambda flags, work: measure(flags, args, work),
                       lambda label, m: report(label, m, args), args.json)


def report(label: str, m: dict, args) -> None:
    print(f"\n{label}")
    print(f"  unloaded: p50 {m['unloaded_p50_ms']:.2f} ms, p99 {m['unloaded_p99_ms']:.2f} ms; "
          f"capacity {m['capacity_rps']:.0f} answered/s")
    print(f"  flood at {m['offered_rps']} req/s ({m['offered_rps'] / m['capacity_rps']:.1f}x capacity, "
          f"{args.clients} clients): {m['accepted']} accepted, {m['refused']} refused (503), "
          f"{m['other']} other")
    print(f"  accepted: p50 {m['accepted_p50_ms']:.2f} ms, p99 {m['accepted_p99_ms']:.2f} ms "
          f"({m['accepted_p99_ms'] / m['unloaded_p99_ms']:.1f}x the unloaded p99); "
          f"refused: p50 {m['refused_p50_ms']:.2f} ms, p99 {m['refused_p99_ms']:.2f} ms")

if __name__ == "__main__":
    main()
