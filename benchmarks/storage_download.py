"""How fast a version is copied from object storage into the local cache.

    python benchmarks/storage_download.py [--mib 256] [--files 4]

Starts moto's S3 server on loopback (the test suite's S3), uploads a version folder of
``--files`` files adding up to ``--mib`` MiB plus a saved_model.pb, and times pyserving's own
copy (core/storage.py: VersionCache.fetch, what a load does first) three times. Loopback and a
Python S3 server: the figure bounds the client side, not a real store's network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _common import free_port  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    from pyserving.storage.files import VersionCache

    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bench")
        chunk = os.urandom(args.mib * 2**20 // args.files)
        for i in range(args.files):
            fs.pipe_file(f"bench/m/1/variables/part-{i}", chunk)
        fs.pipe_file("bench/m/1/saved_model.pb", b"\0" * 1024)
        seconds = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as cache_dir:
                cache = VersionCache(cache_dir)
                start = time.perf_counter()
                cache.fetch("s3://bench/m/1")
                seconds.append(time.perf_counter() - start)
    finally:
        server.stop()
    rates = [args.mib / s for s in seconds]
    print(f"copied {args.mib} MiB in {args.files} files from S3 (moto, loopback): "
          f"median {statistics.median(rates):.0f} MiB/s (runs: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
