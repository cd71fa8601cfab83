"""Predict through devhost's HTTP host on the real path: Azurite latest/, azmlinfsrv, the champion."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devhost.app.host import Host
from devhost.http.server import HttpHost
from devhost.kafka.replay import make_batches, replay
from devhost.market.feed import FeedConfig, generate
from devhost.shared.processes import free_port
from functions.predict import forecasts
from functions.predict.client import ScoringClient, scoring_client
from functions.predict.live import close_workers, ledger_worker
from functions.settings import get_settings
from functions.shared.latest import latest_blob_name
from functions.shared.ledger import SERVED_PREFIX, SKILL_BLOB, LiveFigures, SkillDocument, decode_served, encode_skill

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
        close_workers()  # the ledger's last flush lands now, not in a later test's container


OPEN = 1_793_629_800  # 2026-11-02T14:30:00Z, a Monday's 09:30 in New York
LAST_MINUTE = OPEN + 389 * 60  # 20:59Z, the session's last 1-minute bar (the close is 21:00Z)
NEXT_OPEN = "2026-11-03T14:30:00Z"


def _bars(n: int, start: int = OPEN, price: float = 50.0) -> list[dict]:
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


def _decision(skill: dict) -> dict:
    """The decision-slice keys of an answer's skill (``live`` left out)."""
    return {key: value for key, value in skill.items() if key != "live"}


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _post(api: str, symbol: str, bars: list[dict]) -> httpx.Response:
    return httpx.post(f"{api}/predict", content=orjson.dumps({"symbol": symbol, "bars": bars}), timeout=30)


