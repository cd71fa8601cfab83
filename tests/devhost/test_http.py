"""devhost's HTTP host over real sockets: bursts, body limits, bad framing, methods and stalled clients."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import httpx
import orjson
import pytest

from devhost.host import Host
from devhost.http import HttpHost
from functions.predict import blueprint


@pytest.fixture(scope="module")
def api() -> Iterator[HttpHost]:
    """The registered HTTP functions on a free port (no storage needed: the tests stop before a function runs)."""
    host = HttpHost(Host(), 0, read_timeout=5.0).start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def impatient() -> Iterator[HttpHost]:
    """A host that cuts a silent client off after half a second."""
    host = HttpHost(Host(), 0, read_timeout=0.5).start()
    try:
        yield host
    finally:
        host.stop()


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _answer(sock: socket.socket, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    """Read one response from ``sock`` (its body by Content-Length, so a kept-alive socket stays usable)."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response, response.read()


def _request(port: int, raw: bytes, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes, bytes]:
    """Send ``raw`` on a new connection; the response, its body, and what follows it until the server closes."""
    with closing(_connect(port)) as sock:
        sock.sendall(raw)
        response, body = _answer(sock, method)
        rest = sock.recv(1024)
    return response, body, rest


def _error(response: http.client.HTTPResponse, body: bytes) -> dict:
    assert response.getheader("Content-Type") == "application/json"
    return orjson.loads(body)["error"]


def test_a_burst_of_200_connections_is_answered_without_resets(api):
    """200 connections opened at once all connect at once (no SYN retry) and each gets its 404 JSON."""
    socks: list[socket.socket] = []
    try:
        for _ in range(200):
            # past a full listen queue the kernel drops the SYN and the client retries after 1 s
            socks.append(_connect(api.port, timeout=0.8))
        for sock in socks:
            sock.settimeout(10)
            sock.sendall(b"GET /api/nope HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [_answer(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert [r.status for r, _ in answers] == [404] * 200
    assert {_error(r, b)["code"] for r, b in answers} == {"not_found"}
    assert api.server.request_queue_size >= 128


def test_an_oversized_body_is_refused_from_its_content_length(api):
    """Content-Length 3_000_000, no body: 413 JSON at once, then close; a client sending it all reads the same."""
    started = time.monotonic()
    response, body, rest = _request(
        api.port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n", "POST"
    )
    assert time.monotonic() - started < 2.0  # the read timeout is 5 s: the server did not wait for the body
    assert response.status == 413
    assert _error(response, body) == {"code": "too_large", "message": "request body over 2000000 bytes"}
    assert (response.getheader("Connection"), rest) == ("close", b"")
    streamed = httpx.post(f"{api.base_url}/predict", content=b"x" * 3_000_000, timeout=10)
    assert (streamed.status_code, streamed.json()["error"]["code"]) == (413, "too_large")  # no reset mid-upload


def test_expect_100_continue_gets_the_413_instead_of_continue(api):
    """A client that asks before sending an oversized body is told 413, never 100 Continue."""
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\nExpect: 100-continue\r\n\r\n"
    response, body, _ = _request(api.port, head, "POST")
    assert (response.status, _error(response, body)["code"]) == (413, "too_large")


@pytest.mark.parametrize("length", ["-1", "abc", "+5", "0x10", ""])
def test_an_invalid_content_length_is_400_json(api, length):
    """A negative, non-numeric or signed Content-Length is a 400 JSON answer, not a traceback or a wait."""
    raw = f"POST /api/nope HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    response, body, rest = _request(api.port, raw, "POST")
    assert response.status == 400
    assert _error(response, body) == {"code": "malformed", "message": f"invalid Content-Length {length!r}"}
    assert (response.getheader("Connection"), rest) == ("close", b"")


def test_conflicting_content_lengths_are_400_json(api):
    """Two different Content-Length headers leave the body's end unknown: 400 JSON."""
    raw = b"POST /api/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    response, body, _ = _request(api.port, raw, "POST")
    assert (response.status, _error(response, body)["code"]) == (400, "malformed")


@pytest.mark.parametrize(("path", "allow"), [("/api/predict/AAA", "GET"), ("/api/predict", "POST")])
def test_head_is_405_with_allow_and_no_body(api, path, allow):
    """HEAD on a route: 405 with Allow and JSON headers but no body, and the connection stays usable."""
    with closing(_connect(api.port)) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, body = _answer(sock, "HEAD")
        assert (response.status, response.getheader("Allow"), body) == (405, allow, b"")
        assert response.getheader("Content-Type") == "application/json"
        sock.sendall(b"GET /api/nope HTTP/1.1\r\nHost: x\r\n\r\n")  # no stray body bytes precede this answer
        after, after_body = _answer(sock)
    assert (after.status, _error(after, after_body)["code"]) == (404, "not_found")


@pytest.mark.parametrize(("path", "allow"), [("/api/predict/AAA", "GET"), ("/api/predict", "POST")])
def test_other_methods_are_405_json_with_allow(api, path, allow):
    """OPTIONS, PUT, DELETE and PATCH on a route: 405 JSON naming the route's methods in Allow."""
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH"):
        response = httpx.request(method, f"http://127.0.0.1:{api.port}{path}", timeout=5)
        assert (response.status_code, response.headers["allow"]) == (405, allow), method
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "error": {"code": "method_not_allowed", "message": f"{method} not allowed; use {allow}"}
        }


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed"),
        (b"BREW /api/predict HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
    ],
)
def test_requests_http_server_rejects_are_json(api, raw, status, code):
    """A malformed request line (400) and an unknown method (501) are answered in JSON, never an HTML page."""
    response, body, _ = _request(api.port, raw)
    assert (response.status, _error(response, body)["code"]) == (status, code)


def test_a_failing_function_is_a_500_json(api, monkeypatch):
    """A function that raises gives 500 JSON on a connection that stays open, not a dropped connection."""

    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(blueprint, "_respond", boom)
    with closing(_connect(api.port)) as sock:
        sock.sendall(b"GET /api/predict/AAA HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = _answer(sock)
        assert (response.status, _error(response, body)["code"]) == (500, "internal_error")
        sock.sendall(b"GET /api/nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock)[0].status == 404


def test_a_client_that_stalls_mid_body_gets_408_after_the_timeout(impatient):
    """Headers and 10 of 100 body bytes, then silence: 408 JSON after the 0.5 s read timeout, then close."""
    with closing(_connect(impatient.port)) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        response, body = _answer(sock, "POST")
        waited = time.monotonic() - started
        assert sock.recv(1024) == b""
    assert 0.4 < waited < 4.0
    assert (response.status, _error(response, body)["code"]) == (408, "timeout")
    assert response.getheader("Connection") == "close"


def test_a_client_that_stalls_in_its_headers_is_cut_off(impatient):
    """A request line and half the headers, then silence: the host closes the connection after the timeout."""
    with closing(_connect(impatient.port)) as sock:
        sock.sendall(b"GET /api/predict/AAA HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert 0.4 < time.monotonic() - started < 4.0
