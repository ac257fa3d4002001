"""Server: wires the source, manager, data plane, gRPC and REST; start, serve, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from tensorflow_serving.config import model_server_config_pb2

from pyserving import __version__
from pyserving.config.model_config import (
    ConfigError,
    ModelConfig,
    confine_request_logs,
    models_from_proto,
    read_model_config_file,
)
from pyserving.core.manager import ModelManager, RetryPolicy
from pyserving.core.residency import Residency
from pyserving.core.server_core import ServerCore
from pyserving.core.source import FileSystemSource
from pyserving.errors import ServingError
from pyserving.observability.monitoring import Metrics, PrometheusSettings
from pyserving.observability.request_log import RequestLogger
from pyserving.observability.tracing import Tracing, TracingSettings
from pyserving.options import ServerOptions
from pyserving.protocols.control_plane import ControlPlane, token_file_permissions_warning
from pyserving.protocols.grpc.gate import GrpcGate, core_pending_limit
from pyserving.protocols.grpc.health import HealthReporter
from pyserving.protocols.grpc.profiler import ProfilerServicer
from pyserving.protocols.grpc.service import create_server, parse_channel_arguments
from pyserving.protocols.rest import listener as rest_listener
from pyserving.protocols.rest.gate import RestGate
from pyserving.protocols.rest.service import RestService
from pyserving.protocols.rest.status_page import StatusPage
from pyserving.runtime.profiler import Profiler
from pyserving.serving.admission import Admission, default_limit
from pyserving.serving.dataplane import DataPlane
from pyserving.serving.inline import InlinePolicy
from pyserving.storage.files import VersionCache, folder_bytes

from .loading import VersionLoader
from .peers import Peers, PeerService, merge_status
from .repository import ModelRepository
from .supervisor import WorkerSlot
from .tls import TlsConfig

log = logging.getLogger("pyserving.server")

# Seconds in-flight requests get to finish on SIGTERM before the process exits.
DRAIN_SECONDS = 10.0
# A SIGTERM while starting: seconds the cancelled start-up gets to clean up before the exit.
ABORT_SECONDS = 1.0


class Server:
    def __init__(self, options: ServerOptions, models: list[ModelConfig], slot: WorkerSlot | None = None) -> None:
        self.options = options
        self._models = models
        self._slot = slot  # --num_workers: this process's place among the workers
        self._peers = Peers(slot) if slot else None
        self._peer_server: grpc.aio.Server | None = None
        self._should_exit = asyncio.Event()
        self.exit_signal: int | None = None  # the signal that asked to exit
        cpus = os.cpu_count() or 2
        # With batching, request threads mostly wait for their batch: allow many more.
        default_workers = max(64, 8 * cpus) if options.enable_batching else max(8, 4 * cpus)
        workers = options.grpc_max_threads or default_workers
        self._request_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="request")
        pending = options.max_pending_requests
        # Batches are a queue by design, bounded by the batching parameters: no standing-queue rule.
        target = 0 if options.enable_batching else options.queue_delay_target_in_ms / 1000
        self.admission = Admission(default_limit(workers) if pending < 0 else pending, target,
                                   deadlines=options.queue_delay_target_applies_to_deadlines)
        self._load_pool = ThreadPoolExecutor(
            max_workers=options.num_load_threads or 2, thread_name_prefix="load")
        self.metrics = Metrics(slot.index if slot else 0)
        self._rest_gate = (RestGate(Admission(0, target), self.metrics, cors=options.rest_api_enable_cors_support)
                           if target else None)
        core_limit = core_pending_limit(dict(parse_channel_arguments(options.grpc_channel_arguments)))
        self._grpc_gate = (GrpcGate(target=target, metrics=self.metrics, limit=core_limit,
                                    deadlines=options.queue_delay_target_applies_to_deadlines)
                           if target else None)
        self._prometheus = (PrometheusSettings.from_file(options.monitoring_config_file)
                            if options.monitoring_config_file else None)
        self._cache = VersionCache(options.model_cache_dir)  # copies of object-storage versions
        self.manager = ModelManager(
            loader=VersionLoader(options, self._cache, self.metrics).load,
            executor=self._load_pool,
            retry=RetryPolicy(options.max_num_load_retries,
                              options.load_retry_interval_micros / 1e6),
            allow_labels_for_unavailable=options.allow_version_labels_for_unavailable_models,
            max_concurrent_loads=options.num_load_threads or 2,
            residency=residency(options), on_residency=self.metrics.record_residency)
        self.source = FileSystemSource(self.manager, options.file_system_poll_wait_seconds, self._cache)
        self.request_log = RequestLogger(options.tags, options.request_log_max_file_bytes,
                                         on_record=self.metrics.record_request_log,
                                         max_total_bytes=options.request_log_max_total_bytes)
        self.control = ControlPlane.from_options(options.admin_token_file, options.enable_config_reload_rpc,
                                             options.rest_api_enable_model_control)
        self.core = ServerCore(self.manager, self.source, on_models=self.request_log.configure)
        self.metrics.track_versions(
            lambda: [(v.model, v.version, v.state.name) for v in self.manager.snapshot()])
        self.dataplane = DataPlane(self.manager, self._request_pool,
                                   strict_method_names=options.enable_signature_method_name_check,
                                   metrics=self.metrics, admission=self.admission, inline=InlinePolicy(),
                                   peers=self._peers, access_log=options.access_log,
                                   request_logger=self.request_log, tracing=_tracing(slot))
        self.repository = ModelRepository(self.core, self.dataplane.listed_status, self._peers)
        self._grpc: grpc.aio.Server | None = None
        self._rest: rest_listener.RestListener | None = None
        self._background: list[asyncio.Task] = []  # pollers, cancelled at stop
        # Validated already by checks.check_options; read again here for the material.
        self._tls = TlsConfig.from_file(options.ssl_config_file) if options.ssl_config_file else None
        self._health = HealthReporter(self.manager) if options.enable_grpc_healthcheck_service else None

    async def start(self) -> None:
        self._check_ports()  # a port in use fails now, not after minutes of loading models
        await self.start_core()
        await self._start_listeners()

    def _check_ports(self) -> None:
        """Bind each port once and let go: TF Serving opens its ports only after the initial loads
        (so do we), but a port someone else holds must not cost the wait for them first."""
        o = self.options
        for what, address, port in (("gRPC", o.grpc_bind_address, o.port),
                                    ("REST", o.rest_api_bind_address, o.rest_api_port)):
            if not port:
                continue
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._slot is not None:  # sibling workers share the ports (SO_REUSEPORT)
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    probe.bind((address, port))
                except OSError as e:
                    raise OSError(e.errno, f"the {what} port {_host_port(address, port)} can't be "
                                           f"bound: {e.strerror}") from None

    async def start_core(self) -> None:
        """Initial versions loaded, base paths (and config file) polled; no port opened. All a Ray
        Serve replica runs (ray_serve.py: Ray's proxies are its listeners)."""
        o = self.options
        # A worker started after a reload (a restart) serves the reloaded config, not the flags'.
        reloaded = self._peers.reloaded_config() if self._peers else None
        # Like TF Serving, open the ports once the initial versions have loaded (or failed).
        if reloaded is None:
            await self.core.apply(self._models, initial=True)  # a model that can't load ends the start
        else:
            try:
                await self.core.apply(self._models_of(reloaded), initial=True)
            except ServingError as e:  # the siblings serve this config with the same failure
                log.error("The reloaded model config, applied by this restarted worker: %s", e.message)
        if self._peers:
            await self._start_peer_server()
            await self._peers.catch_up(reloaded, self._apply_serialized, self.repository.unload_all)
        self._background.append(asyncio.create_task(self.source.run()))
        if o.model_config_file and o.model_config_file_poll_wait_seconds > 0:
            self._background.append(asyncio.create_task(self.core.watch_config_file(
                lambda: read_model_config_file(o.model_config_file, o.request_log_dir),
                o.model_config_file_poll_wait_seconds)))

    async def _start_listeners(self) -> None:
        o = self.options
        await self._start_grpc()
        if o.rest_api_port:
            await self._start_rest()
        elif self._prometheus and self._prometheus.enabled:
            log.warning("Prometheus metrics are served on the REST port: set --rest_api_port to scrape them")
        if self._health:
            await self._health.start()
            self._background.append(asyncio.create_task(self._health.run()))

    async def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: with --num_workers, applied by every worker before it answers."""
        if self._peers is None:
            await self.core.apply(self._models_of(config))
        else:
            await self._peers.reload(config.SerializeToString(), self._apply_serialized, self.repository.unloaded)

    async def _apply_serialized(self, config: bytes) -> None:
        await self.core.apply(self._models_of(config))

    def _models_of(self, config: bytes | model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
        """A reload's models, checked as a config file's are (request logs confined)."""
        if isinstance(config, bytes):
            config = model_server_config_pb2.ModelServerConfig.FromString(config)
        try:
            return confine_request_logs(models_from_proto(config), self.options.request_log_dir)
        except ConfigError as e:
            raise ServingError.invalid_argument(str(e)) from None

    async def _exposition(self) -> bytes:
        if self._peers is None:
            return self.metrics.exposition()
        families, versions = await self._peers.metrics()
        merged = merge_status([self.manager.snapshot(), *versions])
        return self.metrics.exposition(families, [(v.model, v.version, v.state.name) for v in merged])

    async def _metric_views(self) -> list:
        """Each worker's metric families, this one's first (for the status page)."""
        if self._peers is None:
            return [self.metrics.families()]
        others, _versions = await self._peers.metrics()
        return [self.metrics.families(), *others]

    async def _start_peer_server(self) -> None:
        assert self._slot is not None and self._peers is not None
        service = PeerService(self.dataplane.local_status, self._apply_serialized,
                              lambda: (self.metrics.families(), self.manager.snapshot()), self.repository.apply)
        self._peer_server = grpc.aio.server()
        self._peer_server.add_generic_rpc_handlers((service.handler(),))
        self._peer_server.add_insecure_port(f"unix:{self._slot.socket_path(self._slot.index)}")
        await self._peer_server.start()

    async def _start_grpc(self) -> None:
        o = self.options
        self._grpc = create_server(self.dataplane, o.grpc_channel_arguments, o.grpc_max_message_bytes,
                                   o.enable_serialization_as_tensor_content,
                                   reuse_port=self._slot is not None, reload_config=self.reload,
                                   profiler=ProfilerServicer(Profiler(), o.profiler_log_dir) if o.enable_profiler else None,
                                   control=self.control, gate=self._grpc_gate,
                                   repository=self.repository)
        if self._health:
            self._health.register(self._grpc)
        address = _host_port(o.grpc_bind_address, o.port)
        if o.port and self._tls:
            self._grpc.add_secure_port(address, self._tls.grpc_credentials())
            log.info("Running gRPC ModelServer at %s (TLS%s) ...", address,
                     ", client certificates required" if self._tls.client_verify else "")
        elif o.port:
            self._grpc.add_insecure_port(address)
            log.info("Running gRPC ModelServer at %s ...", address)
        if o.grpc_socket_path and (self._slot is None or self._slot.index == 0):
            # A UNIX socket can't be shared: with --num_workers, the first worker serves it.
            # Local only: stays plaintext with or without --ssl_config_file, as in TF Serving.
            self._grpc.add_insecure_port(f"unix:{o.grpc_socket_path}")
            log.info("Running gRPC ModelServer at UNIX socket %s ...", o.grpc_socket_path)
        await self._grpc.start()
        if self._grpc_gate is not None and o.port:
            self._grpc_gate.start(o.port)
        for line in self.control.describe(o.grpc_bind_address if o.port else None,
                                          o.rest_api_bind_address if o.rest_api_port else None,
                                          o.grpc_socket_path):
            log.info("%s", line)
        warning = token_file_permissions_warning(o.admin_token_file) if o.admin_token_file else None
        if warning:
            log.warning("%s", warning)

    async def _start_rest(self) -> None:
        o = self.options
        metrics_route = None
        if self._prometheus and self._prometheus.enabled:
            metrics_route = (self._prometheus.path, self._exposition)
        service = RestService(self.dataplane, o.rest_api_timeout_in_ms, o.rest_api_enable_cors_support,
                              o.rest_api_max_request_bytes, metrics_route,
                              StatusPage(self.dataplane, self._metric_views),
                              max_decompressed_bytes=o.rest_api_max_decompressed_bytes,
                              repository=self.repository, control=self.control)
        ssl_context = self._tls.ssl_context() if self._tls else None
        body_ms = o.rest_api_timeout_in_ms if o.rest_api_body_timeout_in_ms < 0 else o.rest_api_body_timeout_in_ms
        settings = rest_listener.RestSettings(o.rest_api_bind_address, o.rest_api_port, o.rest_api_http_core,
                                o.rest_api_max_request_bytes, max(o.rest_api_header_timeout_in_ms, 0) / 1000,
                                max(body_ms, 0) / 1000, max(o.rest_api_idle_timeout_in_ms, 0) / 1000,
                                o.rest_api_enable_cors_support, reuse_port=self._slot is not None)
        self._rest = await rest_listener.start(service, settings, ssl_context, self._rest_gate)
        if self._rest_gate is not None:
            self._rest_gate.lag.start()
        # TF Serving's own line on its default address (scripts wait for it).
        shown = "localhost" if o.rest_api_bind_address == "0.0.0.0" else o.rest_api_bind_address
        log.info("Exporting HTTP%s/REST API at:%s ...", "S" if ssl_context else "",
                 _host_port(shown, o.rest_api_port))

    def request_exit(self, signum: int = signal.SIGTERM) -> None:
        if self.exit_signal is None:
            self.exit_signal = signum
        self._should_exit.set()

    @property
    def exit_requested(self) -> bool:
        return self._should_exit.is_set()

    async def serve(self) -> int:
        """Start, serve until request_exit(), drain; returns the exit code.

        0 after a drain. A request to exit is honoured while starting too (the initial loads and
        their retry waits): the start is cancelled, and the code is 128 + the signal, as the
        server never served."""
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(self._should_exit.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            return await self._abort_start(starting)
        stopping.cancel()
        try:
            starting.result()
        except (OSError, RuntimeError) as e:  # a port in use, a bad socket path, ...
            await self.stop(grace=0)
            raise ServingError.unavailable(f"Could not start serving: {e}") from None
        await self._should_exit.wait()
        await self.stop()
        return 0

    async def _abort_start(self, starting: asyncio.Task) -> int:
        signum = self.exit_signal or signal.SIGTERM
        log.warning("%s received while starting (the initial versions had not all loaded): "
                    "exiting without serving", signal.Signals(signum).name)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        try:
            # Cancels the loads' retry waits; a load inside TensorFlow runs on in its thread.
            await asyncio.wait_for(self.stop(grace=0), ABORT_SECONDS)
        except asyncio.TimeoutError:
            log.warning("Shutdown took over %.0f s: exiting anyway", ABORT_SECONDS)
        return 128 + signum

    def threads_finished(self, timeout: float) -> bool:
        """After stop(): whether the load and request threads end within ``timeout`` seconds.

        TensorFlow can't be interrupted mid-load or mid-call; the caller may exit without them."""
        done = threading.Event()

        def join() -> None:
            for pool in (self._load_pool, self._request_pool):
                pool.shutdown(wait=True)
            done.set()

        threading.Thread(target=join, name="join-pools", daemon=True).start()
        return done.wait(timeout)

    async def stop(self, grace: float = DRAIN_SECONDS) -> None:
        log.info("Shutting down: draining in-flight requests")
        for task in self._background:
            task.cancel()
        if self._health:
            await self._health.shutdown()
        stops = []
        for grpc_server in (self._grpc, self._peer_server):
            if grpc_server:
                stops.append(grpc_server.stop(grace))
        if self._rest:
            stops.append(self._rest.stop(grace))
        if self._rest_gate is not None:
            self._rest_gate.lag.stop()
        if self._grpc_gate is not None:
            self._grpc_gate.stop()
        await asyncio.gather(*stops, return_exceptions=True)
        await asyncio.to_thread(self.request_log.close)  # what was sampled, flushed to its files
        await self.manager.stop()
        if self.dataplane.tracing is not None:  # the spans of the drained requests, exported
            await asyncio.to_thread(self.dataplane.tracing.shutdown)
        self._request_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._cache.close()


def _tracing(slot: WorkerSlot | None) -> Tracing | None:
    """This process's tracer, if the environment turns tracing on (checked at start-up: checks.py)."""
    settings = TracingSettings.from_environment(os.environ)
    return Tracing(settings, slot.index if slot else None, __version__) if settings else None


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def residency(o: ServerOptions) -> Residency | None:
    """--max_loaded_models, --max_loaded_model_memory_mb: each worker keeps the budgets for itself
    (each loads its own copies: N workers take N times the memory)."""
    if o.max_loaded_models <= 0 and o.max_loaded_model_memory_mb <= 0:
        return None
    preload = frozenset(filter(None, (n.strip() for n in o.preload_models.split(","))))
    return Residency(max(0, o.max_loaded_models), max(0, o.max_loaded_model_memory_mb) << 20, preload,
                     measure=folder_bytes)
