"""The model call's cost per request, before and after the Session runtime, in one run.

Before: TF2's object loader (``tf.saved_model.load(...).signatures[key]``), how pyserving ran
every SavedModel until the Session runtime. After: the version in its own Session, run through
a callable fed by tensor name, as TF Serving's SavedModelBundle does. Both are pyserving's own
servable classes, loaded with the server's Session settings, called the way a request calls
them (``servable.run``), alternating A B A B over several rounds on the same inputs.

    python benchmarks/model_call.py [--rounds 5] [--calls 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from pyserving.mnist.data import load_mnist
from pyserving.mnist.export import export_mnist
from pyserving.runtime.function import load_function
from pyserving.runtime.loader import RuntimeSettings, session_config
from pyserving.runtime.saved_model import read_meta_graph
from pyserving.runtime.session import load_session

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def per_call_us(servable, signature: str, inputs: dict, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        servable.run(signature, inputs)
    return (time.perf_counter() - start) / calls * 1e6


def cases(mnist_path: str) -> list[tuple[str, str, str, dict]]:
    images = load_mnist(str(SHARED / "mnist")).test_images
    return [
        ("half_plus_two, x [1,1]", str(SHARED / "tfs-testdata" / "saved_model_half_plus_two_cpu" / "00000123"),
         "serving_default", {"x": np.array([[1.0]], np.float32)}),
        ("MNIST, 1 image", mnist_path, "predict_images", {"images": images[:1]}),
        ("MNIST, 100 images", mnist_path, "predict_images", {"images": images[:100]}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="model-call-")
    mnist = export_mnist(os.path.join(work, "mnist"), 1, load_mnist(str(SHARED / "mnist")),
                         training_iteration=100).path
    config = session_config(RuntimeSettings())
    results = []
    print(f"{'model':<24}{'before (tf.function) µs':>26}{'after (Session) µs':>22}{'ratio':>8}")
    for name, path, signature, inputs in cases(mnist):
        before = load_function(path, ["serve"], read_meta_graph(path, ["serve"]).signature_def)
        after = load_session(path, ["serve"], config)
        for servable in (before, after):  # first calls build kernels and callables
            per_call_us(servable, signature, inputs, 50)
        a, b = [], []
        for _ in range(args.rounds):
            a.append(per_call_us(before, signature, inputs, args.calls))
            b.append(per_call_us(after, signature, inputs, args.calls))
        ma, mb = statistics.median(a), statistics.median(b)
        results.append({"model": name, "before_us": a, "after_us": b, "median_before_us": ma,
                        "median_after_us": mb, "ratio": ma / mb})
        print(f"{name:<24}{ma:>20.1f} ({min(a):.0f}-{max(a):.0f}){mb:>14.1f} ({min(b):.0f}-{max(b):.0f})"
              f"{ma / mb:>7.1f}x")
        before.close()
        after.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "calls": args.calls,
                                               "results": results}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
