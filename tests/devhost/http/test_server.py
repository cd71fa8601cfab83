"""devhost's HTTP host over real sockets: bursts, body limits, bad framing, methods and stalled clients."""

from __future__ import annotations

import http.client
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from devhost.app.host import Host
from devhost.http.server import HttpHost
from functions.predict import blueprint
from tests.devhost.http.ping_host import PingHost

ROOT = Path(__file__).resolve().parents[3]
# a request whose headers never end: what a slow client trickles, a byte at a time
SLOW_HEAD = b"GET /api/ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096


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


@pytest.fixture
def strict() -> Iterator[HttpHost]:
    """Ping and echo behind a host that wants the headers within 1 s and the body within 1 s more."""
    host = HttpHost(PingHost(), 0, read_timeout=5.0, header_timeout=1.0, body_timeout=1.0).start()
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
    ("method", "path", "allow"),
    [
        ("TRACE", "/api/predict/AAA", "GET"),
        ("CONNECT", "/api/predict/AAA", "GET"),
        ("PROPFIND", "/api/predict", "POST"),
        ("BREW", "/api/predict", "POST"),
        ("X-CUSTOM_1", "/api/predict/AAA", "GET"),
        ("get", "/api/predict/AAA", "GET"),  # methods are case-sensitive: "get" is not GET
        ("POST", "/api/predict/AAA", "GET"),
        ("GET", "/api/predict", "POST"),
    ],
)
def test_any_method_a_route_does_not_serve_is_405_json_with_allow(api, method, path, allow):
    """Standard, WebDAV and invented methods on a route: 405 JSON naming its methods in Allow, connection kept."""
    with closing(_connect(api.port)) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, body = _answer(sock, method)
        assert (response.status, response.getheader("Allow"), response.getheader("Connection")) == (405, allow, None)
        assert _error(response, body) == {"code": "method_not_allowed", "message": f"{method} not allowed; use {allow}"}
        sock.sendall(b"GET /api/nope HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection answers the next request
        assert _answer(sock)[0].status == 404


def test_an_unknown_method_off_any_route_is_404(api):
    """A method no route serves, on a path no function serves: 404 JSON, as for any other method."""
    response, body, _ = _request(api.port, b"PROPFIND /api/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (response.status, _error(response, body)["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed"),
        (b"GE(T /api/predict/AAA HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed"),
        (b"%s /api/predict/AAA HTTP/1.1\r\nHost: x\r\n\r\n" % (b"M" * 33), 400, "malformed"),
    ],
)
def test_a_malformed_request_line_or_method_is_400_json(api, raw, status, code):
    """A malformed request line, a method that is no HTTP token, or one over 32 characters: 400 JSON, no HTML page."""
    response, body, rest = _request(api.port, raw)
    assert (response.status, _error(response, body)["code"], rest) == (status, code, b"")


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


@contextmanager
def _slow_clients(port: int, count: int, every: float = 1.0) -> Iterator[tuple[list[socket.socket], list[int]]]:
    """``count`` clients trickling SLOW_HEAD, each one byte every ``every`` s, from one thread.

    Yields the clients the server has not closed yet (a send that fails drops a client) and how
    many were left after each round.
    """
    socks = [_connect(port) for _ in range(count)]
    alive, rounds, stop = list(socks), [], threading.Event()

    def trickle() -> None:
        for i in range(len(SLOW_HEAD)):
            for sock in list(alive):
                try:
                    sock.send(SLOW_HEAD[i : i + 1])
                    if select.select([sock], [], [], 0)[0] and not sock.recv(1):  # the server closed it
                        alive.remove(sock)
                except OSError:
                    alive.remove(sock)
            rounds.append(len(alive))
            if stop.wait(every):
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield alive, rounds
    finally:
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.close()


