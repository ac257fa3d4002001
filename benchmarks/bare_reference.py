"""The bare reference server: the least Python can do to serve TF Serving's Predict.

Usage: python benchmarks/bare_reference.py --grpc-port P --rest-port R --model DIR [--processes N]
                                          [--rest-server aiohttp|httptools]

Parse the request, run the model through a TF1 Session callable, build the response;
nothing else (no model manager, no batching, no metrics, no validation beyond what the
happy path needs). gRPC: a sync ``grpc.server`` with 8 threads serving a generic handler
for /tensorflow.serving.PredictionService/Predict. REST: an aiohttp handler for
POST /v1/models/<name>:predict taking ``{"instances": [...]}`` and answering
``{"predictions": [...]}``; or, with ``--rest-server httptools``, the same answer from an asyncio
protocol on uvloop parsing with httptools (llhttp), the least a native-core Python server can
do (no routing, no limits, no timeouts). ``--processes`` (default: one per core) are forked before
TensorFlow or gRPC are imported and share both ports through SO_REUSEPORT. The parent
prints ``ready`` once every process serves, and forwards SIGTERM/SIGINT to them.
``--model`` is a version folder or a base path (its highest numbered version is served).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

NAME = "half_plus_two"
SIGNATURE = "serving_default"
GRPC_SERVICE, GRPC_METHOD = "tensorflow.serving.PredictionService", "Predict"


def version_dir(model: str) -> Path:
    """The folder itself if it holds a saved_model.pb, else its highest numbered subfolder."""
    path = Path(model)
    if (path / "saved_model.pb").exists():
        return path
    return max((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def load_model(path: Path) -> tuple[Callable[[Any], list], str, str]:
    """A Session callable feeding serving_default's input and fetching its output, and their aliases."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    signature = meta_graph.signature_def[SIGNATURE]
    (x_alias, x_info), = signature.inputs.items()
    (y_alias, y_info), = signature.outputs.items()
    # session.make_callable(fetches, feed_list) falls back to session.run (with its Python-side
    # shape checks) when given feeds; this is the feed/fetch callable it would build otherwise.
    options = config_pb2.CallableOptions(feed=[x_info.name], fetch=[y_info.name])
    return session._make_callable_from_options(options), x_alias, y_alias


def grpc_server(port: int, run: Callable, x_alias: str, y_alias: str, version: int) -> Any:
    """A started sync gRPC server answering Predict."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import numpy as np
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    def predict(request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        tensor = request.inputs[x_alias]
        shape = [d.size for d in tensor.tensor_shape.dim]
        x = (np.frombuffer(tensor.tensor_content, np.float32) if tensor.tensor_content
             else np.array(tensor.float_val, np.float32)).reshape(shape)
        y = run(x)[0]
        response = predict_pb2.PredictResponse()
        out = response.outputs[y_alias]
        out.dtype = types_pb2.DT_FLOAT
        for size in y.shape:
            out.tensor_shape.dim.add(size=size)
        out.float_val.extend(y.ravel().tolist())
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name or SIGNATURE
        return response

    handler = grpc.method_handlers_generic_handler(GRPC_SERVICE, {GRPC_METHOD: grpc.unary_unary_rpc_method_handler(
        predict, request_deserializer=predict_pb2.PredictRequest.FromString,
        response_serializer=predict_pb2.PredictResponse.SerializeToString)})
    server = grpc.server(ThreadPoolExecutor(8), handlers=[handler], options=[("grpc.so_reuseport", 1)])
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"gRPC could not bind port {port}")
    server.start()
    return server


def rest_app(run: Callable) -> Any:
    """An aiohttp app answering TF Serving's row-format REST Predict."""
    import numpy as np
    from aiohttp import web
    try:
        from orjson import dumps, loads
    except ImportError:
        import json
        loads, dumps = json.loads, lambda o: json.dumps(o, separators=(",", ":")).encode()  # type: ignore

    async def predict(request: web.Request) -> web.Response:
        x = np.asarray(loads(await request.read())["instances"], np.float32)
        body = dumps({"predictions": run(x)[0].tolist()})
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post(f"/v1/models/{NAME}:predict", predict)
    return app


def rest_protocol(run: Callable) -> Callable[[], Any]:
    """A protocol factory answering the same REST Predict on httptools, keep-alive, in order."""
    import asyncio

    import httptools
    import numpy as np
    from orjson import dumps, loads

    class Predict(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport, self.parser, self.body = transport, httptools.HttpRequestParser(self), []

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            x = np.asarray(loads(b"".join(self.body))["instances"], np.float32)
            self.body = []
            out = dumps({"predictions": run(x)[0].tolist()})
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(out), out))

    return Predict


def serve(args: argparse.Namespace, ready_fd: int) -> None:
    """One serving process: load, start both servers, tell the parent, serve until signalled."""
    import asyncio

    from aiohttp import web

    path = version_dir(args.model)
    run, x_alias, y_alias = load_model(path)
    grpc = grpc_server(args.grpc_port, run, x_alias, y_alias, int(path.name) if path.name.isdigit() else 0)

    async def main() -> None:
        if args.rest_server == "httptools":
            listener = await asyncio.get_running_loop().create_server(
                rest_protocol(run), "127.0.0.1", args.rest_port, reuse_port=True)
        else:
            runner = web.AppRunner(rest_app(run), access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", args.rest_port, reuse_port=True).start()
        os.write(ready_fd, b"1")
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stopped.set)
        await stopped.wait()
        if args.rest_server == "httptools":
            listener.close()
        else:
            await runner.cleanup()

    if args.rest_server == "httptools":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    grpc.stop(0)


def relay(signum: int, children: list[int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def supervise(args: argparse.Namespace) -> int:
    """Fork the serving processes, print ``ready`` when all serve, relay signals, reap them."""
    read_fd, write_fd = os.pipe()
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                serve(args, write_fd)
                os._exit(0)
            except BaseException:
                import traceback
                traceback.print_exc()
                os._exit(1)
        children.append(pid)
    os.close(write_fd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: relay(signum, children))
    started = 0
    while started < args.processes and (chunk := os.read(read_fd, 64)):
        started += len(chunk)
    print("ready" if started == args.processes else "failed", flush=True)
    code = 0
    for pid in children:
        code = code or os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--rest-port", type=int, required=True)
    parser.add_argument("--model", required=True, help="SavedModel version folder or base path")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rest-server", choices=("aiohttp", "httptools"), default="aiohttp")
    sys.exit(supervise(parser.parse_args()))


if __name__ == "__main__":
    main()
