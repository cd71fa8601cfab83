"""Decoding of Airbyte/Yahoo messages: every rule, every reject reason, order independence."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devhost.feed import FeedConfig, generate
from functions.ingest.airbyte import _CODE_REASON, RawEvent, Reason, _bar_reasons, decode_batch, events_from_bodies
from functions.ingest.bars import true_bars
from tests.factories import message, oracle, table_bars

T0 = 1_793_630_000 - 1_793_630_000 % 60
GOOD = (10.0, 10.5, 9.5, 10.2, 100)
EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "airbyte-price-event.json"  # copy of shared/examples


def decode(*bodies: bytes):
    return decode_batch(events_from_bodies(bodies))


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
    ],
)
def test_decode_rules(rows, expected_bars, expected_nulls):
    """Null minutes are skipped, not rejected; valid bars (provisional ones too) are kept."""
    ts = [T0 + 60 * i for i in range(len(rows))]
    batch = decode(message("AAPL", 1, ts, rows))
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
    body = message("AAPL", 5, [T0, T0 + 60], [GOOD, bar])
    batch = decode(body)
    assert table_bars(batch.bars) == {("AAPL", T0): GOOD}
    [letter] = batch.dead_letters
    assert letter.reason == Reason.INVALID_BARS
    assert letter.rejected == ({"symbol": "AAPL", "index": 1, "ts": T0 + 60, "reason": reason},)


def _doc() -> dict:
    return orjson.loads(message("AAPL", 5, [T0], [GOOD]))


def _with(path: str, value) -> bytes:
    doc = _doc()
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not utf-8", Reason.INVALID_UTF8),
        (b'{"_airbyte_stream": "price", ', Reason.INVALID_JSON),
        (b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
        (
            message("AAPL", 5, [T0], [(10.0, 12345.678, 9.5, 10.2, 1)]).replace(b"12345.678", b"1e400"),
            Reason.INVALID_JSON,
        ),
        (b'{"hello": "world"}', Reason.MISSING_ENVELOPE),
        (_with("_airbyte_emitted_at", "yesterday"), Reason.INVALID_EMITTED_AT),
        (_with("_airbyte_data", {"quote": 1}), Reason.MISSING_CHART),
        (_with("_airbyte_data.chart.error", {"code": "Not Found"}), Reason.YAHOO_ERROR),
        (_with("_airbyte_data.chart.result", []), Reason.NO_RESULT),
        (_with("_airbyte_data.chart.result.0.meta.symbol", "../etc/passwd"), Reason.INVALID_SYMBOL),
        (_with("_airbyte_data.chart.result.0.meta.symbol", 42), Reason.INVALID_SYMBOL),
        (_with("_airbyte_data.chart.result.0.meta.dataGranularity", "5m"), Reason.UNSUPPORTED_GRANULARITY),
        (_with("_airbyte_data.chart.result.0.indicators", {"quote": []}), Reason.MISSING_QUOTE),
        (_with("_airbyte_data.chart.result.0.indicators.quote.0.close", [1.0, 2.0]), Reason.LENGTH_MISMATCH),
        (_with("_airbyte_data.chart.result.0.indicators.quote.0.close", ["10.2"]), Reason.BAD_VALUE_TYPE),
        (_with("_airbyte_data.chart.result.0.timestamp", [None]), Reason.BAD_VALUE_TYPE),
    ],
)
def test_event_reject_reasons(body, reason):
    """An undecodable event is dead-lettered once with its reason and its original body."""
    good = message("MSFT", 5, [T0], [GOOD])
    batch = decode_batch([RawEvent(good, "0", 1, 1000), RawEvent(body, "0", 2, 1000, "64")])
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


def test_non_finite_prices_are_rejected_by_the_vectorised_check():
    """Infinite or NaN prices (never valid JSON, but possible in any array) are named as such."""
    o, h, lo, c = (np.array([10.0, np.inf]), np.array([11.0, np.inf]), np.array([9.0, 9.0]), np.array([10.0, 10.0]))
    null_minute, code = _bar_reasons(o, h, lo, c, np.array([1.0, 1.0]), np.array([T0, T0 + 60]))
    assert null_minute.tolist() == [False, False]
    assert [_CODE_REASON.get(int(x)) for x in code] == [None, Reason.NON_FINITE_PRICE]


def test_other_streams_are_ignored_not_dead_lettered():
    """destination-kafka's connection check (test-topic-stream) is skipped silently."""
    batch = decode(message("AAPL", 5, [T0], [GOOD], stream="test-topic-stream"))
    assert (batch.ignored, batch.dead_letters, batch.bars.num_rows) == (1, [], 0)


def test_several_results_and_symbol_case():
    """Every chart result is decoded; symbols are upper-cased."""
    second = orjson.loads(message("brk-b", 5, [T0], [(400.0, 401.0, 399.0, 400.5, 7)]))
    extra = second["_airbyte_data"]["chart"]["result"][0]
    batch = decode(message("^GSPC", 5, [T0], [GOOD], extra_results=[extra]))
    assert sorted(table_bars(batch.bars)) == [("BRK-B", T0), ("^GSPC", T0)]


def test_greatest_emitted_at_wins_and_revises_provisional_bar():
    """A later sync revises the provisional bar; an older, late-arriving sync does not undo it."""
    provisional = message("AAPL", 1000, [T0, T0 + 60], [GOOD, (10.2, 10.2, 10.2, 10.2, 0)])
    revised = message("AAPL", 2000, [T0, T0 + 60], [GOOD, (10.2, 10.9, 10.1, 10.8, 350)])
    for order in ((provisional, revised), (revised, provisional)):
        assert table_bars(decode(*order).bars)[("AAPL", T0 + 60)] == (10.2, 10.9, 10.1, 10.8, 350)


def test_mid_minute_live_bar_is_floored_to_its_minute():
    """Yahoo's live last bar stamped mid-minute lands on its minute start."""
    batch = decode(message("AAPL", 5, [T0, T0 + 97], [GOOD, (10.2, 10.3, 10.1, 10.25, 40)]))
    assert sorted(t for _, t in table_bars(batch.bars)) == [T0, T0 + 60]


def test_lineage_travels_with_each_bar():
    """partition, sequence_number and enqueued_at of the winning event are on its bars."""
    batch = decode_batch([RawEvent(message("AAPL", 9, [T0], [GOOD]), "3", 77, 1_700_000_000_123)])
    row = batch.bars.to_pylist()[0]
    assert (row["partition"], row["sequence_number"], row["emitted_at"]) == ("3", 77, 9)
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
