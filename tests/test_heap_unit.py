"""server.heap.HeapTrimmer: memory freed in glibc's heap goes back to the system once the work is done.
Each arm runs in a fresh interpreter, so its heap holds only what the test put there."""

from __future__ import annotations

import subprocess
import sys

import pytest

PRELUDE = """
import ctypes, os, sys, time
from pyserving.server.heap import MMAP_THRESHOLD_BYTES, HeapTrimmer, return_big_buffers_to_os


def resident_bytes():
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
"""

SCRIPT = PRELUDE + """
return_big_buffers_to_os()
trimmer = HeapTrimmer(check_seconds=0.05)
if sys.argv[1] == "on":
    trimmer.start()
chunks = [libc.malloc(1000) for _ in range(250_000)]  # ~250 MB of small mallocs, touched below
for chunk in chunks:
    ctypes.memset(chunk, 1, 1000)
peak = resident_bytes()
for i, chunk in enumerate(chunks):
    if i % 1000 and i != len(chunks) - 1:  # a few stay, the last one too: the heap's top can't shrink
        libc.free(chunk)
deadline = time.monotonic() + (10 if sys.argv[1] == "on" else 0.5)  # off: a look, no wait
while time.monotonic() < deadline and resident_bytes() > peak // 2:
    time.sleep(0.05)
print(peak, resident_bytes(), trimmer.trims)
"""


@pytest.mark.parametrize("trimmer", ["on", "off"])
def test_freed_heap_memory_goes_back_only_with_the_trimmer(trimmer):
    out = subprocess.run([sys.executable, "-c", SCRIPT, trimmer], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    peak, after, trims = map(int, out.stdout.split())
    assert peak > 200 << 20
    if trimmer == "on":
        assert after < peak // 2 and trims >= 1
    else:  # glibc alone keeps the freed pages: what the trimmer is for
        assert after > peak * 0.9 and trims == 0


BIG_BUFFERS = PRELUDE + """
if sys.argv[1] == "on":
    return_big_buffers_to_os()
kept = []
for _ in range(3):  # glibc alone: the first free raises its threshold, the next buffers stay
    before = resident_bytes()
    chunk = libc.malloc(MMAP_THRESHOLD_BYTES)
    ctypes.memset(chunk, 1, MMAP_THRESHOLD_BYTES)
    libc.free(chunk)
    kept.append(resident_bytes() - before)
print(*kept)
"""


@pytest.mark.parametrize("threshold", ["on", "off"])
def test_a_freed_16_mib_buffer_leaves_the_process_every_time(threshold):
    out = subprocess.run([sys.executable, "-c", BIG_BUFFERS, threshold], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kept = list(map(int, out.stdout.split()))
    if threshold == "on":
        assert max(kept) < 2 << 20, kept
    else:
        assert max(kept[1:]) > 8 << 20, kept
