"""Pure predict code: the 200 body, the newest close, and what the client makes of the endpoint's GET."""

from __future__ import annotations

import dataclasses
import time

import httpx
import orjson
import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.predict.api import (
    MAX_PRICE,
    MAX_TS_AHEAD_S,
    MAX_VOLUME,
    MIN_TS,
    ApiError,
    _bar_seconds,
    _plain_bar,
    dependency_error,
    forecast_body,
    newest_close,
    parse_post,
    ts_seconds,
    usable_request_id,
)
from functions.predict.api import (
    _bar as _full_bar,
)
from functions.predict.client import (
    SERVED_RETRY_S,
    ScoringClient,
    Served,
    contradicts,
    endpoint_document,
    is_current,
    served_from_info,
)
from functions.predict.forecasts import _Flight
from functions.settings import Settings

MODEL = {"name": "stockcast-lstm-attention", "version": "2", "kind": "lstm_attention"}
SKILL = {"ratio_to_persistence": 0.97, "p_value": 0.012, "n": 1400, "evaluated_at": "2026-11-04T21:05:00Z"}
PERSISTENCE_SKILL = {"ratio_to_persistence": 1.0, "p_value": None, "n": 1400, "evaluated_at": "2026-11-04T21:05:00Z"}
IN_SESSION = {
    "symbol": "AAA",
    "as_of": "2026-11-04T15:00:00Z",
    "target_ts": "2026-11-04T15:01:00Z",
    "predicted_close": 101.0,
    "predicted_return": 0.00995,
    "interval": {"level": 0.9, "low": 100.5, "high": 101.5},
    "session_closed": False,
    "next_open": None,
}
AT_CLOSE = {
    "symbol": "AAA",
    "as_of": "2026-11-04T20:59:00Z",
    "target_ts": None,
    "predicted_close": 100.0,
    "predicted_return": 0.0,
    "interval": None,
    "session_closed": True,
    "next_open": "2026-11-05T14:30:00Z",
}
OLD_ROW = {
    "symbol": "AAA",
    "as_of": "2026-11-04T15:00:00Z",
    "target_ts": "2026-11-04T15:01:00Z",
    "predicted_close": 101.0,
}


@pytest.mark.parametrize(
    ("scored", "expected"),
    [
        pytest.param(
            {"forecasts": [IN_SESSION], "model": MODEL, "skill": SKILL},
            {
                "target_ts": "2026-11-04T15:01:00Z",
                "predicted_close": 101.0,
                "interval": {"level": 0.9, "low": 100.5, "high": 101.5},
                "session_closed": False,
                "next_open": None,
                "model": MODEL,
                "skill": SKILL,
            },
            id="lstm-in-session",
        ),
        pytest.param(
            {
                "forecasts": [{**IN_SESSION, "predicted_close": 100.0, "predicted_return": 0.0}],
                "model": {"name": "stockcast-lstm-attention", "version": "1", "kind": "persistence"},
                "skill": PERSISTENCE_SKILL,
            },
            {
                "target_ts": "2026-11-04T15:01:00Z",
                "predicted_close": 100.0,
                "interval": {"level": 0.9, "low": 100.5, "high": 101.5},
                "session_closed": False,
                "next_open": None,
                "model": {"name": "stockcast-lstm-attention", "version": "1", "kind": "persistence"},
                "skill": PERSISTENCE_SKILL,
            },
            id="persistence",
        ),
        pytest.param(
            {"forecasts": [AT_CLOSE], "model": MODEL, "skill": SKILL},
            {
                "target_ts": None,
                "predicted_close": 100.0,
                "interval": None,
                "session_closed": True,
                "next_open": "2026-11-05T14:30:00Z",
                "model": MODEL,
                "skill": SKILL,
            },
            id="session-closed",
        ),
        pytest.param(
            {"forecasts": [{**AT_CLOSE, "next_open": None}], "model": MODEL, "skill": SKILL},
            {
                "target_ts": None,
                "predicted_close": 100.0,
                "interval": None,
                "session_closed": True,
                "next_open": None,
                "model": MODEL,
                "skill": SKILL,
            },
            id="session-closed-next-open-unknown",
        ),
        pytest.param(
            {"forecasts": [OLD_ROW], "model": {"name": "stockcast-lstm-attention", "version": "1"}},
            {
                "target_ts": "2026-11-04T15:01:00Z",
                "predicted_close": 101.0,
                "interval": None,
                "session_closed": False,
                "next_open": None,
                "model": {"name": "stockcast-lstm-attention", "version": "1", "kind": "unknown"},
                "skill": None,
            },
            id="old-endpoint-without-kind-or-skill",
        ),
        pytest.param(
            {"forecasts": [OLD_ROW]},
            {
                "target_ts": "2026-11-04T15:01:00Z",
                "predicted_close": 101.0,
                "interval": None,
                "session_closed": False,
                "next_open": None,
                "model": {"name": "unknown", "version": "unknown", "kind": "unknown"},
                "skill": None,
            },
            id="no-model-at-all",
        ),
        pytest.param(
            {
                "forecasts": [{**IN_SESSION, "interval": {"level": 0.9, "low": None, "high": None}}],
                "model": {**MODEL, "version": 7, "kind": "gradient_boosting"},
                "skill": {**SKILL, "extra": "dropped"},
            },
            {
                "target_ts": "2026-11-04T15:01:00Z",
                "predicted_close": 101.0,
                "interval": None,
                "session_closed": False,
                "next_open": None,
                "model": {"name": "stockcast-lstm-attention", "version": "7", "kind": "unknown"},
                "skill": SKILL,
            },
            id="unlisted-kind-partial-interval",
        ),
    ],
)
def test_forecast_body_shapes_interval_skill_kind_and_session(scored, expected):
    """The 200 body carries the scored interval, skill, kind and session fields; old endpoints get defaults."""
    body = orjson.loads(forecast_body("AAA", scored, 100.0))
    if expected["skill"] is not None:  # no live figures known for the version
        expected = {**expected, "skill": {**expected["skill"], "live": None}}
    assert body == {"symbol": "AAA", "as_of": scored["forecasts"][0]["as_of"], "last_close": 100.0, **expected}


