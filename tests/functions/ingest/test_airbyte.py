"""Decoding of Airbyte/Yahoo messages: every rule, every reject reason, order independence."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devhost.market.feed import FeedConfig, generate
from functions.ingest.airbyte import _CODE_REASON, RawEvent, Reason, _bar_reasons, decode_batch, events_from_bodies
from functions.shared.bars import true_bars
from tests.factories import message, oracle, table_bars

T0 = 1_793_630_000 - 1_793_630_000 % 60  # 2026-11-02 14:33 UTC
E0 = T0 * 1000 + 2_000  # a sync emitted 2 s into the minute, in ms
NOW = T0 + 3_600.0  # the batch's clock: an hour later
DAY = 86_400
GOOD = (10.0, 10.5, 9.5, 10.2, 100)
EXAMPLE = (
    Path(__file__).resolve().parents[2] / "data" / "airbyte-price-event.json"
)  # the example event of docs/design.md


def decode(*bodies: bytes):
    return decode_batch(events_from_bodies(bodies), now=NOW)


class Lit(bytes):
    """A JSON literal spliced into a body as written (orjson cannot write ints beyond 64 bits)."""


def splice(doc: Any) -> bytes:
    """``doc`` as JSON, with every :class:`Lit` written verbatim."""
    literals: list[bytes] = []

    def walk(node: Any) -> Any:
        if isinstance(node, Lit):
            literals.append(node)
            return f"@@lit{len(literals) - 1}@@"
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v) for v in node]
        return node

    body = orjson.dumps(walk(doc))
    for i, literal in enumerate(literals):
        body = body.replace(f'"@@lit{i}@@"'.encode(), literal)
    return body


def bars_message(ts: list[Any], rows: list[tuple], emitted_at: Any = E0, symbol: str = "AAPL") -> bytes:
    """A price event whose timestamps and values may be any JSON, including :class:`Lit` literals."""
    doc = orjson.loads(message(symbol, E0, [T0] * len(ts), [GOOD] * len(rows)))
    doc["_airbyte_emitted_at"] = emitted_at
    result = doc["_airbyte_data"]["chart"]["result"][0]
    result["timestamp"] = ts
    for k, name in enumerate(("open", "high", "low", "close", "volume")):
        result["indicators"]["quote"][0][name] = [row[k] for row in rows]
    return splice(doc)


def test_shared_example_decodes_to_its_valid_minutes():
    """The DESIGN example keeps 5 bars: the null minute is skipped, the provisional bar kept."""
    batch = decode(EXAMPLE.read_bytes())
    assert batch.dead_letters == []
    assert batch.null_minutes == 1
    bars = table_bars(batch.bars)
    assert len(bars) == 5
    assert bars[("MSFT", 1763649300)] == (412.33, 412.33, 412.33, 412.33, 0)
    assert bars[("MSFT", 1763649000)] == (411.9, 412.1, 411.85, 412.04, 48211)


@pytest.mark.parametrize(
    ("rows", "expected_bars", "expected_nulls"),
    [
        ([GOOD], 1, 0),
        ([GOOD, (None,) * 5], 1, 1),
        ([(None,) * 5], 0, 1),
        ([GOOD, (10.2, 10.2, 10.2, 10.2, 0)], 2, 0),  # provisional last bar is a valid bar
        ([(10, 11, 9, 10, 5)], 1, 0),  # integer prices are fine
        ([(10.0, 10.5, 9.5, 10.2, 100.0)], 1, 0),  # an integral float volume is fine
        ([(1e9, 1e9, 1e9, 1e9, 10**15)], 1, 0),  # the upper bounds are inclusive
        ([(1.0, 1.0, 1.0, 1.0, 1)], 1, 0),  # 1.0 everywhere is a price, not a bool
    ],
)
def test_decode_rules(rows, expected_bars, expected_nulls):
    """Null minutes are skipped, not rejected; valid bars (provisional ones too) are kept."""
    ts = [T0 + 60 * i for i in range(len(rows))]
    batch = decode(message("AAPL", E0, ts, rows))
    assert (batch.bars.num_rows, batch.null_minutes, batch.dead_letters) == (expected_bars, expected_nulls, [])


@pytest.mark.parametrize(
    ("bar", "reason"),
    [
        ((10.0, None, 9.5, 10.2, 100), Reason.PARTIAL_NULL),
        ((0.0, 10.5, 0.0, 10.2, 100), Reason.NON_POSITIVE_PRICE),
        ((-1.0, 10.5, -2.0, 10.2, 100), Reason.NON_POSITIVE_PRICE),
        ((10.0, 9.0, 9.5, 10.2, 100), Reason.INCONSISTENT_OHLC),
        ((10.0, 10.5, 10.1, 10.2, 100), Reason.INCONSISTENT_OHLC),
        ((10.0, 10.5, 9.5, 10.2, -1), Reason.NEGATIVE_VOLUME),
        ((10.0, 10.5, 9.5, 10.2, 1.5), Reason.FRACTIONAL_VOLUME),
    ],
)
def test_bar_reject_reasons(bar, reason):
    """An invalid bar is named in one dead letter; the event's valid bars are kept."""
    body = message("AAPL", E0, [T0, T0 + 60], [GOOD, bar])
    batch = decode(body)
    assert table_bars(batch.bars) == {("AAPL", T0): GOOD}
    [letter] = batch.dead_letters
    assert letter.reason == Reason.INVALID_BARS
    assert letter.rejected == ({"symbol": "AAPL", "index": 1, "ts": T0 + 60, "reason": reason},)


