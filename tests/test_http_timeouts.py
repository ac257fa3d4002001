"""REST read timeouts, measured on raw sockets: slow headers, a stalled body, idle keep-alive."""

from __future__ import annotations

import json
import select
import socket
import time

import pytest
from support import models
from support.server import serve_models

# Run alone after the parallel phase (tools/run-tests.sh): connection timeouts measured to a 1 s margin.
pytestmark = pytest.mark.serial

HEADER_S, BODY_S, IDLE_S = 1.0, 1.5, 3.0  # the flags below, in seconds
MARGIN_S = 1.0  # scheduling slack on a busy 2-core machine (under IDLE_S - HEADER_S)


@pytest.fixture(scope="module", params=["native", "aiohttp"])
def server(tmp_path_factory, request):
    """Both HTTP cores (--rest_api_http_core) keep the same deadlines."""
    root = tmp_path_factory.mktemp("http_timeouts")
    server = serve_models(root, {"tf1": models.export_tf1_half_plus_two}, f"--rest_api_http_core={request.param}",
                          f"--rest_api_header_timeout_in_ms={int(HEADER_S * 1000)}",
                          f"--rest_api_body_timeout_in_ms={int(BODY_S * 1000)}",
                          f"--rest_api_idle_timeout_in_ms={int(IDLE_S * 1000)}")
    yield server
    assert server.stop() == 0


@pytest.fixture
def serves_after(server):
    """Each test ends by checking the server still answers normally."""
    yield
    r = server.post("/v1/models/tf1:predict", json={"instances": [[1.0]]})
    assert r.status_code == 200 and r.json() == {"predictions": [[2.5]]}


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)


def read_until_closed(sock: socket.socket, limit: float = 30.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed (monotonic)."""
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic()
        data += chunk


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(server, serves_after):
    with connect(server) as sock:
        start = time.monotonic()
        data, closed = read_until_closed(sock)
    assert data == b""  # no request began: nothing to answer
    assert HEADER_S - 0.2 <= closed - start <= HEADER_S + MARGIN_S


def test_partial_headers_get_408_and_the_connection_closed(server, serves_after):
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/models/tf1:predict HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
        data, closed = read_until_closed(sock)
    assert HEADER_S - 0.2 <= closed - start <= HEADER_S + MARGIN_S
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data
    assert b"connection: close" in head.lower()
    assert "--rest_api_header_timeout_in_ms" in json.loads(body)["error"]


def test_trickled_headers_are_closed_at_the_header_timeout(server, serves_after):
    """Slowloris: a byte every 100 ms keeps the connection busy, but never completes a request."""
    request = b"GET /v1/models/tf1 HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"a" * 1000
    with connect(server) as sock:
        start = time.monotonic()
        closed_at = None
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            readable, _, _ = select.select([sock], [], [], 0.1)  # the client's pause between bytes
            if readable:
                data, closed_at = read_until_closed(sock)
                assert data.startswith(b"HTTP/1.1 408 "), data
                break
    assert closed_at is not None, "the server let a trickling client go on past the header timeout"
    assert HEADER_S - 0.2 <= closed_at - start <= HEADER_S + MARGIN_S


def test_stalled_body_gets_408_with_a_json_error(server, serves_after):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/models/tf1:predict HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"instances')
        start = time.monotonic()
        status, headers, body = read_response(sock)
        answered = time.monotonic()
    assert status == 408  # not 504: that stays for a model call past --rest_api_timeout_in_ms
    assert BODY_S - 0.2 <= answered - start <= BODY_S + MARGIN_S
    assert headers["content-type"].startswith("application/json")
    assert headers.get("connection", "").lower() == "close"
    assert "--rest_api_body_timeout_in_ms" in json.loads(body)["error"]


def test_idle_keep_alive_connection_closes_after_the_idle_timeout(server, serves_after):
    request = b"GET /v1/models/tf1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock)
        assert status == 200 and b"AVAILABLE" in body
        # The client pauses longer than the header timeout: an idle connection is not a slow
        # request, so the next request on it is still served.
        readable, _, _ = select.select([sock], [], [], HEADER_S + 0.5)
        assert not readable, "closed (or sent something) while idle, before the idle timeout"
        sock.sendall(request)
        status, _, _ = read_response(sock)
        idle_from = time.monotonic()
        assert status == 200
        data, closed = read_until_closed(sock)
    assert data == b""
    assert IDLE_S - 0.2 <= closed - idle_from <= IDLE_S + MARGIN_S