LIVE = {"ratio_to_persistence": 1.02, "p_value": 0.81, "n": 240, "coverage": 0.88, "updated_at": "2026-11-04T21:15:00Z"}


@pytest.mark.parametrize(
    ("skill", "expected"),
    [
        pytest.param(SKILL, {**SKILL, "live": LIVE}, id="decision-and-live"),
        pytest.param(None, None, id="no-decision-skill-no-live"),
    ],
)
def test_forecast_body_puts_the_live_figures_beside_the_decision_slice_ones(skill, expected):
    """``skill.live`` holds the ledger figures with their n beside the decision-slice keys, which keep their place."""
    scored = {"forecasts": [IN_SESSION], "model": MODEL, **({"skill": skill} if skill else {})}
    assert orjson.loads(forecast_body("AAA", scored, 100.0, LIVE))["skill"] == expected


def test_forecast_body_picks_the_row_of_the_symbol():
    """Of several forecast rows, the body is made from the requested symbol's."""
    other = {**IN_SESSION, "symbol": "BBB", "predicted_close": 7.0}
    body = orjson.loads(forecast_body("AAA", {"forecasts": [other, IN_SESSION], "model": MODEL}, 100.0))
    assert body["symbol"] == "AAA" and body["predicted_close"] == 101.0


def test_forecast_body_without_the_symbol_is_503():
    """A scoring response with no row for the symbol is a 503 endpoint_error with Retry-After."""
    with pytest.raises(ApiError) as caught:
        forecast_body("AAA", {"forecasts": [], "model": MODEL}, 100.0)
    assert (caught.value.status, caught.value.code, caught.value.headers) == (
        503,
        "endpoint_error",
        (("Retry-After", "5"),),
    )


def _bar(ts, close: float) -> dict:
    return {"ts": ts, "open": close, "high": close, "low": close, "close": close, "volume": 1}


