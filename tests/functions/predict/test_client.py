"""The scoring client's retries (stamina): which answers are tried again, and how many times."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from functions.predict.api import ApiError
from functions.predict.client import ScoringClient
from functions.settings import load_settings
from tests.factories import LOCAL_APP_SETTINGS

OK = (200, {"forecasts": [], "model": {"version": "1"}})


class _Scripted(ThreadingHTTPServer):
    """A real HTTP endpoint that answers each request with the next (status, JSON) of its script."""

    def __init__(self, script: list[tuple[int, dict]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.seen = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Scripted

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, doc = self.server.script[min(self.server.seen, len(self.server.script) - 1)]
        self.server.seen += 1
        body = orjson.dumps(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[callable]:
    servers: list[_Scripted] = []

    def start(script: list[tuple[int, dict]]) -> _Scripted:
        server = _Scripted(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _client(server: _Scripted, retries: int) -> ScoringClient:
    host, port = server.server_address
    settings = load_settings(
        {
            **LOCAL_APP_SETTINGS,
            "BarsStorage": "UseDevelopmentStorage=true",
            "SCORING_URL": f"http://{host}:{port}/score",
            "SCORING_RETRIES": str(retries),
        }
    )
    return ScoringClient(settings)


ERROR = {"error": {"code": "boom", "message": "boom"}}


@pytest.mark.parametrize(
    ("script", "retries", "status", "requests"),
    [
        ([(503, ERROR), (502, ERROR), OK], 2, 200, 3),
        ([(500, ERROR), OK], 0, 503, 1),
        ([(500, ERROR)], 2, 503, 3),
        ([(422, {"error": {"code": "not_enough_bars", "message": "need 40"}})], 2, 422, 1),
        ([(400, {"error": {"code": "malformed", "message": "bad"}})], 2, 400, 1),
        ([OK], 2, 200, 1),
    ],
)
def test_5xx_is_retried_up_to_the_cap_and_4xx_never(endpoint, script, retries, status, requests):
    """A 5xx is tried again at most SCORING_RETRIES times; a 4xx or a 200 ends the call at once."""
    server = endpoint(script)
    client = _client(server, retries)
    if status == 200:
        doc, _ = client.score([{"symbol": "AAPL"}], "req-1")
        assert doc == OK[1]
    else:
        with pytest.raises(ApiError) as err:
            client.score([{"symbol": "AAPL"}], "req-1")
        assert err.value.status == status
        assert err.value.code == ("endpoint_unavailable" if status == 503 else script[0][1]["error"]["code"])
    assert server.seen == requests
