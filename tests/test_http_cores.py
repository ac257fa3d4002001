"""Both REST HTTP cores (--rest_api_http_core: native, the default, and aiohttp) answer the same
raw requests alike: routing, HEAD, bodies (gzip, chunked, over the limit), Expect, malformed
requests, absolute targets, HTTP/1.0 and pipelining. The rest of the suite runs on the default core."""

from __future__ import annotations

import gzip
import json
import socket

import pytest
from support.server import serve_half_plus_two

LIMIT = 1 << 20
PREDICT = b'{"instances": [1.0, 2.0]}'
V2 = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}).encode()


@pytest.fixture(scope="module", params=["native", "aiohttp"])
def server(tmp_path_factory, request):
    server = serve_half_plus_two(tmp_path_factory.mktemp(request.param), f"--rest_api_http_core={request.param}",
                                 f"--rest_api_max_request_bytes={LIMIT}")
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def exchange(server, data: bytes) -> bytes:
    """Send ``data`` on a new connection, read until the server closes it."""
    answer = b""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(data)
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def responses(answer: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Each (status, headers, body) in ``answer``, 1xx interim answers included."""
    found = []
    while answer:
        head, _, rest = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", 0))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        answer = rest[length:]
    return found


def request(method: str, target: str, body: bytes = b"", headers: str = "", version: str = "HTTP/1.1") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (f"{method} {target} {version}\r\nHost: t\r\n{headers}{length}Connection: close\r\n\r\n").encode() + body


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


CASES = {
    "predict": (request("POST", "/v1/models/hpt:predict", PREDICT), 200, {"predictions": [2.5, 3.0]}),
    "status": (request("GET", "/v1/models/hpt"), 200, None),
    "v2 infer": (request("POST", "/v2/models/hpt/infer", V2), 200, None),
    "v2 infer version": (request("POST", "/v2/models/hpt/versions/123/infer", V2), 200, None),
    "encoded path": (request("POST", "/v1/models/%68pt:predict", PREDICT), 200, {"predictions": [2.5, 3.0]}),
    "absolute target": (request("POST", "http://t/v1/models/hpt:predict", PREDICT), 200, {"predictions": [2.5, 3.0]}),
    "HTTP/1.0": (request("POST", "/v1/models/hpt:predict", PREDICT, version="HTTP/1.0"), 200, None),
    "gzip": (request("POST", "/v1/models/hpt:predict", gzip.compress(PREDICT), "Content-Encoding: gzip\r\n"), 200,
             {"predictions": [2.5, 3.0]}),
    "chunked": ((b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n" + chunked(PREDICT)), 200, {"predictions": [2.5, 3.0]}),
    "unknown route": (request("GET", "/nope"), 404, None),
    "bad version": (request("GET", "/v1/models/hpt/versions/x"), 404, None),
    "wrong method": (request("POST", "/healthz", b"{}"), 404, {"error": "Malformed request: POST /healthz"}),
    "declared too large": (request("POST", "/v1/models/hpt:predict", b"x" * (LIMIT + 1)), 413, None),
    "chunks too large": ((b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                          b"Connection: close\r\n\r\n" + chunked(b"x" * (LIMIT + 1))), 413, None),
    "expect fish": (request("POST", "/v1/models/hpt:predict", PREDICT, "Expect: fish\r\n"), 417, None),
    "asterisk target": (b"POST * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 400, None),
    "long header": (request("GET", "/v1/models/hpt", headers="X: " + "y" * 9000 + "\r\n"), 400, None),
    "bad method": (b"G\xffT /v1/models/hpt HTTP/1.1\r\nHost: t\r\n\r\n", 400, None),
}


@pytest.mark.parametrize("case", CASES)
def test_raw_requests_answer_alike(server, case):
    data, status, body = CASES[case]
    answers = responses(exchange(server, data))
    assert answers and answers[-1][0] == status, (case, answers[:2])
    if body is not None:
        assert json.loads(answers[-1][2]) == body
    if status == 200 and case != "HTTP/1.0":
        assert "date" in answers[-1][1]


def test_head_answers_the_get_length_without_a_body(server):
    (get_status, get_headers, get_body), = responses(exchange(server, request("GET", "/v1/openapi.json")))
    answer = exchange(server, request("HEAD", "/v1/openapi.json"))
    assert answer.endswith(b"\r\n\r\n") and get_status == 200
    assert f"content-length: {len(get_body)}".encode() in answer.lower() and int(get_headers["content-length"]) > 0


def test_expect_100_continue_then_the_answer(server):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PREDICT))
        assert connection.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        connection.sendall(PREDICT)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert responses(answer)[-1][:1] == (200,) and json.loads(responses(answer)[-1][2]) == {"predictions": [2.5, 3.0]}


def test_pipelined_requests_are_answered_in_order(server):
    keep = lambda method, target, body=b"": (  # noqa: E731
        f"{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    bodies = [json.dumps({"instances": [float(i)]}).encode() for i in range(20)]
    data = b"".join(keep("POST", "/v1/models/hpt:predict", b) for b in bodies) + keep("GET", "/nope") + \
        request("GET", "/healthz")
    answers = responses(exchange(server, data))
    assert [s for s, _, _ in answers] == [200] * 20 + [404, 200]
    assert [json.loads(b)["predictions"] for _, _, b in answers[:20]] == [[i / 2 + 2] for i in range(20)]


def test_a_body_over_the_limit_is_answered_413_while_it_is_still_being_sent(server):
    """The client reads the 413, not a reset, though it sends the whole body after it."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                           % (4 * LIMIT))
        connection.sendall(b"x" * (4 * LIMIT))
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := connection.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_header_that_never_ends_is_refused_long_before_its_timeout(server):
    """A value with no line end grows in the parser's buffer: refused once the head passes its cap."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(b"GET /v1/models/hpt HTTP/1.1\r\nHost: t\r\nX: ")
        answer, sent = b"", 0
        try:
            while sent < 64 << 20 and not answer:  # 64 MiB at most; the cap is far below
                connection.sendall(b"y" * 65536)
                sent += 65536
                connection.setblocking(False)
                try:
                    answer = connection.recv(65536)
                except BlockingIOError:
                    pass
                connection.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert answer[:12] in (b"HTTP/1.1 431", b"HTTP/1.0 400"), (sent, answer[:200])  # native's, aiohttp's
    assert sent < 16 << 20, sent  # what the socket buffers took before the answer came back
