"""One server process: its event loop, its signals, its exit code.

``run`` is what ``tensorflow_model_server`` runs (once per worker with --num_workers): it builds
the Server (server.py) on uvloop when installed, turns SIGTERM / SIGINT into a drain, and exits
without waiting for threads stuck inside TensorFlow, which can't be interrupted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from typing import NoReturn

from pyserving import __version__
from pyserving.config.model_config import ModelConfig
from pyserving.errors import ServingError
from pyserving.options import ServerOptions

from .heap import HeapTrimmer, return_big_buffers_to_os
from .server import Server
from .supervisor import WorkerSlot

log = logging.getLogger("pyserving.server")

# After the drain: seconds to wait for load / request threads busy inside TensorFlow.
THREAD_EXIT_SECONDS = 0.5


def _event_loop_factory():
    """uvloop when installed (a dependency on Linux): its transports and callbacks are C, which
    roughly halves what the event loop costs per REST request and per refused request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(options: ServerOptions, models: list[ModelConfig], slot: WorkerSlot | None = None) -> int:
    server: Server | None = None
    return_big_buffers_to_os()
    trimmer = HeapTrimmer()  # memory big requests leave in the heap, handed back (heap.py)
    trimmer.start()

    async def main() -> int:
        nonlocal server
        server = Server(options, models, slot)
        # The hundreds of thousands of objects TensorFlow's import made live for good: out of the
        # collector's sight, a request that builds many (a 224x224x3 JSON image: 50k lists) no
        # longer pays ~170 ms full collections over them. Models loaded later stay collectable.
        gc.freeze()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if server.exit_requested:
                if signum == signal.SIGINT:  # Ctrl-C twice: don't wait for the drain
                    log.warning("SIGINT received again: exiting now")
                    _exit_now(128 + signum)
                return  # a repeated SIGTERM (supervisors resend it) lets the drain finish
            log.info("Received %s", signal.Signals(signum).name)
            server.request_exit(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        log.info("pyserving %s (TensorFlow Serving compatible) starting", __version__)
        if options.model_config_file and options.model_base_path:  # TF Serving drops it without a word
            log.warning("--model_base_path=%s is ignored: --model_config_file names the models to serve",
                        options.model_base_path)
        code = await server.serve()
        # Drained: from here the process only exits. A repeated SIGTERM (supervisors and test
        # harnesses resend it) must not kill it mid-exit with the signal's default action.
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code

    try:
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            code = runner.run(main())
    except ServingError as e:  # a version label that can't be set, a port in use, ...
        log.error("%s", e.message)
        code = 1
    if server is not None and not server.threads_finished(THREAD_EXIT_SECONDS):
        log.warning("Exiting without waiting for a model load or model call still running in TensorFlow")
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit at once, without joining threads stuck in TensorFlow (they can't be interrupted)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