def _trickle_until_closed(sock: socket.socket, data: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send ``data`` a byte every ``every`` s until the server closes; the seconds that took and what it answered."""
    started, received = time.monotonic(), b""
    for i in range(len(data)):
        if time.monotonic() - started > limit:
            break
        try:
            sock.send(data[i : i + 1])
            if select.select([sock], [], [], every)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError:  # reset: closed just the same
            break
    return time.monotonic() - started, received


def test_a_client_trickling_its_headers_is_closed_at_the_header_deadline(strict):
    """A header byte every 0.2 s never trips the 5 s read timeout, but the connection closes at the 1 s deadline."""
    with closing(_connect(strict.port)) as sock:
        took, received = _trickle_until_closed(sock, SLOW_HEAD, every=0.2, limit=6.0)
    assert (received, 0.9 < took < 2.5) == (b"", True), took


def test_a_client_trickling_its_body_gets_408_at_the_body_deadline(strict):
    """Headers at once, then a body byte every 0.2 s: 408 JSON at the 1 s body deadline, then close."""
    with closing(_connect(strict.port)) as sock:
        sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        took, received = _trickle_until_closed(sock, b"x" * 100, every=0.2, limit=6.0)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout" and b"Connection: close" in head
    assert orjson.loads(body)["error"]["code"] == "timeout"
    assert 0.9 < took < 2.5, took


def test_a_request_sent_whole_is_answered_by_the_strict_host(strict):
    """The deadlines leave a prompt client alone: GET and POST on one kept-alive connection both answer 200."""
    with httpx.Client(base_url=strict.base_url, timeout=5) as client:
        answers = [client.get("/ping"), client.post("/echo", content=b"hello")]
    assert [(r.status_code, r.content) for r in answers] == [(200, b"pong"), (200, b"hello")]


def test_200_slow_clients_hold_at_most_the_cap_while_a_get_is_answered_at_once():
    """200 clients trickling headers: at most 20 held, a GET answered at once, the held ones closed at the deadline."""
    host = HttpHost(PingHost(), 0, read_timeout=5.0, header_timeout=3.0, max_connections=20).start()

    def held() -> tuple[int, int]:
        """Connections open and their threads, now."""
        name = f"devhost-http-{host.port}"
        return host.server.open, sum(t.name == name for t in threading.enumerate())

    try:
        with _slow_clients(host.port, 200) as (alive, rounds):
            time.sleep(1.5)
            before = held()
            started = time.monotonic()
            response = httpx.get(f"{host.base_url}/ping", timeout=5)
            took = time.monotonic() - started
            after = held()
            time.sleep(3.5)  # past the deadline of every slow client the server held
            left = len(alive)
    finally:
        host.stop()
    assert (response.status_code, response.text) == (200, "pong")
    assert took < 1.0, took
    assert max(*before, *after) <= 20 and before[0] >= 10, (before, after)  # full of slow clients, never past the cap
    assert left == 0, f"{left} slow clients still open after the deadline (after each round: {rounds})"


def test_at_a_low_file_limit_slow_clients_cannot_starve_a_get():
    """At ulimit -n 96 the default cap (a quarter of it) keeps descriptors for a GET among 150 slow clients."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.devhost.http.ping_host", "96"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with _slow_clients(port, 150):
            time.sleep(1.5)
            started = time.monotonic()
            response = httpx.get(f"http://127.0.0.1:{port}/api/ping", timeout=4)
            took = time.monotonic() - started
        assert child.poll() is None  # the host lives on
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert (response.status_code, response.text, took < 1.0) == (200, "pong", True), took


def test_past_the_cap_with_every_connection_serving_a_request_the_answer_is_503_with_retry_after():
    """Two connections reading their bodies fill a cap of two: a GET gets 503 JSON with Retry-After, then 200."""
    host = HttpHost(PingHost(), 0, read_timeout=5.0, body_timeout=1.5, max_connections=2).start()
    try:
        busy = [_connect(host.port) for _ in range(2)]
        for sock in busy:  # headers whole, body never: each holds its thread in the body read, not evictable
            sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        time.sleep(0.3)
        refused = httpx.get(f"{host.base_url}/ping", timeout=5)
        time.sleep(1.5)  # the body deadline frees both
        served = httpx.get(f"{host.base_url}/ping", timeout=5)
        for sock in busy:
            sock.close()
    finally:
        host.stop()
    assert (refused.status_code, refused.headers["retry-after"], refused.headers["connection"]) == (503, "1", "close")
    assert refused.json() == {"error": {"code": "busy", "message": "every connection is busy; retry shortly"}}
    assert (served.status_code, served.text) == (200, "pong")
