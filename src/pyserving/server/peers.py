"""Peers: what keeps the --num_workers processes one server.

Every worker serves a small private gRPC service on its own UNIX socket in the supervisor's run
folder, and calls its siblings' when an answer must speak for the whole server:
- a config reload (HandleReloadConfigRequest) is applied by every worker before it is answered,
  one reload at a time (a file lock), and kept on disk for a worker that starts later;
- model status is the least advanced state any worker has, so a version reported AVAILABLE is
  available whichever worker a client's next connection lands on;
- the Prometheus page adds up every worker's counts.
A sibling that does not answer (still loading its models, or restarting) takes no connections
on the public ports either, so it is left out rather than waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from typing import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from pyserving.core.states import VersionState, VersionStatus
from pyserving.errors import Code, ServingError
from pyserving.observability.monitoring import Family
from pyserving.serving.dataplane import LocalStatus

from .supervisor import WorkerSlot

log = logging.getLogger("pyserving.peers")

SERVICE = "pyserving.Peer"
# Status and metrics: a sibling slower than this is left out of the answer.
CALL_SECONDS = 5.0
LOCK_POLL_SECONDS = 0.02

ApplyConfig = Callable[[bytes], Awaitable[None]]  # a serialized ModelServerConfig
MetricsView = Callable[[], tuple[list[Family], list[VersionStatus]]]


# Reload errors that mean the config was refused before anything changed.
_REFUSED = (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.UNIMPLEMENTED, Code.UNAUTHENTICATED)


class PeerService:
    """This worker's side: answers its siblings from local state only."""

    def __init__(self, status: LocalStatus, apply_config: ApplyConfig, metrics: MetricsView,
                 apply_repository: ApplyConfig) -> None:
        self._status = status
        self._apply_config = apply_config
        self._metrics = metrics
        self._apply_repository = apply_repository

    def handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes in and out (no serializers): JSON for status, metrics and repository changes,
        # the config proto as is.
        methods = {"Status": self._on_status, "Reload": self._on_reload, "Metrics": self._on_metrics,
                   "Repository": self._on_repository}
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()})

    async def _on_status(self, request: bytes, _context) -> bytes:
        model, version, label = json.loads(request)
        try:
            return _dump({"versions": [_encode(v) for v in self._status(model, version, label)]})
        except ServingError as e:
            return _dump({"error": [int(e.code), e.message]})

    async def _on_reload(self, request: bytes, _context) -> bytes:
        return await _applied(self._apply_config, request)

    async def _on_repository(self, request: bytes, _context) -> bytes:
        return await _applied(self._apply_repository, request)

    async def _on_metrics(self, _request: bytes, _context) -> bytes:
        families, versions = self._metrics()
        return _dump({"families": families, "versions": [_encode(v) for v in versions]})


