"""x-request-id through devhost's HTTP host: echoed when safe, replaced (never echoed nor logged whole) when not."""

from __future__ import annotations

import http.client
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import closing

import orjson
import pytest

from devhost.app.host import Host
from devhost.http.server import HttpHost
from functions.settings import get_settings
from tests.factories import LOCAL_APP_SETTINGS

GENERATED = re.compile(r"[0-9a-f]{32}")
VALID = "client-7f3c.req:42_X"
# (GET or POST, what a function answers before it reads storage: the request's own error)
REQUESTS = {
    "GET": (b"GET /api/predict/BAD! HTTP/1.1\r\nHost: x\r\n", 400, "invalid_symbol"),
    "POST": (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n", 400, "malformed"),
}


@pytest.fixture(scope="module")
def api() -> Iterator[HttpHost]:
    """The registered HTTP functions with app settings but no storage (the requests fail before they read it)."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in {**LOCAL_APP_SETTINGS, "BarsStorage": "UseDevelopmentStorage=true"}.items():
            env.setenv(key, value)
        get_settings.cache_clear()
        host = HttpHost(Host(), 0).start()
        try:
            yield host
        finally:
            host.stop()
            get_settings.cache_clear()


def _send(port: int, method: str, header: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    """Send the method's request with ``header`` (a raw header block, maybe empty); the response and its body."""
    head, _, _ = REQUESTS[method]
    with closing(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        sock.sendall(head + header + b"\r\n" + (b"[]" if method == "POST" else b""))
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response, response.read()


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    ("header", "bad"),
    [
        pytest.param(b"x-request-id: abc\r\n def\r\n", "abc\r\n def", id="folded-newline"),
        pytest.param(b"x-request-id: " + b"a" * 8192 + b"\r\n", "a" * 8192, id="8-kb"),
        pytest.param("x-request-id: été\r\n".encode(), "été".encode().decode("latin-1"), id="unicode"),
        pytest.param(b"x-request-id: a\x00b\r\n", "a\x00b", id="nul"),
        pytest.param(b"x-request-id:\r\n", "", id="empty"),
        pytest.param(b"", None, id="absent"),
    ],
)
def test_an_unusable_request_id_is_replaced_and_never_echoed_or_logged(api, caplog, method, header, bad):
    """GET and POST answer their own JSON error (never the host's 500) under a new id; the bad one is not in the log."""
    _, status, code = REQUESTS[method]
    with caplog.at_level(logging.INFO, logger="functions.predict"):
        response, body = _send(api.port, method, header)
    rid = response.getheader("x-request-id")
    assert (response.status, orjson.loads(body)["error"]["code"]) == (status, code)
    assert GENERATED.fullmatch(rid), rid
    assert f"request={rid} error status={status} code={code}" in caplog.text
    if bad:
        assert bad not in caplog.text
        assert all(len(r.getMessage()) < 400 and r.getMessage().isascii() for r in caplog.records)
        assert f"request={rid} replaces an unusable x-request-id of {len(bad)} chars" in caplog.text


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("rid", [VALID, "a" * 128, "0"])
def test_a_usable_request_id_is_echoed_and_logged(api, caplog, method, rid):
    """A short id of safe characters comes back as sent and names the request in the log."""
    _, status, code = REQUESTS[method]
    with caplog.at_level(logging.INFO, logger="functions.predict"):
        response, _ = _send(api.port, method, f"X-Request-Id: {rid}\r\n".encode())
    assert (response.status, response.getheader("x-request-id")) == (status, rid)
    assert f"request={rid} error status={status} code={code}" in caplog.text
    assert "unusable" not in caplog.text
