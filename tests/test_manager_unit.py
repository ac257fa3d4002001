"""Unit tests of core.manager.ModelManager and core.source with a fake loader."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyserving.config.model_config import ModelConfig, VersionPolicy
from pyserving.core.manager import ModelManager, RetryPolicy
from pyserving.core.residency import Residency
from pyserving.core.source import FileSystemSource, list_versions
from pyserving.core.states import VersionState
from pyserving.errors import Code, ServingError

FAST_RETRY = RetryPolicy(max_retries=0, interval_seconds=0.01)
DEADLINE = 5.0


class FakeServable:
    def __init__(self, path: str, close_gate: threading.Event | None = None) -> None:
        self.path = path
        self.closed = threading.Event()
        self.close_started = threading.Event()
        self.close_calls = 0
        self._close_gate = close_gate

    def close(self) -> None:
        self.close_calls += 1
        self.close_started.set()
        if self._close_gate is not None:
            assert self._close_gate.wait(DEADLINE)
        self.closed.set()


class FakeLoader:
    """path -> FakeServable; may fail (per path) or block on a gate (per path)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, int] = {}  # path -> how many more calls fail (-1: always)
        self.gates: dict[str, threading.Event] = {}
        self.close_gates: dict[str, threading.Event] = {}
        self.servables: dict[str, FakeServable] = {}
        self._lock = threading.Lock()

    def __call__(self, path: str) -> FakeServable:
        with self._lock:
            self.calls.append(path)
        gate = self.gates.get(path)
        if gate is not None:
            assert gate.wait(DEADLINE), f"test never released the load of {path}"
        remaining = self.fail.get(path, 0)
        if remaining:
            self.fail[path] = remaining - 1 if remaining > 0 else -1
            raise RuntimeError(f"cannot load {path}")
        servable = FakeServable(path, self.close_gates.get(path))
        self.servables[path] = servable
        return servable

    def count(self, path: str) -> int:
        with self._lock:
            return self.calls.count(path)


def run(coro_fn, loader: FakeLoader, retry: RetryPolicy = FAST_RETRY, **kw):
    """Run coro_fn(manager) on a fresh loop with a fresh executor."""
    executor = ThreadPoolExecutor(max_workers=2)

    async def main():
        manager = ModelManager(loader, executor, retry, **kw)
        try:
            return await coro_fn(manager)
        finally:
            for gate in list(loader.gates.values()) + list(loader.close_gates.values()):
                gate.set()
            await asyncio.wait_for(manager.stop(), DEADLINE)

    try:
        return asyncio.run(main())
    finally:
        executor.shutdown(wait=True)