def test_get_returns_the_served_model_kind_and_skill(api, champion_server):
    """GET /api/predict/{symbol}: 200 with the served version, its kind and skill, near the last close."""
    response = httpx.get(f"{api}/predict/brk-b", timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["symbol"] == "BRK-B" and body["model"] == champion_server.info["model"]
    assert body["model"]["name"] == "stockcast-lstm-attention"
    assert body["model"]["kind"] in ("persistence", "lstm_attention")
    assert _decision(body["skill"]) == champion_server.info["skill"] and body["skill"]["n"] > 0
    assert "live" in body["skill"]
    assert (body["skill"]["p_value"] is None) == (body["model"]["kind"] == "persistence")
    assert math.isfinite(body["predicted_close"]) and abs(body["predicted_close"] / body["last_close"] - 1) < 0.05


def test_get_at_the_stored_session_end_forecasts_no_change(api):
    """The stored day ends at its session's last minute: no target, no interval, the next open, no change."""
    body = httpx.get(f"{api}/predict/AAA", timeout=30).json()
    as_of = dt.datetime.fromisoformat(body["as_of"])
    assert (as_of.hour, as_of.minute) == (20, 59)  # 15:59 in New York
    assert body["session_closed"] is True and body["target_ts"] is None and body["interval"] is None
    assert body["next_open"] is not None and body["next_open"] > body["as_of"]
    assert body["predicted_close"] == body["last_close"]


def test_get_sends_the_bars_the_served_model_needs(api, champion_server, monkeypatch):
    """GET reads and sends exactly the served model's bars_needed (asked of the endpoint), not PREDICT_HISTORY_BARS."""
    needed = champion_server.info["bars_needed"]
    assert needed != get_settings().predict_history_bars  # otherwise this test could not tell them apart
    sent: list[int] = []
    score = ScoringClient.score

    def recording_score(self, bars, request_id):
        sent.append(len(bars))
        return score(self, bars, request_id)

    monkeypatch.setattr(ScoringClient, "score", recording_score)
    monkeypatch.setattr(forecasts, "_flights", {})
    scoring_client(get_settings()).forget_served()
    response = httpx.get(f"{api}/predict/AAA", timeout=30)
    assert response.status_code == 200, response.text
    assert sent == [needed]
    assert scoring_client(get_settings()).served.bars_needed == needed
    assert scoring_client(get_settings()).served.version == champion_server.info["model"]["version"]


def _endpoint_ms(response: httpx.Response) -> float:
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    return float(timing["endpoint"])


def test_get_scores_each_read_of_latest_once(api, monkeypatch):
    """GETs between two reads of latest/ share one forecast: the second makes no endpoint call."""
    monkeypatch.setenv("PREDICT_CACHE_SECONDS", "30")
    monkeypatch.setattr(forecasts, "_flights", {})
    get_settings.cache_clear()
    try:
        first = httpx.get(f"{api}/predict/AAA", timeout=30)
        second = httpx.get(f"{api}/predict/AAA", timeout=30)
    finally:
        get_settings.cache_clear()
    assert first.status_code == second.status_code == 200
    assert _endpoint_ms(first) > 0 and _endpoint_ms(second) == 0
    assert first.json() == second.json()


def test_post_scores_the_bars_sent(api, champion_server):
    """POST /api/predict with enough contiguous bars mid-session: 200, the next minute, an interval around it."""
    response = _post(api, "NEWCO", _bars(90))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["last_close"] == 50.0 and body["as_of"] == _iso(OPEN + 89 * 60)
    assert body["target_ts"] == _iso(OPEN + 90 * 60)
    assert body["session_closed"] is False and body["next_open"] is None
    assert body["model"] == champion_server.info["model"]
    assert _decision(body["skill"]) == champion_server.info["skill"]
    interval = body["interval"]
    assert interval is None or (
        interval["level"] == 0.9 and interval["low"] <= body["predicted_close"] <= interval["high"]
    )


def test_served_forecasts_are_recorded_and_answers_carry_the_live_figures(api, runtime, champion_server, fresh):
    """A POST is recorded in ledger/served/; once skill.json has the version's figures, answers carry them."""
    fresh(PREDICT_CACHE_SECONDS="0")
    worker = ledger_worker(get_settings())
    version = champion_server.info["model"]["version"]
    before = _post(api, "NEWCO", _bars(90)).json()
    get_before = httpx.get(f"{api}/predict/AAA", timeout=30)
    worker.flush()
    served = [
        record
        for blob in runtime.container.list_blobs(SERVED_PREFIX)
        for record in decode_served(runtime.container.download_blob(blob.name).readall())
    ]
    assert [(r.symbol, r.version, r.source, r.predicted_close) for r in served if r.symbol == "NEWCO"][-1:] == [
        ("NEWCO", version, "post", before["predicted_close"])
    ]
    assert not [r for r in served if r.symbol == "AAA"]  # AAA stands at its session's end: nothing to score
    figures = LiveFigures(version, "lstm_attention", 150, 1.03, 0.9, 0.1, 0.88, 150, 1, 2, 3)
    runtime.container.upload_blob(
        SKILL_BLOB, encode_skill(SkillDocument("2026-11-04T21:15:00Z", {version: figures})), overwrite=True
    )
    assert worker.refresh()
    expected = figures.api("2026-11-04T21:15:00Z")
    case = SCHEMA.find_operation_by_id("predictBars").Case(body={"symbol": "NEWCO", "bars": _bars(90)})
    response = case.call(base_url=api)
    case.validate_response(response, checks=CHECKS)  # openapi.yaml describes the live figures as answered
    assert response.json()["skill"]["live"] == expected
    get_after = httpx.get(f"{api}/predict/AAA", timeout=30)  # the same bars: the forecast stands, its figures not
    assert get_after.status_code == 200 and _endpoint_ms(get_after) == 0
    assert get_after.json()["skill"]["live"] == expected and get_before.json()["skill"]["live"] != expected
    runtime.container.delete_blob(SKILL_BLOB)
    worker.refresh()


def test_post_last_close_is_the_newest_bar_by_time(api, champion_server):
    """POST with bars newest first, ts as ISO and unix seconds: last_close and as_of are the newest bar's."""
    bars = _bars(champion_server.info["bars_needed"] + 5)
    for i, bar in enumerate(bars):
        price = round(50.0 + 0.01 * i, 4)
        bar.update(open=price, high=price * 1.001, low=price * 0.999, close=price)
        if i % 2:
            bar["ts"] = _iso(bar["ts"])
    newest = bars[-1]
    response = _post(api, "NEWCO", bars[::-1])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["last_close"] == newest["close"] == round(50.0 + 0.01 * (len(bars) - 1), 4) != bars[0]["close"]
    assert body["as_of"] == _iso(OPEN + 60 * (len(bars) - 1))


def test_post_at_the_session_close_forecasts_no_change(api, champion_server):
    """POST ending at the session's last minute: session closed, no target or interval, the next open, no change."""
    n = champion_server.info["bars_needed"]
    response = _post(api, "NEWCO", _bars(n, start=LAST_MINUTE - 60 * (n - 1)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["as_of"] == _iso(LAST_MINUTE) and body["target_ts"] is None
    assert body["session_closed"] is True and body["next_open"] == NEXT_OPEN and body["interval"] is None
    assert body["predicted_close"] == body["last_close"] == 50.0


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
    monkeypatch.setattr(forecasts, "_flights", {})  # no forecast made before the outage
    get_settings.cache_clear()
    try:
        response = httpx.get(f"{api}/predict/AAA", timeout=30)
    finally:
        get_settings.cache_clear()
        scoring_client.cache_clear()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "endpoint_unavailable"


@pytest.fixture
def fresh(monkeypatch) -> Iterator[Callable[..., None]]:
    """Set app settings for one test (``fresh(SCORING_URL=...)``), with no forecast made before it."""
    monkeypatch.setattr(forecasts, "_flights", {})

    def apply(**env: str) -> None:
        """Export ``env`` and make the next request read it."""
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()  # the settings' environment first, then what was cached from it
    get_settings.cache_clear()
    scoring_client.cache_clear()  # a client made for a test's settings must not serve the next test


def _recording(monkeypatch, owner: Any, name: str, delay_s: float = 0.0) -> list[tuple]:
    """Record each call of ``owner.name`` (its positional arguments) and still make the real call, after a delay.

    The delay keeps a call in flight long enough for concurrent requests to arrive while it runs.
    """
    calls: list[tuple] = []
    real = getattr(owner, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        time.sleep(delay_s)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def _concurrent_gets(api: str, symbol: str, n: int) -> tuple[list[httpx.Response], float]:
    """``n`` GETs of one symbol released together, and the seconds until the last answered.

    Each client opens its kept-alive connection first (a 400 that touches nothing), so the GETs do not
    arrive as a burst of connects that the server's small listen backlog would stagger by seconds.
    """
    clients = [httpx.Client(timeout=60) for _ in range(n)]
    try:
        for client in clients:
            assert client.get(f"{api}/predict/bad%20symbol").status_code == 400
        barrier = threading.Barrier(n)

        def one(client: httpx.Client) -> httpx.Response:
            barrier.wait(timeout=30)
            return client.get(f"{api}/predict/{symbol}")

        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(one, clients))
        return responses, time.perf_counter() - started
    finally:
        for client in clients:
            client.close()


def _rewrite_latest(runtime, symbol: str) -> None:
    """Upload a symbol's latest/ blob again, same bytes: a new ETag, as a batch that changed it would leave."""
    blob = runtime.container.get_blob_client(latest_blob_name(symbol))
    blob.upload_blob(blob.download_blob().readall(), overwrite=True)


def test_concurrent_gets_after_the_cache_expires_share_one_read_and_one_scoring_call(api, runtime, fresh, monkeypatch):
    """16 concurrent GETs once a symbol's cache period ended: one read of latest/, one endpoint call, one body."""
    fresh(PREDICT_CACHE_SECONDS="1")
    assert httpx.get(f"{api}/predict/AAA", timeout=30).status_code == 200
    time.sleep(1.2)  # the period of that forecast ends
    _rewrite_latest(runtime, "AAA")  # and a batch touched the blob since, so the bars must be scored again
    reads = _recording(monkeypatch, forecasts, "_read_latest")
    scores = _recording(monkeypatch, ScoringClient, "score", delay_s=0.3)
    responses, _ = _concurrent_gets(api, "AAA", 16)
    assert [r.status_code for r in responses] == [200] * 16
    assert len(reads) == 1 and len(scores) == 1
    assert len({r.content for r in responses}) == 1
    assert sorted(_endpoint_ms(r) > 0 for r in responses) == [False] * 15 + [True]  # one request made the call


def test_with_latest_unchanged_a_get_after_the_period_reuses_the_forecast_without_an_endpoint_call(
    api, runtime, fresh, monkeypatch
):
    """No cache period: each GET reads latest/ by ETag; same ETag → the same body, no call; new ETag → scored."""
    fresh(PREDICT_CACHE_SECONDS="0")
    reads = _recording(monkeypatch, forecasts, "_read_latest")
    first, second = (httpx.get(f"{api}/predict/AAA", timeout=30) for _ in range(2))
    _rewrite_latest(runtime, "AAA")
    third = httpx.get(f"{api}/predict/AAA", timeout=30)
    assert [r.status_code for r in (first, second, third)] == [200] * 3
    assert [_endpoint_ms(r) > 0 for r in (first, second, third)] == [True, False, True]
    assert first.content == second.content == third.content  # the same bars, the same model
    assert [call[3] is None for call in reads] == [True, False, False]  # an ETag sent from the second read on


def test_a_new_served_model_is_asked_even_when_latest_is_unchanged(api, fresh, monkeypatch):
    """A forecast stands for the model that made it: once the endpoint serves another version, GET scores again."""
    fresh(PREDICT_CACHE_SECONDS="0")
    first = httpx.get(f"{api}/predict/AAA", timeout=30)
    client = scoring_client(get_settings())
    monkeypatch.setattr(client, "_served", dataclasses.replace(client.served, version="rolled-out"))
    second = httpx.get(f"{api}/predict/AAA", timeout=30)
    assert first.status_code == second.status_code == 200
    assert _endpoint_ms(first) > 0 and _endpoint_ms(second) > 0


def test_endpoint_down_concurrent_gets_share_one_sequence_of_attempts(api, fresh, monkeypatch):
    """8 concurrent GETs with nothing at SCORING_URL: all the same 503 at once, from one POST attempt sequence."""
    url = f"http://127.0.0.1:{free_port()}/score"  # bound once, now closed: connections are refused
    fresh(SCORING_URL=url, PREDICT_CACHE_SECONDS="30")
    scores = _recording(monkeypatch, ScoringClient, "score", delay_s=0.3)
    attempts = _recording(monkeypatch, httpx.HTTPTransport, "handle_request")
    responses, elapsed = _concurrent_gets(api, "AAA", 8)
    posts = [args[1] for args in attempts if (args[1].method, str(args[1].url)) == ("POST", url)]
    assert [r.status_code for r in responses] == [503] * 8
    assert {r.headers["retry-after"] for r in responses} == {"5"}
    assert {r.content for r in responses} == {responses[0].content}
    assert responses[0].json()["error"]["code"] == "endpoint_unavailable"
    assert len(scores) == 1 and len(posts) == get_settings().scoring_retries + 1
    assert elapsed < 5.0


def test_a_failed_forecast_is_shared_for_a_moment_then_tried_again(api, champion_server, fresh, monkeypatch):
    """A GET right after an endpoint failure gets the same 503 without a call; after FAILURE_TTL_S it tries again."""
    monkeypatch.setattr(forecasts, "FAILURE_TTL_S", 2.0)  # room for a loaded machine; the default is 1 s
    fresh(SCORING_URL=f"http://127.0.0.1:{free_port()}/score", PREDICT_CACHE_SECONDS="30")
    failed = httpx.get(f"{api}/predict/AAA", timeout=30)
    fresh(SCORING_URL=champion_server.url)  # the endpoint is back
    scores = _recording(monkeypatch, ScoringClient, "score")
    shared = httpx.get(f"{api}/predict/AAA", timeout=30)
    assert failed.status_code == shared.status_code == 503 and shared.json() == failed.json()
    assert scores == []
    time.sleep(2.1)
    retried = httpx.get(f"{api}/predict/AAA", timeout=30)
    assert retried.status_code == 200, retried.text
    assert len(scores) == 1


def test_a_bug_is_a_500_internal_error_without_retry_after(api, fresh, monkeypatch):
    """A bug (here a pure helper raising ValueError) answers JSON 500 internal_error, without Retry-After."""
    fresh()

    def broken(*args: Any, **kwargs: Any) -> float:
        raise ValueError("injected bug")

    monkeypatch.setattr(forecasts, "newest_close", broken)
    for response in (httpx.get(f"{api}/predict/AAA", timeout=30), _post(api, "NEWCO", _bars(90))):
        assert response.status_code == 500, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == "internal_error"
        assert "retry-after" not in response.headers


def _http_error(status: int) -> HttpResponseError:
    """An azure-core error as a storage call raises it for an HTTP ``status``."""
    error = HttpResponseError(f"storage answered {status}")
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ServiceRequestError("connection refused"), 503, "dependency_unavailable"),
        (_http_error(503), 503, "dependency_unavailable"),
        (_http_error(403), 500, "internal_error"),
    ],
    ids=["unreachable", "5xx", "403"],
)
def test_storage_errors_are_503_only_when_storage_is_unavailable(api, fresh, monkeypatch, error, status, code):
    """A storage transport error or 5xx reading latest/ is 503 with Retry-After; a 403 (misconfiguration) is 500."""
    fresh()

    def failing_read(*args: Any) -> list[dict]:
        raise error

    monkeypatch.setattr(forecasts, "_read_latest", failing_read)
    response = httpx.get(f"{api}/predict/AAA", timeout=30)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert response.headers.get("retry-after") == ("5" if status == 503 else None)