@pytest.mark.parametrize(
    ("bars", "close"),
    [
        pytest.param([_bar(1_793_629_920, 3.0), _bar(1_793_629_800, 1.0), _bar(1_793_629_860, 2.0)], 3.0, id="unix"),
        pytest.param(
            [_bar("2026-11-02T14:32:00Z", 3.0), _bar("2026-11-02T14:30:00Z", 1.0), _bar("2026-11-02T14:31:00Z", 2.0)],
            3.0,
            id="iso",
        ),
        pytest.param(
            [_bar("2026-11-02T09:33:00-05:00", 4.0), _bar("2026-11-02T14:32:00", 3.0), _bar(1_793_629_800, 1.0)],
            4.0,
            id="offsets-naive-and-unix-compared-as-times",
        ),
        pytest.param(
            [_bar("2026-11-02T14:31:00+00:00", 5.0), _bar(1_793_629_860, 6.0), _bar(1_793_629_800, 1.0)],
            6.0,
            id="same-time-last-sent-wins",
        ),
        pytest.param([_bar("2026-11-02T14:30:00Z", 9.0)], 9.0, id="one-bar"),
        pytest.param(
            [_bar(1_793_629_830, 2.0), _bar(1_793_629_800, 1.0)], 2.0, id="same-minute-the-latest-stamped-as-scored"
        ),
        pytest.param(
            [_bar(1_793_629_860, 7.0), _bar(1_793_629_800, 1.0), _bar(1_793_629_860, 8.0), _bar(1_793_629_800, 2.0)],
            8.0,
            id="unix-same-time-last-sent-wins",
        ),
    ],
)
def test_newest_close_is_the_newest_bar_by_time(bars, close):
    """newest_close takes the newest bar by parsed time, not the last one sent; a tie goes to the later one."""
    assert newest_close(bars) == close


@pytest.mark.parametrize(
    ("ts", "seconds"),
    [
        (1_793_629_800, 1_793_629_800),
        ("2026-11-02T14:30:00Z", 1_793_629_800),
        ("2026-11-02T14:30:00", 1_793_629_800),
        ("2026-11-02T09:30:00-05:00", 1_793_629_800),
        ("2026-11-02T14:30:59.9Z", 1_793_629_859),
    ],
)
def test_ts_seconds_reads_iso_and_unix(ts, seconds):
    """ts_seconds reads ISO 8601 (UTC when naive) and unix seconds as the scoring endpoint does."""
    assert ts_seconds(ts) == seconds


@pytest.mark.parametrize("ts", ["", "yesterday", "2026-13-02T14:30:00Z", True, 1.5, None])
def test_parse_post_rejects_a_time_the_endpoint_cannot_read(ts):
    """A bar whose ts is neither ISO 8601 nor integer unix seconds is a 400 invalid_bar."""
    body = orjson.dumps({"symbol": "AAA", "bars": [_bar(ts, 1.0)]})
    with pytest.raises(ApiError) as caught:
        parse_post(body, 10, 10_000)
    assert (caught.value.status, caught.value.code) == (400, "invalid_bar")


NOW = 1_796_000_000.0  # 2026-11-30T01:33:20Z


def _parse(bars: list[dict]) -> list[dict]:
    return parse_post(orjson.dumps({"symbol": "AAA", "bars": bars}), 100, 100_000, now=NOW)[1]


@pytest.mark.parametrize(
    ("bar", "message"),
    [
        pytest.param(_bar("9999-12-31T23:59:00Z", 1.0), "between 2000-01-01 and a day from now", id="year-9999"),
        pytest.param(_bar(1_793_629_800_000, 1.0), "not milliseconds", id="milliseconds"),
        pytest.param(_bar(10**19, 1.0), "not milliseconds", id="u64"),
        pytest.param(_bar(MIN_TS - 60, 1.0), "between 2000-01-01", id="1999"),
        pytest.param(_bar(int(NOW) + MAX_TS_AHEAD_S + 1, 1.0), "a day from now", id="past-tomorrow"),
        pytest.param({**_bar(MIN_TS, 1.0), "high": 1e308}, "prices must lie in (0, 1e+09]", id="price-1e308"),
        pytest.param(_bar(MIN_TS, MAX_PRICE * 1.0001), "prices must lie in (0, 1e+09]", id="price-over-1e9"),
        pytest.param(_bar(MIN_TS, 0.0), "prices must lie in (0, 1e+09]", id="price-0"),
        pytest.param({**_bar(MIN_TS, 1.0), "volume": 10**19}, "volume must lie in [0, 1e+15]", id="volume-1e19"),
        pytest.param({**_bar(MIN_TS, 1.0), "volume": -1}, "volume must lie in [0, 1e+15]", id="volume-negative"),
        pytest.param({**_bar(MIN_TS, 2.0), "low": 3.0}, "low <= open/close <= high", id="low-above-close"),
    ],
)
def test_parse_post_rejects_bars_outside_the_bounds(bar, message):
    """Times outside [2000-01-01, now + 1 day], prices outside (0, 1e9], volumes outside [0, 1e15]: 400 invalid_bar."""
    with pytest.raises(ApiError) as caught:
        _parse([_bar(MIN_TS + 60, 1.0), bar])
    assert (caught.value.status, caught.value.code) == (400, "invalid_bar")
    assert caught.value.message.startswith("bars[1]") and message in caught.value.message


