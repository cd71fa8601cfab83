"""Serve the registered HTTP functions on loopback, with the route prefix from host.json.

Every error the host itself answers is JSON (``{"error": {"code", "message"}}``), as the API's own
errors are: 400 for a malformed request, 404 for no route, 405 (with ``Allow``) for a method the
route does not serve, 408 for a client that stalls, 411/413 for a body without a length or over
the limit. The body's size is judged from ``Content-Length`` before a byte of it is read.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
import orjson
from azure.functions.decorators.function_app import Function

from devhost.home import REPO_ROOT
from devhost.host import Host
from functions.predict.blueprint import MAX_BODY_BYTES as PREDICT_MAX_BODY_BYTES

log = logging.getLogger("devhost")
JSON = "application/json"
# the largest body a registered function accepts: a bigger one is refused before it is read
MAX_BODY_BYTES = PREDICT_MAX_BODY_BYTES
# a client that sends nothing for this long (request line, headers, body, or between keep-alive
# requests) loses its connection, so it cannot hold a thread forever
READ_TIMEOUT_SECONDS = 10.0
# how long an answer given before the body was read waits for the rest of the body (see _linger)
LINGER_SECONDS = 2.0
_CODES = {400: "malformed", 408: "timeout", 413: "too_large"}  # the API's codes for these statuses
_LENGTH = re.compile(r"[0-9]+")  # ASCII digits only: int() also takes "+5", "1_0" and non-ASCII digits


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


def error_body(code: str, message: str) -> bytes:
    """The API's error document."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def _handler(table: list[Route], max_body: int, read_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body leave in two writes: with Nagle on, the body waits ~40 ms for the ACK
        disable_nagle_algorithm = True
        timeout = read_timeout  # set on the socket by StreamRequestHandler.setup

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the functions log what matters."""

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
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._fail(408, "timeout", f"no body byte for {read_timeout:g} s", close=True)
                return None
            if len(body) < length:  # the client closed before sending it all
                self.close_connection = True
                return None
            return body

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            length = self._content_length()
            if length is None:
                return
            unread = length > 0
            matched = [(r, m) for r in table if (m := r.pattern.match(url.path))]
            if not matched:
                return self._fail(404, "not_found", f"no function serves {url.path}", unread=unread)
            allowed = [(r, m) for r, m in matched if self.command in r.methods]
            if not allowed:
                methods = ", ".join(sorted(set().union(*(r.methods for r, _ in matched))))
                message = f"{self.command} not allowed; use {methods}"
                return self._fail(405, "method_not_allowed", message, {"Allow": methods}, unread=unread)
            if length > max_body:
                return self._fail(413, "too_large", f"request body over {max_body} bytes", unread=True)
            body = self._read_body(length) if length else b""
            if body is None:
                return None
            route, match = allowed[0]
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

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch  # noqa: N815

    return Handler


class _Server(ThreadingHTTPServer):
    # the listen backlog: http.server's 5 overflowed under a 200-connection burst, and the
    # connections past it were reset or waited for SYN retries (1 s, 3 s, 7 s, ...)
    request_queue_size = 1024
    daemon_threads = True

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
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.server = _Server(("127.0.0.1", port), _handler(routes(host), max_body_bytes, read_timeout))
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