YEAR_9999 = dt.datetime(9999, 12, 31, 22, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda i, bar: {"ts": _iso(int(YEAR_9999.timestamp()) + 60 * i)}, id="year-9999"),
        pytest.param(lambda i, bar: {"ts": bar["ts"] * 1000}, id="milliseconds"),
        pytest.param(lambda i, bar: {"ts": bar["ts"] - 30 * 365 * 86_400}, id="before-2000"),
        pytest.param(lambda i, bar: {"ts": int(time.time()) + 2 * 86_400 + 60 * i}, id="two-days-ahead"),
        pytest.param(lambda i, bar: {"high": 1e308} if i == 5 else {}, id="price-1e308"),
        pytest.param(lambda i, bar: {"volume": 10**19} if i == 5 else {}, id="volume-1e19"),
    ],
)
def test_post_with_out_of_range_bars_is_400_invalid_bar(api, champion_server, change):
    """POST bars with years like 9999, millisecond times, price 1e308 or volume 1e19: 400 invalid_bar, never 5xx."""
    bars = _bars(champion_server.info["bars_needed"])
    response = _post(api, "NEWCO", [{**bar, **change(i, bar)} for i, bar in enumerate(bars)])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_bar"


def test_post_sends_the_bars_sorted_by_time(api, champion_server, monkeypatch):
    """POST bars in shuffled order (ISO and unix mixed): the endpoint is sent them oldest first."""
    bars = _bars(champion_server.info["bars_needed"] + 3)
    for bar in bars[::3]:
        bar["ts"] = _iso(bar["ts"])
    shuffled = random.Random(7).sample(bars, len(bars))
    sent = _recording(monkeypatch, ScoringClient, "score")
    response = _post(api, "NEWCO", shuffled)
    assert response.status_code == 200, response.text
    [(_, records, _)] = sent
    assert [record["ts"] for record in records] == [bar["ts"] for bar in bars]
    assert response.json()["as_of"] == _iso(OPEN + 60 * (len(bars) - 1))


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