def test_parse_post_accepts_the_bounds_themselves():
    """The first second of 2000, a day from now, price 1e9 and volume 1e15 are valid bars."""
    bars = [
        {**_bar(MIN_TS, MAX_PRICE), "volume": MAX_VOLUME},
        _bar(int(NOW) + MAX_TS_AHEAD_S, 1.0),
        _bar("2000-01-01T00:01:00Z", 1.0),
    ]
    assert [bar["ts"] for bar in _parse(bars)] == [MIN_TS, "2000-01-01T00:01:00Z", int(NOW) + MAX_TS_AHEAD_S]


def test_parse_post_orders_bars_by_time_keeping_the_sent_order_of_equal_times():
    """Bars come back oldest first, ISO and unix compared as times; of equal times the order sent is kept."""
    bars = [
        _bar(1_793_629_920, 3.0),
        _bar("2026-11-02T14:30:00Z", 1.0),
        _bar(1_793_629_860, 2.0),
        _bar("2026-11-02T09:31:00-05:00", 4.0),
    ]
    assert [bar["close"] for bar in _parse(bars)] == [1.0, 2.0, 4.0, 3.0]


_EDGE_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, 1, 1.0, MAX_PRICE, MAX_VOLUME, MAX_PRICE * 1.0001, 10**19, -1, True, False]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
_VALUES = st.one_of(st.sampled_from([0.5, 1, 1.5, 2.0]), _EDGE_NUMBERS, st.none(), st.text(max_size=3))
_TIMES = st.one_of(
    st.sampled_from([MIN_TS - 1, MIN_TS, int(NOW) + MAX_TS_AHEAD_S, int(NOW) + MAX_TS_AHEAD_S + 1]),
    st.integers(min_value=MIN_TS - 2, max_value=int(NOW) + MAX_TS_AHEAD_S + 2),
    st.sampled_from(["2026-11-02T14:30:00Z", True, 1.5, None, 10**19]),
)


@settings(max_examples=600, deadline=None)
@given(
    ts=_TIMES,
    prices=st.one_of(
        st.tuples(_VALUES, _VALUES, _VALUES, _VALUES),
        st.floats(min_value=1e-9, max_value=MAX_PRICE).map(lambda p: (p, p * 1.01, p * 0.99, p)),
    ),
    volume=_VALUES,
)
def test_the_plain_bar_path_accepts_exactly_what_the_full_checks_accept(ts, prices, volume):
    """Every bar the fast path takes, the full checks take with the same time and record; the rest it leaves to them."""
    bar = {"ts": ts, **dict(zip(("open", "high", "low", "close"), prices, strict=True)), "volume": volume}
    plain = _plain_bar(bar, "AAA", NOW + MAX_TS_AHEAD_S)
    try:
        body = orjson.dumps({"symbol": "AAA", "bars": [bar]})
    except orjson.JSONEncodeError:  # no client can send this bar
        return
    sent = orjson.loads(body)["bars"][0]
    try:
        full = (_bar_seconds(sent.get("ts"), 0, NOW), _full_bar(sent, 0, "AAA"))
    except ApiError:
        assert plain is None
        return
    if plain is not None:
        assert plain == full and all(type(full[1][k]) is float for k in ("open", "high", "low", "close", "volume"))


