"""The forecast stream's pure rules: which bars get a forecast, the window, the message, its key."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from functions.forecast.stream import idempotency_key, message, newest_bars, records, window

T0 = 1_762_094_000  # a minute (unix seconds)


def _bars(rows: list[tuple[str, int, float]]) -> pa.Table:
    """A decoded batch's bars table: (symbol, ts, close) rows."""
    return pa.table(
        {
            "symbol": [r[0] for r in rows],
            "ts": pa.array([r[1] for r in rows], pa.int64()).cast(pa.timestamp("s", tz="UTC")),
            "open": [r[2] for r in rows],
            "high": [r[2] for r in rows],
            "low": [r[2] for r in rows],
            "close": [r[2] for r in rows],
            "volume": [1.0 for _ in rows],
        }
    )


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], {}),
        ([("AAA", T0, 1.0)], {"AAA": T0}),
        ([("AAA", T0, 1.0), ("AAA", T0 + 60, 2.0), ("BBB", T0 - 60, 3.0)], {"AAA": T0 + 60, "BBB": T0 - 60}),
        ([("BBB", T0 + 120, 1.0), ("AAA", T0, 2.0), ("BBB", T0, 3.0)], {"AAA": T0, "BBB": T0 + 120}),
    ],
)
def test_one_forecast_per_symbol_for_its_newest_bar(rows, expected):
    """A batch asks for one forecast per symbol, for its newest bar, whatever the order of the rows."""
    assert newest_bars(_bars(rows)) == expected


def test_records_are_one_symbols_scoring_bars():
    """A table's rows of one symbol become scoring records with unix-second timestamps."""
    got = records(_bars([("AAA", T0, 1.0), ("BBB", T0, 2.0)]), "AAA")
    assert got == [{"symbol": "AAA", "ts": T0, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}]
    assert records(None, "AAA") == []


def _bar(ts: int, close: float) -> dict[str, Any]:
    return {"symbol": "AAA", "ts": ts, "open": close, "high": close, "low": close, "close": close, "volume": 1.0}


@pytest.mark.parametrize(
    ("batch", "stored", "as_of", "count", "closes"),
    [
        # latest/ not yet written by ingest: the batch alone supplies the new minute
        ([_bar(T0 + 120, 9.0)], [_bar(T0, 1.0), _bar(T0 + 60, 2.0)], T0 + 120, 3, [1.0, 2.0, 9.0]),
        # ingest already stored it (and a revision of the minute in the batch wins)
        ([_bar(T0 + 60, 7.0)], [_bar(T0, 1.0), _bar(T0 + 60, 2.0)], T0 + 60, 3, [1.0, 7.0]),
        # latest/ holds newer bars (this consumer lags): the window stops at as_of
        ([_bar(T0, 5.0)], [_bar(T0, 1.0), _bar(T0 + 60, 2.0)], T0, 3, [5.0]),
        # only the newest `count` bars
        ([_bar(T0 + 120, 3.0)], [_bar(T0, 1.0), _bar(T0 + 60, 2.0)], T0 + 120, 2, [2.0, 3.0]),
    ],
)
def test_window_merges_the_batch_with_latest(batch, stored, as_of, count, closes):
    """The window is latest/ merged with the batch (the batch wins per minute), up to as_of, the newest count."""
    got = window(batch, stored, as_of, count)
    assert [b["close"] for b in got] == closes
    assert [b["ts"] for b in got] == sorted(b["ts"] for b in got)


def _doc(**overrides: Any) -> dict[str, Any]:
    doc = {
        "symbol": "AAA",
        "as_of": "2026-11-02T14:33:00Z",
        "target_ts": "2026-11-02T14:34:00Z",
        "predicted_close": 101.5,
        "last_close": 101.0,
        "interval": {"level": 0.9, "low": 100.0, "high": 103.0},
        "session_closed": False,
        "next_open": None,
        "model": {"name": "m", "version": "4", "kind": "lstm"},
        "skill": None,
    }
    return {**doc, **overrides}


def test_message_shape_and_key():
    """The message carries symbol, as_of, target, forecast, interval, version, kind and symbol|as_of|version."""
    assert message(_doc()) == {
        "symbol": "AAA",
        "as_of": "2026-11-02T14:33:00Z",
        "target_ts": "2026-11-02T14:34:00Z",
        "forecast": 101.5,
        "last_close": 101.0,
        "interval": {"level": 0.9, "low": 100.0, "high": 103.0},
        "version": "4",
        "kind": "lstm",
        "key": "AAA|2026-11-02T14:33:00Z|4",
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"session_closed": True, "target_ts": None, "next_open": "2026-11-03T14:30:00Z"},
        {"target_ts": None},
        {"model": {"name": "m", "version": "unknown", "kind": "unknown"}},
    ],
)
def test_unpublished_forecasts(overrides):
    """Past the session, without a target minute, or without a model version: nothing is published."""
    assert message(_doc(**overrides)) is None


def test_idempotent_key():
    """The same forecast gives the same message and key; another version is another key."""
    assert message(_doc()) == message(_doc())
    assert message(_doc())["key"] == idempotency_key("AAA", "2026-11-02T14:33:00Z", "4")
    assert idempotency_key("AAA", "2026-11-02T14:33:00Z", "5") != message(_doc())["key"]
