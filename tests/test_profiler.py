"""TensorFlow's profiler service on the gRPC port (--enable_profiler, on by default, as in TF Serving)."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from support.server import ServerProcess, wait_for
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from pyserving.protocols.grpc.profiler import ProfileRequest, ProfileResponse, TerminateRequest, TerminateResponse

HALF_PLUS_TWO = Path(__file__).resolve().parent.parent.parent / "shared" / "tfs-testdata" / "saved_model_half_plus_two_cpu"


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def server(tmp_path_factory, traces):
    root = tmp_path_factory.mktemp("profiler")
    server = ServerProcess("--model_name=half_plus_two", f"--model_base_path={HALF_PLUS_TWO}",
                           f"--profiler_log_dir={traces}", log_path=root / "server.log").wait_ready()
    yield server
    assert server.stop() == 0


def _rpc(channel: grpc.Channel, method: str, response_type):
    return channel.unary_unary(f"/tensorflow.ProfilerService/{method}",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)


def test_tensorflows_profiler_client_captures_a_trace(server, traces):
    """What tf.profiler's client and TensorBoard's "capture profile" do against TF Serving, with
    their log folder inside the server's --profiler_log_dir."""
    logdir = traces / "tensorboard"
    stop = threading.Event()
    answered = []

    def traffic() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                r = http.post(server.rest_url + "/v1/models/half_plus_two:predict",
                              json={"instances": [1.0, 2.0, 5.0]}, timeout=10)
                answered.append(r.json() == {"predictions": [2.5, 3.0, 4.5]})

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        wait_for(lambda: len(answered) > 5, 30, "traffic to flow")
        tf.profiler.experimental.client.trace(f"grpc://{server.grpc_target}", str(logdir), 1000)
    finally:
        stop.set()
        thread.join()
    assert answered and all(answered)
    found = list((logdir / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(found) == 1, found
    assert found[0].stat().st_mode & 0o777 == 0o640  # not for every user of the machine
    space = xplane_pb2.XSpace.FromString(found[0].read_bytes())
    events = {m.name for plane in space.planes for m in plane.event_metadata.values()}
    # The model's own op and the Session run that served the requests were recorded.
    assert "SessionRun" in events and "Mul:Mul" in events, sorted(events)[:40]


def test_xspace_returned_in_the_response_when_asked(server):
    request = ProfileRequest(session_id="s1", emit_xspace=True)
    request.opts.duration_ms = 200
    with server.channel() as channel:
        response = _rpc(channel, "Profile", ProfileResponse)(request, timeout=30)
    assert not response.empty_trace
    assert xplane_pb2.XSpace.FromString(response.xspace).planes


def test_terminate_ends_a_capture_early(server, traces):
    request = ProfileRequest(session_id="long", repository_root="relative", host_name="h")
    request.opts.duration_ms = 600_000
    with server.channel() as channel:
        future = _rpc(channel, "Profile", ProfileResponse).future(request, timeout=120)
        # Terminate until the capture has started and ended (it may not have begun at the first call).
        wait_for(lambda: _rpc(channel, "Terminate", TerminateResponse)(
            TerminateRequest(session_id="long"), timeout=10) is not None and future.done(), 60,
            "the capture to end on Terminate", interval=0.2)
        future.result()
    assert (traces / "relative" / "long" / "h.xplane.pb").exists()  # a relative root: from the flag's folder


@pytest.mark.parametrize("fields,needle", [
    ({"session_id": "../../etc", "repository_root": "r"}, "not a valid file name"),
    ({"session_id": "..", "repository_root": "r"}, "not a valid file name"),
    ({"session_id": "s", "host_name": "a/b", "repository_root": "r"}, "not a valid file name"),
    ({"session_id": "s", "host_name": "..", "repository_root": "r"}, "not a valid file name"),
    ({"session_id": "s"}, "repository_root is required"),
    ({"session_id": "s", "repository_root": "/etc/cron.d"}, "is outside --profiler_log_dir"),
    ({"session_id": "s", "repository_root": "../../../../tmp"}, "is outside --profiler_log_dir"),
])
def test_hostile_profile_requests_are_invalid_argument(server, fields, needle):
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            _rpc(channel, "Profile", ProfileResponse)(ProfileRequest(**fields), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


def test_a_symlink_in_the_folder_is_never_followed(server, traces, tmp_path):
    """A planted link where the trace file or its folder would go: refused, its target untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (traces / "planted" / "s").mkdir(parents=True)
    (traces / "planted" / "s" / "h.xplane.pb").symlink_to(victim)
    (traces / "escape").symlink_to(tmp_path, target_is_directory=True)
    with server.channel() as channel:
        for root, code in (("planted", grpc.StatusCode.ALREADY_EXISTS), ("escape", grpc.StatusCode.INVALID_ARGUMENT)):
            request = ProfileRequest(session_id="s", repository_root=root, host_name="h")
            request.opts.duration_ms = 100
            with pytest.raises(grpc.RpcError) as info:
                _rpc(channel, "Profile", ProfileResponse)(request, timeout=30)
            assert info.value.code() == code, info.value.details()
    assert victim.read_text() == "precious"
    assert not (tmp_path / "s").exists()


def test_a_link_planted_during_a_capture_gets_nothing_made_through_it(server, traces, tmp_path):
    """repository_root 'later' is checked when the capture starts; a link to elsewhere put in its
    place while recording gets no folder and no file made through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    request = ProfileRequest(session_id="s", repository_root="later", host_name="h")
    request.opts.duration_ms = 600_000
    with server.channel() as channel:
        probe = ProfileRequest(session_id="probe", emit_xspace=True)
        probe.opts.duration_ms = 1
        capture = [_rpc(channel, "Profile", ProfileResponse).future(request, timeout=120)]

        def recording() -> bool:
            """The one profiler session is taken by the capture (a probe finds it busy). A probe can
            take it first, and the capture then fails at once: it is sent again."""
            if capture[0].done():
                capture[0] = _rpc(channel, "Profile", ProfileResponse).future(request, timeout=120)
                return False
            try:
                _rpc(channel, "Profile", ProfileResponse)(probe, timeout=10)
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAVAILABLE and not capture[0].done()
            return False

        wait_for(recording, 60, "the capture to start", interval=0.1)
        future = capture[0]
        (traces / "later").symlink_to(elsewhere, target_is_directory=True)
        wait_for(lambda: _rpc(channel, "Terminate", TerminateResponse)(
            TerminateRequest(session_id="s"), timeout=10) is not None and future.done(), 60,
            "the capture to end on Terminate", interval=0.2)
        with pytest.raises(grpc.RpcError) as info:
            future.result()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "now resolves outside --profiler_log_dir" in info.value.details()
    assert list(elsewhere.iterdir()) == []


def test_without_a_trace_folder_only_emit_xspace_captures(tmp_path):
    server = ServerProcess("--model_name=half_plus_two", f"--model_base_path={HALF_PLUS_TWO}",
                           log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        with server.channel() as channel:
            with pytest.raises(grpc.RpcError) as info:
                _rpc(channel, "Profile", ProfileResponse)(
                    ProfileRequest(session_id="s", repository_root=str(tmp_path)), timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--profiler_log_dir" in info.value.details()
            request = ProfileRequest(session_id="s", emit_xspace=True)
            request.opts.duration_ms = 100
            assert xplane_pb2.XSpace.FromString(_rpc(channel, "Profile", ProfileResponse)(request, timeout=30).xspace).planes
        assert not (tmp_path / "s").exists()
    finally:
        assert server.stop() == 0


def test_overlong_capture_and_garbage_are_refused(server):
    request = ProfileRequest(session_id="s", repository_root="r")
    request.opts.duration_ms = 10**12
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            _rpc(channel, "Profile", ProfileResponse)(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        garbage = channel.unary_unary("/tensorflow.ProfilerService/Profile")
        with pytest.raises(grpc.RpcError) as info:
            garbage(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in server.log()


def test_profiler_off(tmp_path):
    server = ServerProcess("--model_name=half_plus_two", f"--model_base_path={HALF_PLUS_TWO}",
                           "--enable_profiler=false", log_path=tmp_path / "server.log", rest=False).wait_ready()
    try:
        with server.channel() as channel:
            with pytest.raises(grpc.RpcError) as info:
                _rpc(channel, "Profile", ProfileResponse)(ProfileRequest(session_id="s"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert server.stop() == 0