@pytest.mark.parametrize(
    ("raw", "usable"),
    [
        pytest.param("abc\r\n def", None, id="folded-newline"),
        pytest.param("abc\n", None, id="trailing-newline"),
        pytest.param("abc\rdef", None, id="cr"),
        pytest.param("a" * 8192, None, id="8-kb"),
        pytest.param("a" * 129, None, id="129-chars"),
        pytest.param("été", None, id="unicode"),
        pytest.param("٣٤", None, id="non-ascii-digits"),
        pytest.param("a b", None, id="space"),
        pytest.param("a\x00b", None, id="nul"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
        pytest.param("a" * 128, "a" * 128, id="128-chars"),
        pytest.param("7f3c2a9e-1b2c.req:42_X", "7f3c2a9e-1b2c.req:42_X", id="valid"),
    ],
)
def test_only_a_short_id_of_safe_characters_is_usable_as_the_request_id(raw, usable):
    """x-request-id is kept only as 1-128 of [A-Za-z0-9._:-]: no line break, control or non-ASCII character."""
    assert usable_request_id(raw) == usable


def _http_error(status: int | None) -> HttpResponseError:
    error = HttpResponseError(f"answered {status}")
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        pytest.param(ServiceRequestTimeoutError("connect timed out"), True, id="storage-connect-timeout"),
        pytest.param(ServiceResponseError("connection reset"), True, id="storage-reset"),
        pytest.param(_http_error(500), True, id="storage-500"),
        pytest.param(_http_error(503), True, id="storage-503"),
        pytest.param(_http_error(429), True, id="storage-throttled"),
        pytest.param(TimeoutError(), True, id="timeout"),
        pytest.param(httpx.ConnectError("refused"), True, id="httpx-connect"),
        pytest.param(ConnectionResetError(), True, id="connection-reset"),
        pytest.param(_http_error(403), False, id="storage-403"),
        pytest.param(_http_error(None), False, id="no-status"),
        pytest.param(ResourceNotFoundError("gone"), False, id="not-found"),
        pytest.param(ValueError("bug"), False, id="value-error"),
        pytest.param(KeyError("bug"), False, id="key-error"),
    ],
)
def test_dependency_error_is_503_only_for_failed_dependencies(exc, unavailable):
    """Transports, timeouts and 408/429/5xx are 503 with Retry-After; anything else is a bug (None: a 500)."""
    err = dependency_error(exc)
    if unavailable:
        assert (err.status, err.code, err.headers) == (503, "dependency_unavailable", (("Retry-After", "5"),))
    else:
        assert err is None


@pytest.mark.parametrize(
    "scored",
    [
        {"forecasts": "nope"},
        {"forecasts": ["not-a-row", None]},
        {"forecasts": [{"symbol": "AAA", "predicted_close": 1.0}]},
        {"forecasts": [{"symbol": "AAA", "as_of": "2026-11-04T15:00:00Z"}]},
    ],
    ids=["forecasts-not-a-list", "rows-not-objects", "no-as_of", "no-predicted_close"],
)
def test_forecast_body_off_contract_is_503(scored):
    """An endpoint answer without a usable row for the symbol is a 503 endpoint_error, not a crash (500)."""
    with pytest.raises(ApiError) as caught:
        forecast_body("AAA", scored, 100.0)
    assert (caught.value.status, caught.value.code) == (503, "endpoint_error")


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (200, b"[1, 2]", (503, "endpoint_error")),
        (400, b'{"error": "flat string"}', (400, "endpoint_error")),
        (422, b'{"error": {"code": "not_enough_bars", "message": "need 60"}}', (422, "not_enough_bars")),
        (404, b'{"error": {"code": "x"}}', (503, "endpoint_error")),
        (413, b'{"error": {"code": "too_large", "message": "big"}}', (413, "too_large")),
        (200, b"not json", (503, "endpoint_error")),
    ],
)
def test_endpoint_answers_map_to_api_errors(status, content, expected):
    """A 200 that is not an object is 503; an error document of any shape keeps 400/413/422, else 503."""
    with pytest.raises(ApiError) as caught:
        endpoint_document(status, content)
    assert (caught.value.status, caught.value.code) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"status": 200, "body": {"forecasts": []}}, {"forecasts": []}),
        ({"status": 422, "body": {"error": {"code": "not_enough_bars", "message": "m"}}}, (422, "not_enough_bars")),
        ({"status": 500, "body": {"error": {"code": "internal_error", "message": "m"}}}, (503, "endpoint_error")),
        ({"status": "200", "body": {}}, (503, "endpoint_error")),
        ({"body": {}}, (503, "endpoint_error")),
        ([1], (503, "endpoint_error")),
    ],
)
def test_each_answer_in_a_batch_maps_like_a_whole_answer(answer, expected):
    """An answer inside a batch is read as its own status and body; anything off contract is 503."""
    got = ScoringClient._answer_in_batch(answer, 0.01)
    if isinstance(got, ApiError):
        assert (got.status, got.code) == expected
    else:
        assert got == (expected, 0.01)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (
            {"model": {"name": "m", "version": "2", "kind": "lstm_attention"}, "bars_needed": 60, "skill": None},
            ("2", 60),
        ),
        ({"model": {"name": "m", "version": 3}, "bars_needed": 120}, ("3", 120)),
        ({"model": {"name": "m", "version": "2"}}, ("2", 90)),
        ({"model": {"name": "m", "version": "2"}, "bars_needed": 0}, ("2", 90)),
        ({"model": {"name": "m", "version": "2"}, "bars_needed": True}, ("2", 90)),
        ({"model": {"name": "m", "version": "2"}, "bars_needed": "60"}, ("2", 90)),
        ({"status": "healthy"}, (None, 90)),
        (["not", "an", "object"], (None, 90)),
    ],
)
def test_served_from_info_reads_bars_needed_or_falls_back(info, expected):
    """The endpoint's GET gives the version and bars_needed; without a usable count the fallback applies."""
    served = served_from_info(info, 90, 123.0)
    assert (served.version, served.bars_needed, served.expires) == (*expected, 123.0)


