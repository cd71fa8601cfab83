"""Properties of decode_batch over arbitrary bodies, checked against a plain-Python model of the contract.

Bodies are random bytes, random JSON values and Airbyte envelopes whose every field is drawn by
hypothesis (emitted_at, symbols, timestamps, quote arrays of mixed lengths, values of any JSON type:
huge ints, floats, "NaN" as a string, nulls, bools, objects). Whatever arrives: decode never raises;
every event is ignored, dead-lettered once, or decoded; the stored bars are exactly the model's true
bars, and each satisfies the bar contract.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.ingest.airbyte import DecodedBatch, RawEvent, decode_batch
from tests.factories import table_bars

T0 = 1_793_629_980  # 2026-11-02 14:33 UTC, a minute start
NOW = T0 + 3_600.0  # the batch's clock
NOW_MS = int(NOW * 1000)
DAY_S, DAY_MS = 86_400, 86_400_000
MIN_TS = 946_684_800  # 2000-01-01T00:00:00Z, written out here rather than imported: this is the model
FIELDS = ("open", "high", "low", "close", "volume")
SYMBOL = re.compile(r"[A-Z0-9^][A-Z0-9.^=-]{0,15}")

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------------


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Draw from each strategy in proportion to its weight (one_of flattens nested one_ofs evenly)."""
    choices = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(choices) - 1).flatmap(lambda i: choices[i])


