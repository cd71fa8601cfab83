"""Serve the registered HTTP functions on loopback, with the route prefix from host.json.

Every error the host itself answers is JSON (``{"error": {"code", "message"}}``), as the API's own
errors are: 400 for a malformed request, 404 for no route, 405 (with ``Allow``) for any method the
route does not serve, standard or not, 408 for a client that stalls, 411/413 for a body without a
length or over the limit, 503 (with ``Retry-After``) when every connection is busy. The body's size
is judged from ``Content-Length`` before a byte of it is read.

Slow clients cannot hold the host: the request line and headers must arrive within a deadline, and
the body within another, however steadily the bytes trickle; at most ``max_connections``
connections (one thread each) are open, and a connection past the cap closes the oldest one still
waiting for its request, or is answered 503 when none is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import resource
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import azure.functions as func
import orjson
from azure.functions.decorators.function_app import Function

from devhost.app.host import Host
from devhost.shared.home import REPO_ROOT
from functions.predict.blueprint import MAX_BODY_BYTES as PREDICT_MAX_BODY_BYTES

log = logging.getLogger("devhost")
JSON = "application/json"
# the largest body a registered function accepts: a bigger one is refused before it is read
MAX_BODY_BYTES = PREDICT_MAX_BODY_BYTES
# a client that sends nothing for this long (request line, headers, body, or between keep-alive
# requests) loses its connection, so it cannot hold a thread forever
READ_TIMEOUT_SECONDS = 10.0
# a client sending one byte a second never trips that timeout: the request line and headers (with
# the wait for them on a kept-alive connection) must arrive within this, and the body within as long
HEADER_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 10.0
# open connections, one thread each: 256 fit a ulimit -n of 1024 with room for the functions' own
# (under a lower limit the cap is a quarter of it: see default_max_connections)
MAX_CONNECTIONS = 256
# how long a connection past the cap waits for the one it closed to let its thread go
EVICT_WAIT_SECONDS = 1.0
# how long a refused connection's request may take to arrive, to be read before the 503 and the close
REFUSE_WAIT_SECONDS = 0.05
# how long an answer given before the body was read waits for the rest of the body (see _linger)
LINGER_SECONDS = 2.0
_CODES = {400: "malformed", 408: "timeout", 413: "too_large"}  # the API's codes for these statuses
_LENGTH = re.compile(r"[0-9]+")  # ASCII digits only: int() also takes "+5", "1_0" and non-ASCII digits
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # an RFC 9110 token, short enough to name in a message
_BUSY_BODY = orjson.dumps({"error": {"code": "busy", "message": "every connection is busy; retry shortly"}})
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def root_page() -> str:
    """Where devhost's ``/`` redirects: the live page under the route prefix (``/api/live``)."""
    prefix = route_prefix().strip("/")
    return f"/{prefix}/live" if prefix else "/live"


def route_prefix() -> str:
    """``extensions.http.routePrefix`` of host.json (the host's default is ``api``)."""
    config = orjson.loads((REPO_ROOT / "host.json").read_bytes())
    return config.get("extensions", {}).get("http", {}).get("routePrefix", "api")


@dataclass(frozen=True)
class Route:
    """One HTTP function: its compiled route and methods."""

    function: Function
    pattern: re.Pattern[str]
    methods: frozenset[str]


def routes(host: Host) -> list[Route]:
    """The registered HTTP functions' routes (``{name}`` and ``{name:constraint}`` segments)."""
    prefix = route_prefix().strip("/")
    out = []
    for fn in host.functions("httpTrigger"):
        trigger = fn.get_trigger()
        template = (trigger.route or fn.get_function_name()).strip("/")
        regex = re.sub(r"\{(\w+)(?::[^}]*)?\??\}", r"(?P<\1>[^/]+)", template)
        path = f"/{prefix}/{regex}" if prefix else f"/{regex}"
        methods = frozenset(str(getattr(m, "value", m)).upper() for m in (trigger.methods or ["GET", "POST"]))
        out.append(Route(fn, re.compile(f"^{path}$"), methods))
    return out


def default_max_connections() -> int:
    """MAX_CONNECTIONS, or a quarter of the process's file descriptor limit where that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, soft // 4))


def error_body(code: str, message: str) -> bytes:
    """The API's error document."""
    return orjson.dumps({"error": {"code": code, "message": message}})