@pytest.mark.parametrize(
    ("served", "scored", "stale"),
    [
        (Served("2", 60, 1e9), {"model": {"version": "2"}}, False),
        (Served("2", 60, 1e9), {"model": {"version": "3"}}, True),
        (Served("2", 60, 1e9), {"model": {"version": 2}}, False),
        (Served(None, 90, 1e9), {"model": {"version": "2"}}, True),
        (Served("2", 60, 1e9), {"forecasts": []}, False),
        (None, {"model": {"version": "3"}}, False),
    ],
)
def test_contradicts_when_another_version_scored(served, scored, stale):
    """A scoring response from another model version than the cached one makes the cache stale."""
    assert contradicts(served, scored) is stale


@pytest.mark.parametrize(
    ("served", "now", "current"),
    [(None, 0.0, False), (Served("1", 60, 10.0), 9.9, True), (Served("1", 60, 10.0), 10.0, False)],
)
def test_is_current_until_it_expires(served, now, current):
    """A cached answer is used until its expiry time."""
    assert is_current(served, now) is current


def _settings(**overrides) -> Settings:
    base = Settings(
        "bars", "stock_bars", "ingest", "0 */15 * * * *", bars_storage_connection_string="UseDevelopmentStorage=true"
    )
    return dataclasses.replace(base, **overrides)


def test_bars_needed_falls_back_to_history_bars_when_the_endpoint_is_down():
    """With nothing listening at SCORING_URL, GET sends PREDICT_HISTORY_BARS bars and asks again soon."""
    client = ScoringClient(
        _settings(scoring_url="http://127.0.0.1:9/score", scoring_retries=0, predict_history_bars=77)
    )
    try:
        assert client.bars_needed("test") == 77
        served = client.served
        assert served is not None and (served.version, served.bars_needed) == (None, 77)
        assert served.expires <= time.monotonic() + SERVED_RETRY_S
    finally:
        client.http.close()


def test_a_flight_is_shared_while_running_or_fresh_and_given_up_when_stuck():
    """A flight is joined while it runs (until it looks stuck) and, once done, until its period ends."""
    flight = _Flight(100.0, 2.0, "first")
    assert flight.joinable(101.0, stuck_s=50.0) and flight.joinable(149.9, stuck_s=50.0)
    assert not flight.joinable(150.0, stuck_s=50.0)
    flight.outcome.set_result(b"{}")
    assert flight.joinable(101.9, stuck_s=50.0) and not flight.joinable(102.0, stuck_s=50.0)
