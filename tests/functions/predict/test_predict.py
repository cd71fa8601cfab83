"""Predict through devhost's HTTP host on the real path: Azurite latest/, azmlinfsrv, the champion."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devhost.feed import FeedConfig, generate
from devhost.host import Host
from devhost.http import HttpHost
from devhost.replay import make_batches, replay
from functions.predict import blueprint
from functions.predict.client import scoring_client
from functions.settings import get_settings

pytestmark = pytest.mark.integration
SPEC = Path(__file__).resolve().parents[3] / "functions" / "predict" / "openapi.yaml"


@pytest.fixture(scope="module")
def api(runtime, champion_server):
    """The HTTP functions on a free port, with two symbols' bars ingested into Azurite."""
    for blob in runtime.container.list_blobs():
        runtime.container.delete_blob(blob.name)
    replay(
        Host(retry_wait_cap=0.01), make_batches(list(generate(FeedConfig(symbols=("AAA", "BRK-B"), days=1))), 2, 64, 0)
    )
    http = HttpHost(Host(), 0).start()
    try:
        yield http.base_url
    finally:
        http.stop()


def _bars(n: int, start: int = 1_793_629_800, price: float = 50.0) -> list[dict]:
    return [
        {
            "ts": start + 60 * i,
            "open": price,
            "high": price * 1.001,
            "low": price * 0.999,
            "close": price,
            "volume": 100,
        }
        for i in range(n)
    ]


def test_get_returns_a_finite_forecast_from_the_champion(api):
    """GET /api/predict/{symbol}: 200, the champion's version, a forecast near the last close."""
    response = httpx.get(f"{api}/predict/brk-b", timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["symbol"] == "BRK-B" and body["model"] == {"name": "stockcast-lstm-attention", "version": "1"}
    assert math.isfinite(body["predicted_close"]) and abs(body["predicted_close"] / body["last_close"] - 1) < 0.05
    assert body["target_ts"] > body["as_of"]


def _endpoint_ms(response: httpx.Response) -> float:
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    return float(timing["endpoint"])


def test_get_scores_each_read_of_latest_once(api, monkeypatch):
    """GETs between two reads of latest/ share one forecast: the second makes no endpoint call."""
    monkeypatch.setenv("PREDICT_CACHE_SECONDS", "30")
    monkeypatch.setattr(blueprint, "_cache", {})
    get_settings.cache_clear()
    try:
        first = httpx.get(f"{api}/predict/AAA", timeout=30)
        second = httpx.get(f"{api}/predict/AAA", timeout=30)
    finally:
        get_settings.cache_clear()
    assert first.status_code == second.status_code == 200
    assert _endpoint_ms(first) > 0 and _endpoint_ms(second) == 0
    assert first.json() == second.json()


def test_post_scores_the_bars_sent(api):
    """POST /api/predict with enough contiguous bars: 200 for a symbol never stored."""
    response = httpx.post(f"{api}/predict", content=orjson.dumps({"symbol": "NEWCO", "bars": _bars(90)}), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["last_close"] == 50.0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/predict/NOPE", None, 404, "unknown_symbol"),
        ("GET", "/predict/bad%20symbol", None, 400, "invalid_symbol"),
        ("POST", "/predict", b"{not json", 400, "malformed"),
        ("POST", "/predict", b'{"symbol": "A", "bars": [{"ts": 1, "open": -1}]}', 400, "invalid_bar"),
        ("POST", "/predict", orjson.dumps({"symbol": "A", "bars": _bars(5001)}), 413, "too_large"),
        ("POST", "/predict", orjson.dumps({"symbol": "A", "bars": _bars(10)}), 422, "not_enough_bars"),
    ],
)
def test_error_statuses_are_json(api, method, path, body, status, code):
    """Each error status of the API comes as {"error": {"code", "message"}}."""
    response = httpx.request(method, f"{api}{path}", content=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code


def test_endpoint_down_gives_503_with_retry_after(api, monkeypatch):
    """With the scoring endpoint unreachable, predict answers 503 and Retry-After."""
    monkeypatch.setenv("SCORING_URL", "http://127.0.0.1:9/score")  # discard port: nothing listens
    monkeypatch.setattr(blueprint, "_cache", {})  # no forecast made before the outage
    get_settings.cache_clear()
    try:
        response = httpx.get(f"{api}/predict/AAA", timeout=30)
    finally:
        get_settings.cache_clear()
        scoring_client.cache_clear()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "endpoint_unavailable"


SCHEMA = schemathesis.openapi.from_path(str(SPEC))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("operation_id", ["predictSymbol", "predictBars"])
def test_openapi_spec_holds_under_generated_requests(api, operation_id):
    """A bounded schemathesis run: no 5xx, and every response (status, headers, body) matches openapi.yaml."""
    operation = SCHEMA.find_operation_by_id(operation_id)
    calls = []

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=operation.as_strategy())
    def run(case):
        response = case.call(base_url=api)
        calls.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert len(calls) >= 10