# Findings 1-3 and 5 of issue 11: one bad value costs its own bar, never the event or the batch.
# `ts` and each value are JSON as sent (Lit: a literal beyond what orjson writes); `reported` is
# the ts the dead letter names (the value as received, or None when it is no number).
@pytest.mark.parametrize(
    ("ts", "bar", "reported", "reason"),
    [
        # 1: beyond int64 (the old decode raised OverflowError out of the batch, or lost the event)
        (Lit(b"9223372036854775808"), GOOD, 2**63, Reason.INVALID_TIMESTAMP),
        (Lit(b"18446744073709551615"), GOOD, 2**64 - 1, Reason.INVALID_TIMESTAMP),
        (Lit(b"18446744073709551617"), GOOD, float(2**64), Reason.INVALID_TIMESTAMP),
        (Lit(b"-9223372036854775809"), GOOD, -float(2**63), Reason.INVALID_TIMESTAMP),
        # 2: a millisecond timestamp, year 2100, before 2000, more than a day after emission, fractional
        (1_793_629_800_000, GOOD, 1_793_629_800_000, Reason.INVALID_TIMESTAMP),
        (4_102_444_800, GOOD, 4_102_444_800, Reason.INVALID_TIMESTAMP),
        (946_684_740, GOOD, 946_684_740, Reason.INVALID_TIMESTAMP),
        (E0 // 1000 + DAY + 60, GOOD, E0 // 1000 + DAY + 60, Reason.INVALID_TIMESTAMP),
        (T0 + 60.5, GOOD, T0 + 60.5, Reason.INVALID_TIMESTAMP),
        # 3: prices and volumes out of range (1e19 wrapped to a negative int64)
        (T0 + 60, (1e308, 1e308, 1e308, 1e308, 100), T0 + 60, Reason.PRICE_OUT_OF_RANGE),
        (T0 + 60, (10.0, 1_000_000_001, 9.5, 10.2, 100), T0 + 60, Reason.PRICE_OUT_OF_RANGE),
        (T0 + 60, (10.0, 10.5, 9.5, 10.2, 1e19), T0 + 60, Reason.VOLUME_OUT_OF_RANGE),
        (T0 + 60, (10.0, 10.5, 9.5, 10.2, 10**19), T0 + 60, Reason.VOLUME_OUT_OF_RANGE),
        (T0 + 60, (10.0, 10.5, 9.5, 10.2, 10**15 + 1), T0 + 60, Reason.VOLUME_OUT_OF_RANGE),
        (T0 + 60, (10.0, 10.5, 9.5, 10.2, Lit(b"1" + b"0" * 30)), T0 + 60, Reason.VOLUME_OUT_OF_RANGE),
        # 5: values of the wrong JSON type, and a null timestamp
        (T0 + 60, (10.0, 10.5, 9.5, "12.5", 100), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, (10.0, 10.5, 9.5, "NaN", 100), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, (10.0, 10.5, 9.5, 10.2, True), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, (True, 10.5, 9.5, 10.2, 100), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, (10.0, 10.5, 9.5, 10.2, False), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, ({}, 10.5, 9.5, 10.2, 100), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, (10.0, [10.5], 9.5, 10.2, 100), T0 + 60, Reason.BAD_VALUE_TYPE),
        (T0 + 60, (None, None, None, None, "0"), T0 + 60, Reason.BAD_VALUE_TYPE),  # not a null minute
        (str(T0 + 60), GOOD, None, Reason.BAD_VALUE_TYPE),
        (True, GOOD, None, Reason.BAD_VALUE_TYPE),
        (None, GOOD, None, Reason.INVALID_TIMESTAMP),
    ],
)
def test_one_bad_value_rejects_only_its_bar(ts, bar, reported, reason):
    """A bad timestamp or value rejects that bar alone; the event's other bars and the batch survive."""
    body = bars_message([T0, ts, T0 + 120], [GOOD, bar, GOOD])
    other = message("MSFT", E0, [T0], [GOOD])
    batch = decode(body, other)
    assert table_bars(batch.bars) == {("AAPL", T0): GOOD, ("AAPL", T0 + 120): GOOD, ("MSFT", T0): GOOD}
    [letter] = batch.dead_letters
    assert (letter.reason, letter.rejected) == (
        Reason.INVALID_BARS,
        ({"symbol": "AAPL", "index": 1, "ts": reported, "reason": reason},),
    )
    assert orjson.loads(batch.dead_letter_jsonl("b1"))["rejected"][0]["reason"] == reason


@pytest.mark.parametrize(
    ("ts", "kept"),
    [
        (T0 + 60.0, T0 + 60),  # an integral float is a whole number of seconds
        (946_684_800, 946_684_800),  # 2000-01-01T00:00:00Z itself
        (E0 // 1000 + DAY, E0 // 1000 + DAY - (E0 // 1000 + DAY) % 60),  # emitted_at + 1 day, floored
    ],
)
def test_timestamp_bounds_are_inclusive(ts, kept):
    """Timestamps on the bounds, and integral floats, are valid bars."""
    batch = decode(bars_message([ts], [GOOD]))
    assert (table_bars(batch.bars), batch.dead_letters) == ({("AAPL", kept): GOOD}, [])


@pytest.mark.parametrize("ts", [None, "x", False, 1_793_629_800_000, T0 + 0.5])
def test_no_trade_minute_is_skipped_whatever_its_timestamp(ts):
    """A minute with null in all five arrays is a skipped no-trade minute, not a rejected bar."""
    batch = decode(bars_message([T0, ts], [GOOD, (None,) * 5]))
    assert (table_bars(batch.bars), batch.null_minutes, batch.dead_letters) == ({("AAPL", T0): GOOD}, 1, [])


def test_every_bad_bar_is_named_in_one_dead_letter():
    """Several bad bars of one event: one dead letter naming each, in order; the good bar is kept."""
    body = bars_message(
        [T0, 1_793_629_800_000, T0 + 120, T0 + 180],
        [(10.0, 10.5, 9.5, "12.5", 100), GOOD, GOOD, (10.0, 10.5, 9.5, 10.2, 1e19)],
    )
    batch = decode(body)
    assert table_bars(batch.bars) == {("AAPL", T0 + 120): GOOD}
    [letter] = batch.dead_letters
    assert [(r["index"], r["reason"]) for r in letter.rejected] == [
        (0, Reason.BAD_VALUE_TYPE),
        (1, Reason.INVALID_TIMESTAMP),
        (3, Reason.VOLUME_OUT_OF_RANGE),
    ]


@pytest.mark.parametrize(
    "emitted_at",
    [
        Lit(b"9223372036854775808"),  # beyond int64: the old decode raised OverflowError
        Lit(b"18446744073709551615"),
        Lit(b"18446744073709551617"),  # parsed as a float
        1,  # 1970
        E0 // 1000,  # seconds, not ms
        946_684_799_999,  # a millisecond before 2000
        int(NOW * 1000) + DAY * 1000 + 1,  # more than a day after the batch's clock
        float(E0),
        True,
        "yesterday",
        None,
    ],
)
def test_implausible_emitted_at_rejects_the_event(emitted_at):
    """emitted_at must be an int of ms in [2000-01-01, now + 1 day]; the rest of the batch survives."""
    batch = decode(bars_message([T0], [GOOD], emitted_at=emitted_at), message("MSFT", E0, [T0], [GOOD]))
    assert table_bars(batch.bars) == {("MSFT", T0): GOOD}
    assert [d.reason for d in batch.dead_letters] == [Reason.INVALID_EMITTED_AT]


def test_emitted_at_bounds_follow_the_batch_clock():
    """The upper bound is the batch's own clock plus a day, inclusive."""
    body = bars_message([T0], [GOOD], emitted_at=E0)
    assert decode_batch(events_from_bodies([body]), now=E0 / 1000 - DAY).dead_letters == []
    [letter] = decode_batch(events_from_bodies([body]), now=(E0 - 1) / 1000 - DAY).dead_letters
    assert letter.reason == Reason.INVALID_EMITTED_AT


@pytest.mark.parametrize(
    ("symbol", "stored"),
    [
        ("aapl", "AAPL"),
        ("brk-b", "BRK-B"),
        ("GOOG\n", None),
        ("straße", None),
        ("AAPL ", None),
        (" AAPL", None),
        ("", None),
        ("A" * 17, None),
    ],
)
def test_symbols_are_upper_cased_or_rejected(symbol, stored):
    """Finding 4: lower case is upper-cased; a newline, non-ASCII letters or spaces reject the event."""
    batch = decode(message(symbol, E0, [T0], [GOOD]))
    if stored is None:
        assert (table_bars(batch.bars), [d.reason for d in batch.dead_letters]) == ({}, [Reason.INVALID_SYMBOL])
    else:
        assert (table_bars(batch.bars), batch.dead_letters) == ({(stored, T0): GOOD}, [])


def _doc() -> dict:
    return orjson.loads(message("AAPL", E0, [T0], [GOOD]))


def _with(path: str, value) -> bytes:
    doc = _doc()
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return splice(doc)


_DEEP = Lit(b"[" * 300 + b"]" * 300)  # orjson reads 1024 levels but writes only 255


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not utf-8", Reason.INVALID_UTF8),
        (b'{"_airbyte_stream": "price", ', Reason.INVALID_JSON),
        (b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
        (
            message("AAPL", E0, [T0], [(10.0, 12345.678, 9.5, 10.2, 1)]).replace(b"12345.678", b"1e400"),
            Reason.INVALID_JSON,
        ),
        (b'{"hello": "world"}', Reason.MISSING_ENVELOPE),
        (_with("_airbyte_emitted_at", "yesterday"), Reason.INVALID_EMITTED_AT),
        (_with("_airbyte_emitted_at", _DEEP), Reason.INVALID_EMITTED_AT),
        (_with("_airbyte_data", {"quote": 1}), Reason.MISSING_CHART),
        (_with("_airbyte_data.chart.error", {"code": "Not Found"}), Reason.YAHOO_ERROR),
        (_with("_airbyte_data.chart.error", _DEEP), Reason.YAHOO_ERROR),  # the old decode raised
        (_with("_airbyte_data.chart.result", []), Reason.NO_RESULT),
        (_with("_airbyte_data.chart.result.0.meta.symbol", "../etc/passwd"), Reason.INVALID_SYMBOL),
        (_with("_airbyte_data.chart.result.0.meta.symbol", 42), Reason.INVALID_SYMBOL),
        (_with("_airbyte_data.chart.result.0.meta.dataGranularity", "5m"), Reason.UNSUPPORTED_GRANULARITY),
        (_with("_airbyte_data.chart.result.0.indicators", {"quote": []}), Reason.MISSING_QUOTE),
        (_with("_airbyte_data.chart.result.0.indicators.quote.0.close", [1.0, 2.0]), Reason.LENGTH_MISMATCH),
        (_with("_airbyte_data.chart.result.0.indicators.quote.0.close", "10.2"), Reason.MISSING_QUOTE),
        (_with("_airbyte_data.chart.result.0.timestamp", "now"), Reason.BAD_VALUE_TYPE),
    ],
)
def test_event_reject_reasons(body, reason):
    """An undecodable event is dead-lettered once with its reason and its original body."""
    good = message("MSFT", E0, [T0], [GOOD])
    batch = decode_batch([RawEvent(good, "0", 1, 1000), RawEvent(body, "0", 2, 1000, "64")], now=NOW)
    assert table_bars(batch.bars) == {("MSFT", T0): GOOD}
    [letter] = batch.dead_letters
    record = letter.to_record("b1")
    assert (record["reason"], record["sequence_number"], record["partition"], record["offset"]) == (
        reason,
        2,
        "0",
        "64",
    )
    decoded = base64.b64decode(record["body"]) if record["body_encoding"] == "base64" else record["body"].encode()
    assert decoded == body
    assert json.loads(batch.dead_letter_jsonl("b1"))["reason"] == reason


def test_bad_value_in_one_event_leaves_its_group_on_the_fast_path_values():
    """A non-number in one event of a conversion group changes no value of the other events' bars."""
    clean = [message(f"S{i}", E0, [T0, T0 + 60], [GOOD, (10.2, 10.9, 10.1, 10.8, 350)]) for i in range(20)]
    expected = table_bars(decode(*clean).bars)
    batch = decode(*clean[:7], bars_message([T0], [(10.0, 10.5, 9.5, "x", 100)], symbol="BAD"), *clean[7:])
    assert table_bars(batch.bars) == expected
    assert [r["reason"] for d in batch.dead_letters for r in d.rejected] == [Reason.BAD_VALUE_TYPE]


def test_non_finite_prices_are_rejected_by_the_vectorised_check():
    """Infinite or NaN prices (never valid JSON, but possible in any array) are named as such."""
    o, h, lo, c = (np.array([10.0, np.inf]), np.array([11.0, np.inf]), np.array([9.0, 9.0]), np.array([10.0, 10.0]))
    ts = np.array([T0, T0 + 60], dtype=np.float64)
    null_minute, code = _bar_reasons(o, h, lo, c, np.array([1.0, 1.0]), ts, np.array([E0, E0]))
    assert null_minute.tolist() == [False, False]
    assert [_CODE_REASON.get(int(x)) for x in code] == [None, Reason.NON_FINITE_PRICE]


def test_other_streams_are_ignored_not_dead_lettered():
    """destination-kafka's connection check (test-topic-stream) is skipped silently, whatever its emitted_at."""
    batch = decode(message("AAPL", 1, [T0], [GOOD], stream="test-topic-stream"))
    assert (batch.events, batch.ignored, batch.dead_letters, batch.bars.num_rows) == (1, 1, [], 0)


def test_several_results_and_symbol_case():
    """Every chart result is decoded; symbols are upper-cased."""
    second = orjson.loads(message("brk-b", E0, [T0], [(400.0, 401.0, 399.0, 400.5, 7)]))
    extra = second["_airbyte_data"]["chart"]["result"][0]
    batch = decode(message("^GSPC", E0, [T0], [GOOD], extra_results=[extra]))
    assert sorted(table_bars(batch.bars)) == [("BRK-B", T0), ("^GSPC", T0)]


def test_greatest_emitted_at_wins_and_revises_provisional_bar():
    """A later sync revises the provisional bar; an older, late-arriving sync does not undo it."""
    provisional = message("AAPL", E0, [T0, T0 + 60], [GOOD, (10.2, 10.2, 10.2, 10.2, 0)])
    revised = message("AAPL", E0 + 60_000, [T0, T0 + 60], [GOOD, (10.2, 10.9, 10.1, 10.8, 350)])
    for order in ((provisional, revised), (revised, provisional)):
        assert table_bars(decode(*order).bars)[("AAPL", T0 + 60)] == (10.2, 10.9, 10.1, 10.8, 350)


def test_mid_minute_live_bar_is_floored_to_its_minute():
    """Yahoo's live last bar stamped mid-minute lands on its minute start."""
    batch = decode(message("AAPL", E0, [T0, T0 + 97], [GOOD, (10.2, 10.3, 10.1, 10.25, 40)]))
    assert sorted(t for _, t in table_bars(batch.bars)) == [T0, T0 + 60]


def test_lineage_travels_with_each_bar():
    """partition, sequence_number and enqueued_at of the winning event are on its bars."""
    batch = decode_batch([RawEvent(message("AAPL", E0, [T0], [GOOD]), "3", 77, 1_700_000_000_123)], now=NOW)
    row = batch.bars.to_pylist()[0]
    assert (row["partition"], row["sequence_number"], row["emitted_at"]) == ("3", 77, E0)
    assert int(row["enqueued_at"].timestamp() * 1000) == 1_700_000_000_123


def test_feed_decodes_to_the_oracle_truth():
    """A generated feed with malformed events decodes to exactly the oracle's true bars."""
    bodies = list(generate(FeedConfig(symbols=("AAA", "BBB"), days=1, sync_every=60, bad_events=6)))
    batch = decode(*bodies)
    assert table_bars(batch.bars) == oracle(bodies)
    assert sorted(d.reason for d in batch.dead_letters) == sorted(
        ["invalid_json", "invalid_utf8", "invalid_symbol", "invalid_bars", "yahoo_error"]
    )
    assert batch.ignored == 1


_BODIES = list(generate(FeedConfig(symbols=("AAA", "BBB"), days=1, sync_every=90)))
# an exact-tie conflict: same sync, same emitted_at, different (valid) values
_TWIN = orjson.loads(_BODIES[3])
_TWIN["_airbyte_data"]["chart"]["result"][0]["indicators"]["quote"][0]["volume"][0] += 1
_BODIES.append(orjson.dumps(_TWIN))
_BASELINE = table_bars(decode(*_BODIES).bars)


@settings(max_examples=40, deadline=None)
@given(
    order=st.permutations(range(len(_BODIES))),
    duplicates=st.lists(st.integers(0, len(_BODIES) - 1), max_size=8),
    cuts=st.lists(st.integers(1, len(_BODIES)), max_size=4),
)
def test_any_reordering_or_duplication_gives_same_true_bars(order, duplicates, cuts):
    """Shuffled, duplicated and re-batched deliveries merge to the same true bars."""
    delivered = [_BODIES[i] for i in list(order) + duplicates]
    bounds = [0, *sorted(set(cuts)), len(delivered)]
    parts = [decode(*delivered[a:b]).bars for a, b in itertools.pairwise(bounds) if b > a]
    assert table_bars(true_bars(pa.concat_tables(parts))) == _BASELINE