class _DeadlineReader(socket.SocketIO):
    """A connection's reads, each bounded by the idle timeout and by the deadline of the part being read."""

    def __init__(self, sock: socket.socket, idle: float) -> None:
        super().__init__(sock, "rb")
        self.sock, self.idle = sock, idle
        self.deadline: float | None = None

    def expire_at(self, deadline: float | None) -> None:
        """Bound the reads from now on by ``deadline`` (monotonic seconds), or by the idle timeout alone."""
        self.deadline = deadline
        if deadline is None:
            self.sock.settimeout(self.idle)

    def readinto(self, b: Any) -> int | None:
        """Read what has come, waiting no longer than the idle timeout or the deadline allow."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the deadline passed")
            self.sock.settimeout(min(self.idle, left))
        return super().readinto(b)


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests: the host's own checks (method, framing, route, size, deadlines), then the function.

    :func:`_handler` binds a subclass to the routes and limits of one :class:`HttpHost`.
    """

    protocol_version = "HTTP/1.1"
    # headers and body leave in two writes: with Nagle on, the body waits ~40 ms for the ACK
    disable_nagle_algorithm = True
    timeout: float  # the idle read timeout, set on the socket by StreamRequestHandler.setup
    table: list[Route]  # the routes, bound by _handler as the limits below
    root: str
    max_body: int
    header_timeout: float
    body_timeout: float
    server: _Server
    reader: _DeadlineReader

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the functions log what matters."""

    def setup(self) -> None:
        """Read through a deadline reader (the buffered file StreamRequestHandler made is closed, not leaked)."""
        super().setup()
        self.rfile.close()
        self.reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        """Wait for the next request, the request line and headers due within ``header_timeout``."""
        self.reader.expire_at(time.monotonic() + self.header_timeout)
        self.server.waiting(self.request)
        super().handle_one_request()

    def parse_request(self) -> bool:
        """Parse the request line and headers; False for a connection closed meanwhile to make room."""
        parsed = super().parse_request()
        self.reader.expire_at(None)
        if not self.server.claim(self.request):  # evicted: nothing can be written on it any more
            self.close_connection = True
            return False
        return parsed

    def __getattr__(self, name: str) -> Any:
        """Every method is dispatched (``do_<METHOD>``): a route answers 405 for one it does not serve, not 501."""
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _reply(self, status: int, body: bytes, headers: dict[str, str], close: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the body it does not send
            self.wfile.write(body)

    def _fail(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
        unread: bool = False,
    ) -> None:
        """Answer an error as JSON; ``close`` the connection after it, as always with the body ``unread``."""
        body, all_headers = error_body(code, message), {"Content-Type": JSON, **(headers or {})}
        self._reply(status, body, all_headers, close=close or unread)
        if unread:
            self._linger()

    def _linger(self) -> None:
        """Drop what the client still sends for a while, then let the connection close.

        Closing a socket with unread data in it sends a reset, which can destroy the answer
        before the client reads it: a client still writing its 3 MB body would see "connection
        reset" instead of the 413. So stop writing, and read and drop until the client closes
        or LINGER_SECONDS pass.
        """
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break
        except OSError:  # timed out, or the client is gone: nothing more to do either way
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, header too long, unknown method) as JSON."""
        if self.request_version == "HTTP/0.9":
            # a request line too broken to name a version: still answer with a status line
            self.request_version = "HTTP/1.1"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        default = phrase.lower().replace(" ", "_").replace("-", "_")
        self._fail(code, _CODES.get(code, default), message or phrase, unread=True)

    def handle_expect_100(self) -> bool:
        """Hold back ``100 Continue`` until the route and size are checked (``_read_body`` sends it)."""
        return True

    def _content_length(self) -> int | None:
        """The declared body length, 0 without one; None once a bad one has been answered."""
        if self.headers.get("Transfer-Encoding"):  # http.server cannot read a chunked body
            self._fail(411, "length_required", "send the body with a Content-Length", unread=True)
            return None
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        value = values.pop()
        if values or not _LENGTH.fullmatch(value):  # several different lengths: no one knows which
            self._fail(400, "malformed", f"invalid Content-Length {value!r}", unread=True)
            return None
        return int(value)

    def _read_body(self, length: int) -> bytes | None:
        """The body, or None once a client that stalled has been answered."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        self.reader.expire_at(time.monotonic() + self.body_timeout)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            message = (
                f"the body did not arrive within {self.body_timeout:g} s (or no byte of it for {self.timeout:g} s)"
            )
            self._fail(408, "timeout", message, close=True)
            return None
        finally:
            self.reader.expire_at(None)
        if len(body) < length:  # the client closed before sending it all
            self.close_connection = True
            return None
        return body

    def _dispatch(self) -> None:
        """Answer a request of any method: the checks the host makes first, then the route's function."""
        url = urlsplit(self.path)
        if not _METHOD.fullmatch(self.command):
            return self._fail(400, "malformed", "the method is not an HTTP token of at most 32 characters", unread=True)
        length = self._content_length()
        if length is None:
            return
        unread = length > 0
        if url.path == "/" and self.command in ("GET", "HEAD"):  # the live page: Azure has no route at /
            return self._reply(
                302, b"", {"Location": f"{self.root}{'?' + url.query if url.query else ''}"}, close=unread
            )
        matched = [(r, m) for r in self.table if (m := r.pattern.match(url.path))]
        if not matched:
            return self._fail(404, "not_found", f"no function serves {url.path}", unread=unread)
        allowed = [(r, m) for r, m in matched if self.command in r.methods]
        if not allowed:
            methods = ", ".join(sorted(set().union(*(r.methods for r, _ in matched))))
            message = f"{self.command} not allowed; use {methods}"
            return self._fail(405, "method_not_allowed", message, {"Allow": methods}, unread=unread)
        if length > self.max_body:
            return self._fail(413, "too_large", f"request body over {self.max_body} bytes", unread=True)
        body = self._read_body(length) if length else b""
        if body is None:
            return None
        route, match = allowed[0]
        return self._call(route, match, url, body)

    def _call(self, route: Route, match: re.Match[str], url: SplitResult, body: bytes) -> None:
        """Call the route's function with the request and answer with its response (500 when it raises)."""
        request = func.HttpRequest(
            method=self.command,
            url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
            headers=dict(self.headers.items()),
            params=dict(parse_qsl(url.query)),
            route_params={k: unquote(v) for k, v in match.groupdict().items()},
            body=body,
        )
        try:
            response: func.HttpResponse = route.function.get_user_function()(request)
        except Exception:  # as the Functions host does: a 500, and the connection lives on
            log.exception("%s %s failed", self.command, url.path)
            return self._fail(500, "internal_error", f"function {route.function.get_function_name()} failed")
        headers = dict(response.headers.items())
        headers.setdefault("Content-Type", response.mimetype or "text/plain")
        return self._reply(response.status_code, response.get_body(), headers)