HUGE_INTS = st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, 10**30, -(10**30)])
NUMBERS = st.one_of(st.integers(), HUGE_INTS, st.floats(allow_nan=False, allow_infinity=False))
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "12.5", "", "1e400", "null"]),
    st.text(max_size=4),
    st.just({}),
    st.just([]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ANY_VALUE = st.one_of(NUMBERS, JUNK)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=6,
)
NEAR_T0 = st.integers(T0 - 7_200, T0 + 3_600)
TIMESTAMPS = weighted(
    (6, NEAR_T0),
    (1, NEAR_T0.map(float)),
    (1, st.floats(T0 - 100, T0 + 100)),  # mostly fractional
    (1, st.sampled_from([MIN_TS - 1, MIN_TS, -1, 0, 1_793_629_800_000, 4_102_444_800, NOW_MS // 1000 + 2 * DAY_S])),
    (1, ANY_VALUE),
)
PRICES = st.one_of(st.floats(min_value=1e-6, max_value=1e9), st.integers(1, 10**9))
VOLUMES = st.one_of(st.integers(0, 10**15), st.integers(0, 10**6).map(float))
SYMBOLS = weighted(
    (8, st.sampled_from(["AAPL", "aapl", "BRK-B", "^gspc", "EURUSD=X"])),
    (1, st.sampled_from(["GOOG\n", "straße", "AAPL ", "", "A" * 17, "../x"])),
    (1, JSON_VALUES),
)
EMITTED_AT = weighted(
    (8, st.integers(T0 * 1000 - 10**7, NOW_MS + DAY_MS)),
    (1, st.sampled_from([MIN_TS * 1000 - 1, MIN_TS * 1000, NOW_MS + DAY_MS, NOW_MS + DAY_MS + 1, T0, 2**63])),
    (1, ANY_VALUE),
)


@st.composite
def valid_bars(draw: st.DrawFn) -> list[Any]:
    """One valid (o, h, l, c, v) row."""
    low, a, b, high = sorted(draw(st.lists(PRICES, min_size=4, max_size=4)))
    return [a, high, low, b, draw(VOLUMES)] if draw(st.booleans()) else [b, high, low, a, draw(VOLUMES)]


@st.composite
def bars(draw: st.DrawFn) -> list[Any]:
    """One (o, h, l, c, v) row: mostly a valid bar, else a no-trade minute, a mutated or a random row."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "null", "mutated", "random"]))
    if kind == "null":
        return [None] * 5
    if kind == "random":
        return [draw(ANY_VALUE) for _ in FIELDS]
    row = draw(valid_bars())
    if kind == "mutated":
        row[draw(st.integers(0, 4))] = draw(ANY_VALUE)
    return row


@st.composite
def chart_results(draw: st.DrawFn) -> dict[str, Any]:
    """One chart result; now and then its arrays disagree in length."""
    n = draw(st.integers(0, 6))
    ts = draw(st.lists(TIMESTAMPS, min_size=n, max_size=n))
    rows = draw(st.lists(bars(), min_size=n, max_size=n))
    quote: dict[str, Any] = {name: [row[k] for row in rows] for k, name in enumerate(FIELDS)}
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(FIELDS))
        quote[name] = quote[name][1:] if quote[name] and draw(st.booleans()) else [*quote[name], draw(ANY_VALUE)]
    granularity = draw(st.sampled_from(["1m"] * 9 + ["5m"]))
    meta = {"symbol": draw(SYMBOLS), "dataGranularity": granularity}
    return {"meta": meta, "timestamp": ts, "indicators": {"quote": [quote]}}


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """An Airbyte record of a Yahoo chart whose fields are all drawn."""
    chart: dict[str, Any] = {"result": draw(st.lists(chart_results(), min_size=1, max_size=2)), "error": None}
    if draw(st.integers(0, 19)) == 0:
        chart["error"] = draw(JSON_VALUES)
    doc = {
        "_airbyte_ab_id": "00000000-0000-0000-0000-000000000000",
        "_airbyte_stream": draw(st.sampled_from(["price"] * 9 + ["test-topic-stream"])),
        "_airbyte_emitted_at": draw(EMITTED_AT),
        "_airbyte_data": {"chart": chart},
    }
    return json.dumps(doc).encode()  # the stdlib writes ints of any size, unlike orjson


BODIES = weighted((1, st.binary(max_size=64)), (1, JSON_VALUES.map(lambda v: json.dumps(v).encode())), (8, envelopes()))

# --- the model --------------------------------------------------------------------------------


def is_number(x: Any) -> bool:
    """A JSON number as the parser returns it (bool is an int subclass, not a number)."""
    return type(x) in (int, float)


def bar_faults(ts: Any, row: list[Any], emitted_at: int) -> set[str] | None:
    """Every contract rule the bar breaks (empty: valid); None for a no-trade minute."""
    if all(x is None for x in row):
        return None
    o, h, lo, c, v = row
    faults = set()
    if any(x is not None and not is_number(x) for x in (ts, *row)):
        faults.add("bad_value_type")
    if any(x is None for x in row):
        faults.add("partial_null")
    if ts is None or (
        is_number(ts) and not (float(ts).is_integer() and ts >= MIN_TS and ts * 1000 <= emitted_at + DAY_MS)
    ):
        faults.add("invalid_timestamp")
    for p in (x for x in (o, h, lo, c) if is_number(x)):
        if not math.isfinite(p):
            faults.add("non_finite_price")
        elif p <= 0:
            faults.add("non_positive_price")
        elif p > 1e9:
            faults.add("price_out_of_range")
    if all(is_number(x) for x in (o, h, lo, c)) and not (lo <= min(o, c) and max(o, c) <= h):
        faults.add("inconsistent_ohlc")
    if is_number(v):
        if v < 0:
            faults.add("negative_volume")
        if not float(v).is_integer():
            faults.add("fractional_volume")
        if v > 1e15:
            faults.add("volume_out_of_range")
    return faults


@dataclass
class Expected:
    """What the contract says one event becomes."""

    ignored: bool = False
    reason: str | None = None  # of its dead letter, if it has one
    rejected: list[tuple[str, int, Any, set[str]]] = field(default_factory=list)  # symbol, index, ts, faults
    bars: dict[tuple[str, int], tuple] = field(default_factory=dict)  # (symbol, minute) -> (emitted, v, c, h, l, o)


def _result_problem(result: Any) -> str | None:
    if not isinstance(result, dict) or not isinstance(result.get("meta"), dict):
        return "missing_chart"
    symbol = result["meta"].get("symbol")
    if not (isinstance(symbol, str) and symbol.isascii() and SYMBOL.fullmatch(symbol.upper())):
        return "invalid_symbol"
    if result["meta"].get("dataGranularity", "1m") != "1m":
        return "unsupported_granularity"
    ts = result.get("timestamp")
    if ts is None:
        return None
    if not isinstance(ts, list):
        return "bad_value_type"
    quotes = result.get("indicators", {}).get("quote") if isinstance(result.get("indicators"), dict) else None
    if not isinstance(quotes, list) or not quotes or not isinstance(quotes[0], dict):
        return "missing_quote"
    for name in FIELDS:
        if not isinstance(quotes[0].get(name), list):
            return "missing_quote"
        if len(quotes[0][name]) != len(ts):
            return "length_mismatch"
    return None


def expect(body: bytes) -> Expected:
    """The model: what one event should decode to, written the slow, obvious way."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return Expected(reason="invalid_utf8")
        return Expected(reason="invalid_json")
    if not isinstance(doc, dict):
        return Expected(reason="not_an_object")
    if not isinstance(doc.get("_airbyte_stream"), str) or "_airbyte_data" not in doc:
        return Expected(reason="missing_envelope")
    if doc["_airbyte_stream"] != "price":
        return Expected(ignored=True)
    emitted_at = doc.get("_airbyte_emitted_at")
    if type(emitted_at) is not int or not MIN_TS * 1000 <= emitted_at <= NOW_MS + DAY_MS:
        return Expected(reason="invalid_emitted_at")
    data = doc["_airbyte_data"]
    chart = data.get("chart") if isinstance(data, dict) else None
    if not isinstance(chart, dict):
        return Expected(reason="missing_chart")
    if chart.get("error") is not None:
        return Expected(reason="yahoo_error")
    if not isinstance(chart.get("result"), list) or not chart["result"]:
        return Expected(reason="no_result")
    out = Expected()
    problems = []
    for result in chart["result"]:
        problem = _result_problem(result)
        if problem is not None:
            problems.append(problem)
            continue
        if result.get("timestamp") is None:
            continue
        symbol = result["meta"]["symbol"].upper()
        quote = result["indicators"]["quote"][0]
        for i, ts in enumerate(result["timestamp"]):
            row = [quote[name][i] for name in FIELDS]
            faults = bar_faults(ts, row, emitted_at)
            if faults is None:
                continue
            if faults:
                out.rejected.append((symbol, i, ts if is_number(ts) else None, faults))
                continue
            o, h, lo, c, v = row
            key = (symbol, int(ts) - int(ts) % 60)
            candidate = (emitted_at, v, c, h, lo, o)
            if key not in out.bars or candidate > out.bars[key]:
                out.bars[key] = candidate
    if problems:
        out.reason = problems[0]
    elif out.rejected:
        out.reason = "invalid_bars"
    return out


def merged_bars(expected: list[Expected]) -> dict[tuple[str, int], tuple]:
    """The true bars of several events, as table_bars shows them: (o, h, l, c, v)."""
    best: dict[tuple[str, int], tuple] = {}
    for e in expected:
        for key, candidate in e.bars.items():
            if key not in best or candidate > best[key]:
                best[key] = candidate
    return {k: (o, h, lo, c, int(v)) for k, (_, v, c, h, lo, o) in best.items()}


def assert_contract(batch: DecodedBatch) -> None:
    """Every stored bar satisfies the bar contract, checked row by row."""
    for row in batch.bars.to_pylist():
        o, h, lo, c, v = (row[name] for name in FIELDS)
        ts = int(row["ts"].timestamp())
        assert isinstance(row["symbol"], str) and row["symbol"].isascii() and SYMBOL.fullmatch(row["symbol"])
        assert ts % 60 == 0 and ts >= MIN_TS and ts * 1000 <= row["emitted_at"] + DAY_MS
        assert MIN_TS * 1000 <= row["emitted_at"] <= NOW_MS + DAY_MS
        assert all(math.isfinite(p) and 0 < p <= 1e9 for p in (o, h, lo, c))
        assert lo <= min(o, c) <= max(o, c) <= h
        assert 0 <= v <= 10**15


def assert_matches_model(bodies: list[bytes]) -> None:
    """decode_batch agrees with the model on every event, and accounts for each exactly once."""
    events = [RawEvent(body, "0", seq, 1_700_000_000_000) for seq, body in enumerate(bodies)]
    batch = decode_batch(events, now=NOW)  # must not raise, whatever the bodies
    expected = [expect(body) for body in bodies]

    # every event exactly once: ignored, dead-lettered once, or decoded cleanly
    letters = {letter.event.sequence_number: letter for letter in batch.dead_letters}
    assert len(letters) == len(batch.dead_letters), "an event was dead-lettered twice"
    assert batch.events == len(bodies)
    assert batch.ignored == sum(e.ignored for e in expected)
    clean = sum(not e.ignored and e.reason is None for e in expected)
    assert batch.events == batch.ignored + len(batch.dead_letters) + clean
    assert sorted(letters) == [seq for seq, e in enumerate(expected) if e.reason is not None]

    for seq, e in enumerate(expected):
        if e.reason is None:
            continue
        letter = letters[seq]
        assert letter.reason == e.reason, (bodies[seq], letter)
        named = [r for r in letter.rejected if "index" in r]
        assert [(r["symbol"], r["index"], r["ts"]) for r in named] == [(s, i, t) for s, i, t, _ in e.rejected]
        for r, (_, _, _, faults) in zip(named, e.rejected, strict=True):
            assert r["reason"] in faults, (r, faults)
    records = [orjson.loads(line) for line in batch.dead_letter_jsonl("b").splitlines()]  # each serialises
    assert [r["sequence_number"] for r in records] == sorted(letters)

    # the valid bars of every event survive, partly bad events included, and nothing else is stored
    assert table_bars(batch.bars) == merged_bars(expected)
    sources = set(batch.bars.column("sequence_number").to_pylist())
    assert all(expected[seq].bars for seq in sources)
    assert_contract(batch)


@PROPERTIES
@given(bodies=st.lists(BODIES, min_size=1, max_size=40))
def test_any_bodies_decode_as_the_model_says(bodies):
    """Random bytes, JSON and drawn envelopes: no raise, each event once, exactly the model's true bars."""
    assert_matches_model(bodies)


@PROPERTIES
@given(
    minutes=st.lists(st.integers(0, 300), min_size=2, max_size=30, unique=True),
    rows=st.data(),
    where=st.data(),
)
def test_one_bad_value_costs_only_its_bar(minutes, rows, where):
    """A value of any JSON type dropped anywhere into a clean event costs at most that bar."""
    ts = [T0 + 60 * m for m in minutes]
    clean = [rows.draw(valid_bars()) for _ in minutes]
    bar, column = where.draw(st.integers(0, len(minutes) - 1)), where.draw(st.integers(0, 5))
    value = where.draw(ANY_VALUE)
    result = {
        "meta": {"symbol": "aapl", "dataGranularity": "1m"},
        "timestamp": list(ts),
        "indicators": {"quote": [{name: [r[k] for r in clean] for k, name in enumerate(FIELDS)}]},
    }
    if column == 0:
        result["timestamp"][bar] = value
    else:
        result["indicators"]["quote"][0][FIELDS[column - 1]][bar] = value
    body = json.dumps(
        {"_airbyte_stream": "price", "_airbyte_emitted_at": T0 * 1000, "_airbyte_data": {"chart": {"result": [result]}}}
    ).encode()
    batch = decode_batch([RawEvent(body, "0", 0, None)], now=NOW)
    stored = table_bars(batch.bars)
    others = {("AAPL", t): (*r[:4], int(r[4])) for i, (t, r) in enumerate(zip(ts, clean, strict=True)) if i != bar}
    if column == 0 and is_number(value) and math.isfinite(value) and float(value).is_integer():
        # a valid timestamp moves the bar, maybe onto another bar's minute, where values break the tie
        others.pop(("AAPL", int(value) - int(value) % 60), None)
    assert stored.items() >= others.items()
    assert len(stored) <= len(others) + 2
    assert len(batch.dead_letters) <= 1
    assert_matches_model([body])


_PRICE = b'{"_airbyte_stream": "price", "_airbyte_emitted_at": 1793629980000, '


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        _PRICE + b'"_airbyte_data": null}',
        _PRICE + b'"_airbyte_data": {"chart": {"result": [null]}}}',
        _PRICE + b'"_airbyte_data": {"chart": {"result": [{"meta": {"symbol": "A"}, "timestamp": [1e400]}]}}}',
        _PRICE + b'"_airbyte_data": {"chart": {"error": ' + b"[" * 300 + b"]" * 300 + b"}}}",
        _PRICE
        + b'"_airbyte_data": {"chart": {"result": [{"meta": {"symbol": "A"}, "timestamp": [false, '
        + b"1" * 25
        + b'], "indicators": {"quote": [{"open": [null, 1], "high": [null, 1], "low": [null, 1], "close": [null, 1],'
        + b' "volume": [null, true]}]}}]}}}',
    ],
)
def test_edge_bodies_match_the_model(body):
    """Bodies the strategies may rarely draw: empty, null, null data or result, 1e400, deep error, bools."""
    assert_matches_model([body])
