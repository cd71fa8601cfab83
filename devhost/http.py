"""Serve the registered HTTP functions on loopback, with the route prefix from host.json."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
import orjson
from azure.functions.decorators.function_app import Function

from devhost.home import REPO_ROOT
from devhost.host import Host


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


def _handler(table: list[Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body leave in two writes: with Nagle on, the body waits ~40 ms for the ACK
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the functions log what matters."""

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            matched = [(r, m) for r in table if (m := r.pattern.match(url.path))]
            if not matched:
                error = {"error": {"code": "not_found", "message": f"no function serves {url.path}"}}
                return self._reply(404, orjson.dumps(error), {"Content-Type": "application/json"})
            allowed = [(r, m) for r, m in matched if self.command in r.methods]
            if not allowed:
                error = {"error": {"code": "method_not_allowed", "message": f"{self.command} not allowed"}}
                methods = ", ".join(sorted(set().union(*(r.methods for r, _ in matched))))
                return self._reply(405, orjson.dumps(error), {"Content-Type": "application/json", "Allow": methods})
            route, match = allowed[0]
            request = func.HttpRequest(
                method=self.command,
                url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                headers=dict(self.headers.items()),
                params=dict(parse_qsl(url.query)),
                route_params={k: unquote(v) for k, v in match.groupdict().items()},
                body=body,
            )
            response: func.HttpResponse = route.function.get_user_function()(request)
            headers = dict(response.headers.items())
            headers.setdefault("Content-Type", response.mimetype or "text/plain")
            self._reply(response.status_code, response.get_body(), headers)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815

    return Handler


class HttpHost:
    """A threaded HTTP server for the app's HTTP functions."""

    def __init__(self, host: Host, port: int = 7071) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(routes(host)))
        self.server.daemon_threads = True
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