def _handler(
    table: list[Route], root: str, max_body: int, read_timeout: float, header_timeout: float, body_timeout: float
) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to these routes, this root redirect and these limits."""
    limits = {"timeout": read_timeout, "header_timeout": header_timeout, "body_timeout": body_timeout}
    return type("Handler", (_Handler,), {"table": table, "root": root, "max_body": max_body, **limits})


class _Server(HTTPServer):
    """An HTTP server with one thread per connection, at most ``max_connections`` of them.

    A connection past the cap closes the oldest connection still waiting for its request line or
    headers (an idle kept-alive one, or a client trickling its headers), and takes its thread once
    that thread has let go; with none waiting, every connection is serving a request and the new
    one is answered 503 with ``Retry-After`` and closed. Threads and sockets stay bounded however
    many clients connect, and a slow client can hold a thread only until its deadline.
    """

    # the listen backlog: http.server's 5 overflowed under a 200-connection burst, and the
    # connections past it were reset or waited for SYN retries (1 s, 3 s, 7 s, ...)
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.lock = threading.Lock()
        self.open = 0  # connections being served, under lock (for status and tests)
        self._waiting: dict[socket.socket, float] = {}  # connections waiting for a request, since when
        self._evicted: set[socket.socket] = set()

    def waiting(self, request: socket.socket) -> None:
        """``request`` waits for its next request line and headers: it may be closed to make room."""
        with self.lock:
            if request not in self._evicted:
                self._waiting[request] = time.monotonic()

    def claim(self, request: socket.socket) -> bool:
        """``request`` has its headers and is being served; False if it was closed to make room."""
        with self.lock:
            self._waiting.pop(request, None)
            return request not in self._evicted

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest for its request; False when none is waiting."""
        with self.lock:
            if not self._waiting:
                return False
            oldest = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[oldest]
            self._evicted.add(oldest)
        log.debug("closing a connection waiting for its request to make room")
        with contextlib.suppress(OSError):  # its blocked read returns at once, and its thread ends
            oldest.shutdown(socket.SHUT_RDWR)
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` in a thread of its own, within the cap (see the class)."""
        if not self.slots.acquire(blocking=False) and not (
            self._evict_oldest() and self.slots.acquire(timeout=EVICT_WAIT_SECONDS)
        ):
            log.debug("all %d connections are serving requests: 503 to %s", self.max_connections, client_address)
            self._refuse(request)
            return
        with self.lock:
            self.open += 1
        name = f"devhost-http-{self.server_address[1]}"
        threading.Thread(target=self._serve, args=(request, client_address), name=name, daemon=True).start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.lock:
                self._waiting.pop(request, None)
                self._evicted.discard(request)
                self.open -= 1
            self.slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 without a thread, first reading what the client already sent (closing on it sends a reset)."""
        with contextlib.suppress(OSError):
            select.select([request], [], [], REFUSE_WAIT_SECONDS)  # a request sent with the connect is here by now
            request.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while request.recv(65536):
                    pass
            request.send(_BUSY)  # a fresh socket's send buffer takes it whole
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is routine; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s went away", client_address)
        else:
            log.exception("request from %s failed", client_address)


class HttpHost:
    """A threaded HTTP server for the app's HTTP functions."""

    def __init__(
        self,
        host: Host,
        port: int = 7071,
        *,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_connections: int | None = None,
    ) -> None:
        handler = _handler(routes(host), root_page(), max_body_bytes, read_timeout, header_timeout, body_timeout)
        cap = default_max_connections() if max_connections is None else max_connections
        self.server = _Server(("127.0.0.1", port), handler, cap)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="devhost-http", daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/<prefix>``."""
        return f"http://127.0.0.1:{self.port}/{route_prefix()}".rstrip("/")

    def start(self) -> HttpHost:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