class Peers:
    """This worker's view of its siblings."""

    def __init__(self, slot: WorkerSlot) -> None:
        self._slot = slot

    async def status(self, model: str, version: int | None, label: str | None,
                     local: LocalStatus) -> list[VersionStatus]:
        views: list[list[VersionStatus] | ServingError] = []
        try:
            views.append(local(model, version, label))
        except ServingError as e:
            views.append(e)
        for answer in await self._call_all("Status", _dump([model, version, label]), CALL_SECONDS):
            views.append(ServingError(Code(answer["error"][0]), answer["error"][1]) if "error" in answer
                         else [_decode(v) for v in answer["versions"]])
        return merge_status(views)

    async def metrics(self) -> tuple[list[list[Family]], list[list[VersionStatus]]]:
        """Each reachable sibling's counts and model versions."""
        answers = await self._call_all("Metrics", b"", CALL_SECONDS)
        return ([a["families"] for a in answers],
                [[_decode(v) for v in a["versions"]] for a in answers])

    async def reload(self, config: bytes, apply_local: ApplyConfig, unloaded: Callable[[], set[str]]) -> None:
        """Apply a config in every worker (this one included), then answer; the first error wins.
        ``unloaded``: this worker's unloaded models once the config is applied."""
        async with self._reload_lock():
            errors = await self._everywhere("Reload", config, apply_local)
            # A refused config changed nothing: a worker started later must not apply it. One
            # applied with models that did not become available is what the workers now serve.
            if not any(isinstance(e, ServingError) and e.code in _REFUSED for e in errors):
                _write_atomically(self._slot.config_path, config)
                _write_atomically(self._slot.unloaded_path, _dump(sorted(unloaded())))
        if errors:
            raise errors[0]

    async def repository(self, change: bytes, apply_local: ApplyConfig, unloaded: Callable[[], set[str]]) -> None:
        """A model repository load or unload (JSON ``{"action", "model"}``) in every worker."""
        async with self._reload_lock():
            errors = await self._everywhere("Repository", change, apply_local)
            _write_atomically(self._slot.unloaded_path, _dump(sorted(unloaded())))
        if errors:
            raise errors[0]

    def unloaded_models(self) -> list[str]:
        """The models unloaded through the repository API before this worker started."""
        try:
            with open(self._slot.unloaded_path, "rb") as f:
                return list(json.loads(f.read()))
        except (FileNotFoundError, ValueError):
            return []

    async def _everywhere(self, method: str, payload: bytes, apply_local: ApplyConfig) -> list[BaseException]:
        local, answers = await asyncio.gather(
            apply_local(payload), self._call_all(method, payload, None), return_exceptions=True)
        errors = [e for e in (local, answers) if isinstance(e, BaseException)]
        if not isinstance(answers, BaseException):
            errors += [ServingError(Code(a["error"][0]), a["error"][1]) for a in answers if "error" in a]
        return errors

    def reloaded_config(self) -> bytes | None:
        """The config of the last reload, if a sibling applied one before this worker started."""
        try:
            with open(self._slot.config_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    async def catch_up(self, started_with: bytes | None, apply_local: ApplyConfig,
                       unload: Callable[[list[str]], Awaitable[None]]) -> None:
        """Once this worker's peer socket is open (reloads reach it from then on): apply a reload,
        and the repository's unloads, that happened while it was starting."""
        async with self._reload_lock():
            latest = self.reloaded_config()
            if latest is not None and latest != started_with:
                log.info("Applying the model config reloaded while this worker was starting")
                await apply_local(latest)
            await unload(self.unloaded_models())

    @contextlib.asynccontextmanager
    async def _reload_lock(self) -> AsyncIterator[None]:
        # Polled, not blocking in a thread: a cancelled waiter must not take the lock later.
        fd = os.open(self._slot.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def _call_all(self, method: str, payload: bytes, timeout: float | None) -> list[dict]:
        answers = await asyncio.gather(*(self._call(i, method, payload, timeout)
                                         for i in self._slot.peer_indexes))
        return [a for a in answers if a is not None]

    async def _call(self, index: int, method: str, payload: bytes, timeout: float | None) -> dict | None:
        path = self._slot.socket_path(index)
        if not os.path.exists(path):
            return None  # still loading its models: it has not opened the public ports either
        # A channel per call: a long-lived one would back off for minutes after a sibling restarts.
        async with grpc.aio.insecure_channel(f"unix:{path}",
                                             options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                answer = await channel.unary_unary(f"/{SERVICE}/{method}")(payload, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                log.debug("Worker %d did not answer %s: %s", index, method, e.code().name)
                return None
        return json.loads(answer)


def merge_status(views: Sequence[list[VersionStatus] | ServingError]) -> list[VersionStatus]:
    """One model's status over every worker: each version at the least advanced state any worker
    has it in (one that has not seen it yet counts as START, unless all that have say END)."""
    for view in views:
        if isinstance(view, ServingError):
            raise view
    lists = [v for v in views if not isinstance(v, ServingError)]
    numbers = sorted({(s.model, s.version) for view in lists for s in view}, key=lambda k: (k[0], -k[1]))
    merged = []
    for model, number in numbers:
        known = [s for view in lists for s in view if (s.model, s.version) == (model, number)]
        if len(known) < len(lists) and any(s.state != VersionState.END for s in known):
            merged.append(VersionStatus(model, number, VersionState.START))
        else:
            merged.append(min(known, key=lambda s: (s.state, s.error is None)))
    return merged


async def _applied(apply: ApplyConfig, request: bytes) -> bytes:
    try:
        await apply(request)
    except ServingError as e:
        return _dump({"error": [int(e.code), e.message]})
    return _dump({})


def _encode(s: VersionStatus) -> list:
    error = [int(s.error.code), s.error.message] if s.error else None
    return [s.model, s.version, int(s.state), error]


def _decode(item: list) -> VersionStatus:
    model, version, state, error = item
    return VersionStatus(model, version, VersionState(state),
                         ServingError(Code(error[0]), error[1]) if error else None)


def _dump(value: object) -> bytes:
    return json.dumps(value).encode()


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