async def until(predicate, what: str = "condition", timeout: float = DEADLINE, on_tick=None):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if on_tick is not None:
            on_tick()
        if predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def ticks(n: int = 10) -> None:
    """Let already-runnable tasks run (not a timing-based wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


def state(manager: ModelManager, name: str, version: int) -> VersionState | None:
    try:
        return manager.status(name, version)[0].state
    except ServingError:
        return None


def states(manager: ModelManager, name: str) -> dict[int, VersionState]:
    try:
        return {s.version: s.state for s in manager.status(name)}
    except ServingError:
        return {}


def _expect(code: Code, fn, *fragments: str) -> ServingError:
    with pytest.raises(ServingError) as info:
        fn()
    assert info.value.code == code, (info.value.code, info.value.message)
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)
    return info.value


def _serving(manager, name="m"):
    with manager.handle(name) as (version, servable):
        return version, servable


# ---- loading -------------------------------------------------------------------

def test_load_becomes_available():
    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/base")
        m.set_aspired("m", {1: "/base/1"})
        assert state(m, "m", 1) == VersionState.START  # aspired; loading starts on the next tick
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert state(m, "m", 1) == VersionState.AVAILABLE
        version, servable = _serving(m)
        assert version == 1 and servable.path == "/base/1"
        with m.handle("m", 1) as (v, s):
            assert v == 1 and s is servable
        assert loader.calls == ["/base/1"]

    run(body, loader)


def test_new_version_loads_before_old_unloads():
    loader = FakeLoader()
    loader.gates["/b/2"] = threading.Event()
    observations: list[dict[int, VersionState]] = []

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        m.set_aspired("m", {2: "/b/2"})

        def observe():
            snap = states(m, "m")
            observations.append(snap)
            assert any(s == VersionState.AVAILABLE for s in snap.values()), snap
            if snap.get(1) in (VersionState.UNLOADING, VersionState.END):
                assert snap.get(2) == VersionState.AVAILABLE, snap
            if snap.get(2) != VersionState.AVAILABLE:
                assert _serving(m)[0] == 1
        await until(lambda: loader.count("/b/2") == 1, "load of v2 to start", on_tick=observe)
        for _ in range(5):
            observe()
            await ticks()
        assert states(m, "m") == {1: VersionState.AVAILABLE, 2: VersionState.LOADING}
        loader.gates["/b/2"].set()
        await until(lambda: state(m, "m", 1) == VersionState.END, "v1 to unload", on_tick=observe)
        observe()
        assert _serving(m)[0] == 2
        assert loader.servables["/b/1"].closed.is_set()
        assert not loader.servables["/b/2"].closed.is_set()
        _expect(Code.NOT_FOUND, lambda: _serving_specific(m, 1), "Specific(m, 1)")

    run(body, loader)
    assert any(o.get(1) == VersionState.AVAILABLE and o.get(2) == VersionState.LOADING
               for o in observations)
    assert observations[-1] == {1: VersionState.END, 2: VersionState.AVAILABLE}


def _serving_specific(m, version):
    with m.handle("m", version) as (v, s):
        return v, s


def test_failing_load_is_retried_then_ends_with_error(caplog):
    loader = FakeLoader()
    loader.fail["/b/1"] = -1

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        [status] = m.status("m")
        assert status.state == VersionState.END
        assert status.error is not None
        assert "cannot load /b/1" in status.error.message
        _expect(Code.UNAVAILABLE, lambda: _serving(m), "Latest(m)", "cannot load /b/1")

    with caplog.at_level("WARNING", logger="pyserving.manager"):
        run(body, loader, RetryPolicy(max_retries=3, interval_seconds=0.01))
    assert loader.count("/b/1") == 4  # the first attempt and 3 retries
    # Each retry said once, with its number, the total and the wait; the last failure at ERROR.
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "{name: m version: 1}" in r.getMessage()]
    reason = "RuntimeError: cannot load /b/1"
    assert lines == [("WARNING", f"Loading servable {{name: m version: 1}} failed (attempt {n} of 4): "
                                 f"{reason}; retrying in 0.0 s") for n in (1, 2, 3)] + [
        ("ERROR", f"Loading servable {{name: m version: 1}} failed (attempt 4 of 4): {reason}; giving up")]


async def _failed_once(m: ModelManager) -> float:
    """Model m's version 1 (/b/1) aspired until its first load has failed: the loop's time then."""
    m.add_model("m", "/b")
    m.set_aspired("m", {1: "/b/1"})
    await until(lambda: m.status("m")[0].error is not None, "the first attempt to fail")
    return asyncio.get_running_loop().time()


def test_stop_cuts_a_retry_wait_short():
    loader = FakeLoader()
    loader.fail["/b/1"] = -1

    async def body(m: ModelManager):
        start = await _failed_once(m)
        await asyncio.wait_for(m.stop(), DEADLINE)  # the hour-long retry wait is cancelled
        assert asyncio.get_running_loop().time() - start < 1.0

    run(body, loader, RetryPolicy(max_retries=5, interval_seconds=3600))
    assert loader.count("/b/1") == 1


def test_a_version_whose_folder_goes_ends_at_once_not_after_its_retry_wait():
    """Deleted while it waits to retry a failed load: END now (its status said LOADING with the
    old error for the whole wait); back again during the wait: retried at once."""
    loader = FakeLoader()
    loader.fail["/b/1"] = -1

    async def body(m: ModelManager):
        start = await _failed_once(m)
        m.set_aspired("m", {})
        await until(lambda: m.status("m")[0].state == VersionState.END, "the version to end")
        assert asyncio.get_running_loop().time() - start < 1.0
        loader.fail["/b/2"] = 1
        m.set_aspired("m", {2: "/b/2"})
        await until(lambda: loader.count("/b/2") == 1, "version 2's first attempt")
        m.set_aspired("m", {})
        m.set_aspired("m", {2: "/b/2"})  # gone and back within the wait
        await until(lambda: loader.count("/b/2") == 2, "version 2 retried at once")
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert {s.version: s.state for s in m.status("m")}[2] == VersionState.AVAILABLE

    run(body, loader, RetryPolicy(max_retries=5, interval_seconds=3600))
    assert loader.count("/b/1") == 1


def test_load_succeeds_on_a_retry():
    loader = FakeLoader()
    loader.fail["/b/1"] = 2

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        [status] = m.status("m")
        assert status.state == VersionState.AVAILABLE and status.error is None
        assert _serving(m)[0] == 1

    run(body, loader, RetryPolicy(max_retries=5, interval_seconds=0.01))
    assert loader.count("/b/1") == 3


def test_serving_error_from_loader_keeps_its_code():
    def loader(path):
        raise ServingError(Code.FAILED_PRECONDITION, "bad signature")

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        [status] = m.status("m")
        assert status.error.code == Code.FAILED_PRECONDITION
        assert status.error.message == "bad signature"

    executor = ThreadPoolExecutor(max_workers=1)
    try:
        async def main():
            await body(ModelManager(loader, executor, FAST_RETRY))
        asyncio.run(main())
    finally:
        executor.shutdown(wait=True)


def test_failed_newest_version_keeps_previous_serving():
    loader = FakeLoader()
    loader.fail["/b/2"] = -1

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        m.set_aspired("m", {2: "/b/2"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        await ticks()
        assert states(m, "m") == {2: VersionState.END, 1: VersionState.AVAILABLE}
        assert m.status("m", 2)[0].error is not None
        version, servable = _serving(m)
        assert version == 1 and servable.path == "/b/1"
        assert not loader.servables["/b/1"].closed.is_set()

    run(body, loader, RetryPolicy(max_retries=1, interval_seconds=0.01))
    assert loader.count("/b/2") == 2


def test_failed_version_is_not_retried_while_still_aspired():
    loader = FakeLoader()
    loader.fail["/b/1"] = 1

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert state(m, "m", 1) == VersionState.END
        m.set_aspired("m", {1: "/b/1"})  # the next poll sees the same folder
        await ticks()
        assert state(m, "m", 1) == VersionState.END
        assert loader.count("/b/1") == 1

    run(body, loader)


def test_failed_version_that_disappears_and_reappears_is_loaded_again():
    loader = FakeLoader()
    loader.fail["/b/1"] = 1  # only the first attempt fails

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert state(m, "m", 1) == VersionState.END
        m.set_aspired("m", {})
        await ticks()
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        [status] = m.status("m")
        assert status.state == VersionState.AVAILABLE and status.error is None
        assert _serving(m)[0] == 1

    run(body, loader)
    assert loader.count("/b/1") == 2


def test_unloaded_version_that_reappears_is_loaded_again():
    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        m.set_aspired("m", {})  # the folder went away
        await until(lambda: state(m, "m", 1) == VersionState.END, "v1 to unload")
        _expect(Code.UNAVAILABLE, lambda: _serving(m), "Latest(m)")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert state(m, "m", 1) == VersionState.AVAILABLE

    run(body, loader)
    assert loader.count("/b/1") == 2


def test_model_removed_from_config_is_not_found_until_added_back():
    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        m.remove_model("m")
        await until(lambda: state(m, "m", 1) == VersionState.END, "v1 to unload")
        _expect(Code.NOT_FOUND, lambda: _serving(m), "Latest(m)")
        assert m.model_names() == [] and not m.has_model("m")
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert m.has_model("m") and state(m, "m", 1) == VersionState.AVAILABLE

    run(body, loader)


def test_set_labels_needs_available_versions():
    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        m.set_labels("m", {"stable": 1})
        assert m.resolve_label("m", "stable") == 1
        _expect(Code.FAILED_PRECONDITION, lambda: m.set_labels("m", {"stable": 1, "canary": 2}),
                "version 2 of model m")
        assert m.resolve_label("m", "stable") == 1  # the failed update changed nothing
        _expect(Code.INVALID_ARGUMENT, lambda: m.resolve_label("m", "canary"), "canary")

    run(body, loader)


# ---- handles and errors --------------------------------------------------------

def test_handle_errors():
    loader = FakeLoader()
    loader.gates["/b/1"] = threading.Event()

    async def body(m: ModelManager):
        _expect(Code.NOT_FOUND, lambda: _serving(m, "nope"), "Latest(nope)")
        _expect(Code.NOT_FOUND, lambda: m.handle("nope", 3).__enter__(), "Specific(nope, 3)")
        m.add_model("m", "/b")
        _expect(Code.UNAVAILABLE, lambda: _serving(m), "Latest(m)")
        m.set_aspired("m", {1: "/b/1"})
        await until(lambda: state(m, "m", 1) == VersionState.LOADING, "v1 to start loading")
        # loading: known model, nothing available yet
        _expect(Code.UNAVAILABLE, lambda: _serving(m), "Latest(m)", "LOADING")
        _expect(Code.NOT_FOUND, lambda: _serving_specific(m, 1), "Specific(m, 1)")
        loader.gates["/b/1"].set()
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        _expect(Code.NOT_FOUND, lambda: _serving_specific(m, 7), "Specific(m, 7)")
        assert _serving_specific(m, 1)[0] == 1

    run(body, loader)


def test_in_flight_request_delays_close():
    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        old = loader.servables["/b/1"]
        with m.handle("m") as (version, servable):
            assert version == 1 and servable is old
            m.set_aspired("m", {2: "/b/2"})
            await until(lambda: state(m, "m", 1) == VersionState.UNLOADING, "v1 UNLOADING")
            assert state(m, "m", 2) == VersionState.AVAILABLE
            assert _serving(m)[0] == 2  # new requests go to the new version
            await ticks(20)
            assert old.close_calls == 0
            assert state(m, "m", 1) == VersionState.UNLOADING
        await until(lambda: state(m, "m", 1) == VersionState.END, "v1 END after the request")
        assert old.closed.is_set() and old.close_calls == 1

    run(body, loader)


def test_repeated_set_aspired_unloads_once_and_reports_unloading_until_closed():
    loader = FakeLoader()
    loader.close_gates["/b/1"] = threading.Event()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        old = loader.servables["/b/1"]
        # Two reconciles in a row (e.g. a config reload right after a poll).
        m.set_aspired("m", {})
        m.set_aspired("m", {})
        await until(old.close_started.is_set, "close to start")
        await ticks(20)
        # close() is still running: the version must not be reported END yet.
        assert state(m, "m", 1) == VersionState.UNLOADING
        loader.close_gates["/b/1"].set()
        await until(lambda: state(m, "m", 1) == VersionState.END, "v1 END")
        assert old.close_calls == 1

    run(body, loader)


def test_stop_unloads_everything():
    loader = FakeLoader()
    executor = ThreadPoolExecutor(max_workers=2)

    async def main():
        m = ModelManager(loader, executor, FAST_RETRY)
        m.add_model("a", "/a")
        m.add_model("b", "/b")
        m.set_aspired("a", {1: "/a/1"})
        m.set_aspired("b", {1: "/b/1", 2: "/b/2"})
        await m.wait_until_settled(["a", "b"], timeout=DEADLINE)
        await m.stop()
        assert states(m, "a") == {1: VersionState.END}
        assert states(m, "b") == {2: VersionState.END, 1: VersionState.END}

    try:
        asyncio.run(main())
    finally:
        executor.shutdown(wait=True)
    assert all(s.closed.is_set() for s in loader.servables.values())
    assert len(loader.servables) == 3


# ---- status, labels, settling ---------------------------------------------------

def test_status_order_and_errors():
    loader = FakeLoader()
    loader.fail["/b/5"] = -1

    async def body(m: ModelManager):
        _expect(Code.NOT_FOUND, lambda: m.status("x"), "Could not find any versions of model x")
        m.add_model("m", "/b")
        _expect(Code.NOT_FOUND, lambda: m.status("m"), "Could not find any versions of model m")
        _expect(Code.NOT_FOUND, lambda: m.status("m", 1), "Could not find version 1 of model m")
        m.set_aspired("m", {3: "/b/3", 1: "/b/1", 5: "/b/5"})
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        statuses = m.status("m")
        assert [s.version for s in statuses] == [5, 3, 1]
        assert [s.state for s in statuses] == [VersionState.END, VersionState.AVAILABLE,
                                               VersionState.AVAILABLE]
        assert all(s.model == "m" for s in statuses)
        assert statuses[0].error is not None and statuses[1].error is None
        assert [s.version for s in m.status("m", 3)] == [3]
        _expect(Code.NOT_FOUND, lambda: m.status("m", 4), "Could not find version 4 of model m")
        assert _serving(m)[0] == 3  # the highest AVAILABLE version
        assert m.model_names() == ["m"] and m.has_model("m") and not m.has_model("x")

    run(body, loader)


def test_resolve_label():
    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/b", {"stable": 1, "canary": 2})
        assert m.resolve_label("m", "stable") == 1
        assert m.resolve_label("m", "canary") == 2
        _expect(Code.INVALID_ARGUMENT, lambda: m.resolve_label("m", "beta"),
                "Unrecognized servable version label: beta")
        _expect(Code.NOT_FOUND, lambda: m.resolve_label("zzz", "stable"), "Latest(zzz)")
        m.add_model("m", "/b", {"stable": 2})  # re-adding replaces the labels
        assert m.resolve_label("m", "stable") == 2
        _expect(Code.INVALID_ARGUMENT, lambda: m.resolve_label("m", "canary"), "canary")

    run(body, loader)


def test_wait_until_settled_waits_for_loading_versions():
    loader = FakeLoader()
    loader.gates["/b/1"] = threading.Event()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1"})
        with pytest.raises(asyncio.TimeoutError):
            await m.wait_until_settled(["m"], timeout=0.05)
        waiter = asyncio.ensure_future(m.wait_until_settled(["m", "unknown"], timeout=DEADLINE))
        await until(lambda: loader.count("/b/1") == 1, "load to start")
        await ticks()
        assert not waiter.done()
        loader.gates["/b/1"].set()
        await asyncio.wait_for(waiter, DEADLINE)
        assert state(m, "m", 1) == VersionState.AVAILABLE
        await m.wait_until_settled([], timeout=DEADLINE)  # nothing to wait for

    run(body, loader)


# ---- the file-system source -----------------------------------------------------

def version_folder(path: Path) -> None:
    """A numbered folder that is a version: it holds a model file (FakeLoader never reads it)."""
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")


def test_list_versions(tmp_path):
    for name in ["1", "2", "00000123", "abc", "1a", "-3", ".5"]:
        version_folder(tmp_path / name)
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(str(tmp_path)) == {
        1: str(tmp_path / "1"), 2: str(tmp_path / "2"), 123: str(tmp_path / "00000123")}


def test_list_versions_ignores_non_ascii_digit_folders(tmp_path):
    # str.isdigit() accepts these, but they are not version numbers (TF Serving
    # parses names with strtoll); they must not crash the poll either.
    for name in ["4", "²", "١٢"]:
        version_folder(tmp_path / name)
    assert list_versions(str(tmp_path)) == {4: str(tmp_path / "4")}


def test_list_versions_leaves_out_what_is_not_a_version_and_says_why(tmp_path):
    version_folder(tmp_path / "5")
    version_folder(tmp_path / "9223372036854775807")  # int64's largest: a version
    version_folder(tmp_path / "9223372036854775808")
    version_folder(tmp_path / "99999999999999999999999")
    version_folder(tmp_path / "0005")
    (tmp_path / "6").mkdir()  # no model file: still a version, as in TF Serving (its load fails)
    version_folder(tmp_path / ("7" * 250))  # hundreds of digits: refused before int() parses them
    ignored: dict[str, str] = {}
    assert list_versions(str(tmp_path), ignored) == {5: str(tmp_path / "0005"), 6: str(tmp_path / "6"),
                                                     2**63 - 1: str(tmp_path / "9223372036854775807")}
    assert ignored == {"9223372036854775808": "its number is larger than a version can be (int64)",
                       "99999999999999999999999": "its number is larger than a version can be (int64)",
                       "5": "version 5 is folder 0005 already",
                       "7" * 250: "its number is larger than a version can be (int64)"}


def test_list_versions_missing_base_path(tmp_path):
    with pytest.raises(OSError):
        list_versions(str(tmp_path / "missing"))


def test_poll_once_loads_selected_versions(tmp_path):
    for name in ["1", "2", "00000123", "notaversion"]:
        version_folder(tmp_path / name)
    (tmp_path / "9").write_text("file")
    loader = FakeLoader()

    async def body(m: ModelManager):
        source = FileSystemSource(m, poll_seconds=0)
        source.set_models([ModelConfig("all", str(tmp_path), VersionPolicy(kind="all")),
                           ModelConfig("latest", str(tmp_path))])
        await source.poll_once()
        await m.wait_until_settled(["all", "latest"], timeout=DEADLINE)
        assert states(m, "all") == {123: VersionState.AVAILABLE, 2: VersionState.AVAILABLE,
                                    1: VersionState.AVAILABLE}
        assert states(m, "latest") == {123: VersionState.AVAILABLE}
        assert _serving(m, "latest")[1].path == str(tmp_path / "00000123")
        await source.run()  # poll_seconds=0: returns at once

    run(body, loader)
    assert sorted(loader.calls) == sorted([str(tmp_path / "1"), str(tmp_path / "2"),
                                           str(tmp_path / "00000123"), str(tmp_path / "00000123")])


def test_poll_once_missing_base_path_keeps_serving(tmp_path):
    base = tmp_path / "model"
    version_folder(base / "1")
    loader = FakeLoader()

    async def body(m: ModelManager):
        source = FileSystemSource(m, poll_seconds=0)
        source.set_models([ModelConfig("m", str(base))])
        await source.poll_once()
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        shutil.rmtree(base)
        for _ in range(2):  # repeated polls of a missing path change nothing
            await source.poll_once()
            await ticks()
        assert states(m, "m") == {1: VersionState.AVAILABLE}
        assert _serving(m)[0] == 1
        assert not loader.servables[str(base / "1")].closed.is_set()
        # The folder comes back with a newer version: normal service resumes.
        version_folder(base / "2")
        await source.poll_once()
        await until(lambda: states(m, "m") == {2: VersionState.AVAILABLE, 1: VersionState.END},
                    "v2 to replace v1")

    run(body, loader)


def test_poll_once_new_version_replaces_old_and_removed_model_unloads(tmp_path):
    version_folder(tmp_path / "1")
    loader = FakeLoader()

    async def body(m: ModelManager):
        source = FileSystemSource(m, poll_seconds=0)
        source.set_models([ModelConfig("m", str(tmp_path))])
        await source.poll_once()
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        version_folder(tmp_path / "3")
        await source.poll_once()
        await until(lambda: states(m, "m") == {3: VersionState.AVAILABLE, 1: VersionState.END},
                    "v3 to replace v1")
        source.set_models([])
        await until(lambda: states(m, "m") == {3: VersionState.END, 1: VersionState.END},
                    "everything to unload")
        await source.poll_once()  # the removed model is no longer polled
        assert states(m, "m") == {3: VersionState.END, 1: VersionState.END}

    run(body, loader)
    assert os.path.basename(loader.calls[-1]) == "3"


def test_unloaded_versions_are_kept_for_status_but_bounded():
    from pyserving.core import records as manager_module

    loader = FakeLoader()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        total = manager_module.MAX_ENDED_VERSIONS + 5
        for n in range(1, total + 1):
            m.set_aspired("m", {n: f"/b/{n}"})
            await m.wait_until_settled(["m"], timeout=DEADLINE)
            await until(lambda: all(s.state in (VersionState.AVAILABLE, VersionState.END)
                                    for s in m.status("m")), "the previous version to unload")
        versions = [s.version for s in m.status("m")]
        assert versions[0] == total and len(versions) == manager_module.MAX_ENDED_VERSIONS + 1
        assert min(versions) == total - manager_module.MAX_ENDED_VERSIONS

    run(body, loader)


def test_versions_wait_in_start_for_a_load_slot():
    loader = FakeLoader()
    loader.gates["/b/1"] = threading.Event()

    async def body(m: ModelManager):
        m.add_model("m", "/b")
        m.set_aspired("m", {1: "/b/1", 2: "/b/2"})
        await until(lambda: state(m, "m", 1) == VersionState.LOADING, "v1 to take the only slot")
        assert state(m, "m", 2) == VersionState.START
        loader.gates["/b/1"].set()
        await m.wait_until_settled(["m"], timeout=DEADLINE)
        assert state(m, "m", 1) == VersionState.AVAILABLE and state(m, "m", 2) == VersionState.AVAILABLE

    run(body, loader, max_concurrent_loads=1)



def test_a_version_aspired_again_while_it_unloads_loads_afresh():
    """Unload then load at once (the V2 repository, a config dropping and re-adding a model):
    the version comes back AVAILABLE once its unload is done, never stuck at END."""
    async def scenario():
        closing, loop = asyncio.Event(), asyncio.get_running_loop()

        class Slow:
            def close(self):  # the unload takes a while (a big model's memory going back)
                loop.call_soon_threadsafe(closing.set)
                time.sleep(0.3)

        manager = ModelManager(loader=lambda path: Slow(), executor=ThreadPoolExecutor(2))
        manager.add_model("m", "/base")
        manager.set_aspired("m", {1: "/base/1"})
        await manager.wait_until_settled(["m"], timeout=10)
        manager.set_aspired("m", {})
        await asyncio.wait_for(closing.wait(), 10)  # unloading now
        manager.set_aspired("m", {1: "/base/1"})
        await manager.wait_until_settled(["m"], timeout=10)
        assert manager.unavailable(["m"]) == []
        assert [s.state for s in manager.status("m")] == [VersionState.AVAILABLE]
        await manager.stop()
    asyncio.run(scenario())


# ---- budgets of loaded models (core/residency.py) -------------------------------------------

def _idle(_name: str) -> bool:
    return False


def test_residency_evicts_the_least_recently_used_and_skips_busy_ones():
    residency = Residency(max_models=3, preload=frozenset({"p"}))
    assert residency.admit("a", _idle) == [] and residency.admit("b", _idle) == []
    residency.touch("a")  # b is now the least recently used
    assert residency.admit("c", _idle) == ["b"]
    assert residency.admit("d", lambda name: name == "a") == ["c"]  # a has requests in flight
    _expect(Code.UNAVAILABLE, lambda: residency.admit("e", lambda name: True), "all have requests in flight")
    assert residency.resident == ["p", "a", "d"]


def test_residency_by_memory_evicts_until_the_new_model_fits():
    residency = Residency(max_bytes=100 << 20, preload=frozenset({"p"}), measure=lambda folders: 0)
    mib = 1 << 20
    for name, files in (("p", 19), ("a", 29), ("b", 29), ("c", 9), ("big", 59), ("huge", 80)):
        residency.sized(name, [f"/{name}/1"], files * mib)  # + 1 MiB for its one version
    assert [residency.admit(n, _idle) for n in ("a", "b", "c")] == [[], [], []]  # 20 + 30 + 30 + 10
    assert residency.admit("big", _idle) == ["a", "b"]  # 60 more: a alone leaves 70 + 60 > 100
    _expect(Code.FAILED_PRECONDITION, lambda: residency.admit("huge", _idle),
            "needs about 81 MiB, more than --max_loaded_model_memory_mb (100 MiB)")
    assert residency.resident == ["p", "c", "big"]
    assert residency.unsized("a", ["/a/1"]) is False and residency.unsized("a", ["/a/1", "/a/2"]) is True


def test_a_cold_start_loads_once_the_evicted_model_has_unloaded():
    loader = FakeLoader()
    loader.close_gates["/a/1"] = threading.Event()

    async def body(m: ModelManager):
        for name in ("a", "b"):
            m.add_model(name, f"/{name}")
            m.set_aspired(name, {1: f"/{name}/1"})
        await m.ensure_resident("a", DEADLINE)
        b = asyncio.ensure_future(m.ensure_resident("b", DEADLINE))
        await until(lambda: loader.servables["/a/1"].close_started.is_set(), "a's unload to start")
        await ticks()
        assert loader.count("/b/1") == 0 and not b.done()  # a's memory goes first
        loader.close_gates["/a/1"].set()
        await asyncio.wait_for(b, DEADLINE)
        assert states(m, "b") == {1: VersionState.AVAILABLE} and states(m, "a") == {1: VersionState.END}
        assert m.not_loaded("a") and not m.not_loaded("b")

    run(body, loader, residency=Residency(max_models=1))
