"""The model manager: loads and unloads versions, and hands out servables.

Sources tell the manager which versions each model aspires to. The manager loads new versions off
the request path (in a loader thread pool), retries failed loads, and unloads a version only once
an aspired version is AVAILABLE, so a model that had something to serve always does. Requests take
a handle that keeps its version loaded until the request finishes. Under a budget of loaded models only
resident models (residency.py) load. Everything here runs on the event loop thread, so no locks
are needed; only the loader itself runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import Executor
from typing import Any, Callable, Iterator, Mapping

from ..errors import Code, ServingError
from .records import ModelRecord, RetryPolicy, VersionRecord, forget_old_versions, serving
from .residency import Residency
from .states import VersionState, VersionStatus, describe_versions

log = logging.getLogger("pyserving.manager")

Loader = Callable[[str], Any]  # version path -> servable (blocking; run in a thread)
loop_time = time.perf_counter


class ModelManager:
    def __init__(self, loader: Loader, executor: Executor, retry: RetryPolicy = RetryPolicy(),
                 allow_labels_for_unavailable: bool = False, max_concurrent_loads: int = 2,
                 residency: Residency | None = None,
                 on_residency: Callable[[str, str, float, int], None] | None = None) -> None:
        self._loader = loader
        self._residency = residency  # --max_loaded_models: models load on first request, LRU evicted
        # ("load"|"evict", cold start seconds, estimated bytes): for the metrics
        self._on_residency = on_residency or (lambda model, event, seconds, size: None)
        self._executor = executor
        # A version waits in START for a free load slot, then shows LOADING while it loads.
        self._load_slots = asyncio.Semaphore(max(1, max_concurrent_loads))
        self._retry = retry
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._models: dict[str, ModelRecord] = {}
        self._tasks: set[asyncio.Task] = set()
        self._changed = asyncio.Condition()
        self._cold_starts: set[str] = set()  # made resident, waiting for evicted models to unload

    # ---- wiring from sources -------------------------------------------------

    def add_model(self, name: str, base_path: str, labels: dict[str, int] | None = None) -> None:
        """Serve this model (again); ``labels`` None keeps the current ones."""
        model = self._models.get(name)
        if model is None:
            self._models[name] = ModelRecord(name, base_path, dict(labels or {}))
            return
        model.base_path, model.configured = base_path, True
        if labels is not None:
            model.labels = dict(labels)

    def remove_model(self, name: str) -> None:
        """Stop serving it: its versions unload, and status reports them END."""
        self._models[name].configured = False
        if self._residency is not None:
            self._residency.forget(name)
        self.set_aspired(name, {})

    def check_labels(self, name: str, labels: Mapping[str, int]) -> None:
        """Raise unless each label names an AVAILABLE version (or is unchanged), as TF Serving
        demands unless --allow_version_labels_for_unavailable_models."""
        model = self._models.get(name)
        if self._allow_unavailable_labels:
            return
        for label, number in sorted(labels.items()):
            record = model.versions.get(number) if model is not None else None
            unchanged = model is not None and model.configured and model.labels.get(label) == number
            loads_on_demand = model is not None and number in model.aspired and not self._resident(name)
            if not (unchanged or loads_on_demand) and (record is None or record.state != VersionState.AVAILABLE):
                raise ServingError.failed_precondition(
                    f"Request to assign label {label} to version {number} of model {name}, which is not currently "
                    "available for inference (--allow_version_labels_for_unavailable_models lifts this)")

    def set_labels(self, name: str, labels: Mapping[str, int]) -> None:
        """Point version labels; each must name an AVAILABLE version unless allowed otherwise."""
        self.check_labels(name, labels)
        self._models[name].labels = dict(labels)

    def unavailable(self, names: list[str]) -> list[tuple[str, int, str]]:
        """(model, version, why) for each of these models whose latest aspired version is not AVAILABLE
        (what TF Serving waits for: Latest(name)); a model with no versions serves nothing (its status says why)."""
        missing = []
        for name in names:
            if not self._resident(name):
                continue  # loads on its first request (--max_loaded_models)
            model = self._models.get(name)
            for number in [max(model.aspired)] if model is not None and model.aspired else ():
                record = model.versions.get(number)
                if record is None or record.state != VersionState.AVAILABLE:
                    why = record.error.message if record is not None and record.error else \
                        (record.state.name if record is not None else "not loaded")
                    missing.append((name, number, why))
        return missing

    def explain_empty(self, name: str, why: str) -> None:
        """Why the source finds no versions of this model (requests' errors and status quote it,
        so no request reads the folder itself)."""
        self._models[name].why_empty = why

    def set_aspired(self, name: str, versions: Mapping[int, str]) -> None:
        """The versions (number -> folder) this model should serve from now on."""
        model = self._models[name]
        for number in set(model.aspired) - set(versions):  # gone: a retry waiting for it ends now
            if number in model.versions:
                model.versions[number].unwanted.set()
        for number in set(versions) - set(model.aspired):
            record = model.versions.get(number)
            if record is not None and record.state == VersionState.END:
                del model.versions[number]  # came back (or was fixed): load it afresh
        model.aspired = dict(versions)
        self._reconcile(model)

    # ---- requests ------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(n for n, m in self._models.items() if m.configured)

    def has_model(self, name: str) -> bool:
        return name in self._models and self._models[name].configured

    def resolve_label(self, name: str, label: str) -> int:
        model = self._models.get(name)
        if model is None or not model.configured:
            raise ServingError.not_found(f"Servable not found for request: Latest({name})")
        try:
            return model.labels[label]
        except KeyError:
            raise ServingError.invalid_argument(
                f"Unrecognized servable version label: {label}") from None

    def labels(self, name: str) -> dict[str, int]:
        """The model's version labels (label -> version); {} for a model not configured."""
        model = self._models.get(name)
        return dict(model.labels) if model is not None and model.configured else {}

    @contextlib.contextmanager
    def handle(self, name: str, version: int | None = None) -> Iterator[tuple[int, Any]]:
        """(version, servable) kept loaded for the duration of the ``with`` block."""
        record = self._pick(name, version)
        record.in_flight += 1
        try:
            yield record.number, record.servable
        finally:
            record.in_flight -= 1
            if record.in_flight == 0:
                record.drained.set()

    def _pick(self, name: str, version: int | None) -> VersionRecord:
        model = self._models.get(name)
        if model is not None and not model.configured:
            model = None
        if version is not None:
            record = model.versions.get(version) if model else None
            if record is None or record.state != VersionState.AVAILABLE:
                raise ServingError.not_found(
                    f"Servable not found for request: Specific({name}, {version})")
            return record
        available = [v for v in model.versions.values()
                     if v.state == VersionState.AVAILABLE] if model else []
        if available:
            return max(available, key=lambda v: v.number)
        if model is None:
            raise ServingError.not_found(f"Servable not found for request: Latest({name})")
        raise ServingError.unavailable(
            f"Servable not found for request: Latest({name}): no version is available yet "
            f"({self._describe(model)})")

    def _describe(self, model: ModelRecord) -> str:
        if self.not_loaded(model.name):
            return f"not loaded: version {max(model.aspired)} loads on its first request (a budget of loaded models)"
        if not model.versions:
            return f"no version folders found under {model.base_path}{model.why_empty}"
        return describe_versions([VersionStatus(model.name, v.number, v.state, v.error) for v in model.versions.values()])

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        model = self._models.get(name)
        if model is None or not model.versions:
            if version is not None:
                raise ServingError.not_found(f"Could not find version {version} of model {name}")
            # TF Serving's words, then, for a model this server serves, why it has no versions.
            why = f": {self._describe(model)}" if model is not None and model.configured else ""
            raise ServingError.not_found(f"Could not find any versions of model {name}{why}")
        records = sorted(model.versions.values(), key=lambda v: -v.number)
        if version is not None:
            records = [v for v in records if v.number == version]
            if not records:
                raise ServingError.not_found(f"Could not find version {version} of model {name}")
        return [VersionStatus(name, v.number, v.state, v.error) for v in records]

    def readiness(self) -> dict[str, bool]:
        """Each configured model: can it serve? (an AVAILABLE version, or one to load on demand)"""
        return {name: serving(model) or self.not_loaded(name) for name, model in self._models.items()
                if model.configured}

    def _resident(self, name: str) -> bool:
        return self._residency is None or self._residency.is_resident(name)

    def not_loaded(self, name: str) -> bool:
        """Under a budget of loaded models: a configured model with versions to load, not loaded now."""
        model = self._models.get(name)
        return (model is not None and model.configured and bool(model.aspired) and not self._resident(name)
                and not serving(model))

    async def ensure_resident(self, name: str, timeout: float | None) -> None:
        """With a budget (residency.py): load a model not loaded (evicting the least recently used
        idle ones to make room) and wait for it within ``timeout``; UNAVAILABLE, never a hang."""
        model = self._models.get(name)
        if self._residency is None or model is None or not model.configured or not model.aspired:
            return  # nothing to load: handle() answers as without a budget
        if not self._residency.is_resident(name):
            await self._measure([name, *self._residency.preload])  # in a load thread: reads folders
        if self._residency.is_resident(name):  # (or became so while measured, for another request)
            self._residency.touch(name)
        elif model.configured and model.aspired:
            evicted = self._residency.admit(name, self._busy)
            for other in evicted:
                log.info("Evicting model %s (the least recently used idle model) to load %s on its first "
                         "request within the budget of loaded models (%s)", other, name,
                         self._residency.describe())
                self._reconcile(self._models[other])  # no longer resident: its versions unload
                self._on_residency(other, "evict", 0.0, 0)
            # A task, not this request: a request cancelled here must not leave the model unloaded.
            self._cold_starts.add(name)
            self._spawn(self._cold_start(name, evicted))
        try:
            if not serving(model):
                await self.wait_until_settled([name], timeout)
        except asyncio.TimeoutError:
            raise ServingError.unavailable(f"Model {name} is loading (on its first request, under a "
                                           "budget of loaded models); retry") from None

    async def _measure(self, names: list[str]) -> None:
        residency, loop = self._residency, asyncio.get_running_loop()
        for name in names:
            folders = list(self._models[name].aspired.values()) if name in self._models else []
            if folders and residency.unsized(name, folders):
                residency.sized(name, folders, await loop.run_in_executor(self._executor, residency.measure, folders))

    def _busy(self, name: str) -> bool:
        model = self._models.get(name)
        return name in self._cold_starts or model is not None and any(
            v.in_flight or v.state in (VersionState.START, VersionState.LOADING) for v in model.versions.values())

    def snapshot(self) -> list[VersionStatus]:
        """Every version of every configured model (for metrics)."""
        return [VersionStatus(m.name, v.number, v.state, v.error)
                for m in self._models.values() if m.configured for v in m.versions.values()]

    async def _cold_start(self, name: str, evicted: list[str]) -> None:
        """Load a model made resident once the models evicted for it have unloaded (their memory
        goes before its memory comes: the budget holds at every moment), timed for the metrics."""
        started = loop_time()
        async with self._changed:
            await self._changed.wait_for(lambda: not any(map(self._unloading, evicted)))
        self._cold_starts.discard(name)
        self._reconcile(self._models[name])
        await self._notify()
        await self.wait_until_settled([name])
        self._on_residency(name, "load", loop_time() - started, self._residency.bytes_of(name))

    def _unloading(self, name: str) -> bool:
        """An evicted model still holding memory (not if it was made resident again since)."""
        return not self._resident(name) and any(
            v.state in (VersionState.AVAILABLE, VersionState.UNLOADING) for v in self._models[name].versions.values())

    async def wait_until_settled(self, names: list[str], timeout: float | None = None) -> None:
        """Until no aspired version of these models is still loading."""
        async def settled() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: all(self._settled(n) for n in names))
        await asyncio.wait_for(settled(), timeout)

    def _settled(self, name: str) -> bool:
        model = self._models.get(name)
        if model is None or not self._resident(name):
            return True
        if name in self._cold_starts:  # its load waits for the models evicted for it
            return False
        return all(model.versions.get(v) is not None
                   and model.versions[v].state in (VersionState.AVAILABLE, VersionState.END)
                   for v in model.aspired)

    # ---- loading and unloading -------------------------------------------------

    def _reconcile(self, model: ModelRecord) -> None:
        if not self._resident(model.name):  # evicted, or never asked for: nothing stays loaded
            self._unload_available(model, keep={}, why="evicted under the budget of loaded models")
            return
        for number in sorted(model.aspired):
            record = model.versions.get(number)
            if record is None or (record.state == VersionState.END and record.error is None):
                self._start(model, number)
        if model.aspired and not any(
                model.versions[n].state == VersionState.AVAILABLE
                for n in model.aspired if n in model.versions):
            return  # availability first: keep old versions until a new one serves
        self._unload_available(model, keep=model.aspired)

    def _unload_available(self, model: ModelRecord, keep: Mapping[int, str], why: str = "") -> None:
        """Unload the AVAILABLE versions not in ``keep`` (``why``: said in the log line)."""
        for record in list(model.versions.values()):
            if record.number not in keep and record.state == VersionState.AVAILABLE:
                # Mark it now, not when the task runs, so a second reconcile can't unload it twice.
                record.state = VersionState.UNLOADING
                self._spawn(self._unload(model, record, why))

    def _start(self, model: ModelRecord, number: int) -> None:
        record = VersionRecord(number, VersionState.START)
        model.versions[number] = record
        self._spawn(self._load(model, record))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, model: ModelRecord, record: VersionRecord) -> None:
        path = model.aspired.get(record.number) or os.path.join(model.base_path, str(record.number))
        loop = asyncio.get_running_loop()
        attempts = self._retry.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._load_slots:
                    record.state = VersionState.LOADING
                    record.servable = await loop.run_in_executor(self._executor, self._loader, path)
                record.state, record.error = VersionState.AVAILABLE, None
                log.info("Successfully loaded servable version {name: %s version: %d}",
                         model.name, record.number)
                break
            except Exception as e:  # any loader failure is reported in status
                record.error = e if isinstance(e, ServingError) else ServingError(
                    Code.UNKNOWN, f"{type(e).__name__}: {e}")
                what = (f"Loading servable {{name: {model.name} version: {record.number}}} failed "
                        f"(attempt {attempt} of {attempts}): {record.error.message}")
                if record.number not in model.aspired:
                    log.warning("%s; not retrying: the version is no longer wanted", what)
                elif record.error.final:
                    log.warning("%s; not retrying: %s", what, record.error.final_reason)
                elif attempt == attempts:
                    log.error("%s; giving up", what)
                else:
                    log.warning("%s; retrying in %.1f s", what, self._retry.interval_seconds)
                    # Cancelled by stop(): a SIGTERM is never kept waiting by a retry interval; nor
                    # is a version whose folder went away (its status would say LOADING meanwhile).
                    woken = await record.wait_unwanted(self._retry.interval_seconds)
                    if not woken or record.number in model.aspired:  # (back again meanwhile: retry now)
                        record.unwanted.clear()
                        continue
                    log.info("Not retrying servable version {name: %s version: %d}: it is no longer wanted",
                             model.name, record.number)
                record.state = VersionState.END
                break
        await self._notify()
        self._reconcile(model)

    async def _unload(self, model: ModelRecord, record: VersionRecord, why: str = "") -> None:
        record.state = VersionState.UNLOADING
        await self._notify()
        if record.in_flight:
            record.drained.clear()
            await record.drained.wait()
        servable, record.servable = record.servable, None
        close = getattr(servable, "close", None)
        if close is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        record.state = VersionState.END
        log.info("Unloaded servable version {name: %s version: %d}%s", model.name, record.number,
                 f" ({why})" if why else "")
        forget_old_versions(model)
        if record.number in model.aspired:
            # Aspired again while it unloaded (a model unloaded and loaded back, a config dropping
            # and re-adding it): load it afresh, before waiters see END and take it for a failed load.
            self._reconcile(model)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def stop(self) -> None:
        """Unload everything (after in-flight requests finish)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self._models.values():
            model.aspired = {}
            for record in list(model.versions.values()):
                if record.state == VersionState.AVAILABLE:
                    await self._unload(model, record)
