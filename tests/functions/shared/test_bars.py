"""The bar table: the true-bar rule, the rolling window and the Parquet encoding."""

from __future__ import annotations

import pyarrow as pa
import pytest

from functions.shared.bars import (
    BAR_SCHEMA,
    MAX_EMITTED_AHEAD_MS,
    MAX_PRICE,
    MAX_TS_AHEAD_S,
    MAX_VOLUME,
    MIN_EMITTED_AT_MS,
    MIN_TS,
    from_parquet,
    last_bars,
    normalise_symbol,
    to_parquet,
    true_bars,
    valid_symbol,
)

T0 = 1_793_629_980


def bars(rows: list[tuple]) -> pa.Table:
    """Rows of (symbol, ts, close, volume, emitted_at) as a bar table."""
    return pa.Table.from_pylist(
        [
            {"symbol": s, "ts": t, "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": v, "emitted_at": e}
            for s, t, c, v, e in rows
        ],
        schema=pa.schema([f.with_type(pa.int64()) if f.name == "ts" else f for f in BAR_SCHEMA]),
    ).cast(BAR_SCHEMA)


def key_values(table: pa.Table) -> list[tuple]:
    return [(r["symbol"], int(r["ts"].timestamp()), r["close"], r["volume"]) for r in table.to_pylist()]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("A", T0, 10.0, 1, 1), ("A", T0, 11.0, 2, 2)], [("A", T0, 11.0, 2)]),
        ([("A", T0, 11.0, 2, 2), ("A", T0, 10.0, 1, 1)], [("A", T0, 11.0, 2)]),
        ([("A", T0, 10.0, 5, 3), ("A", T0, 10.0, 0, 3)], [("A", T0, 10.0, 5)]),  # exact tie: values decide
        (
            [("B", T0, 1.0, 1, 1), ("A", T0 + 60, 2.0, 1, 1), ("A", T0, 3.0, 1, 1)],
            [("A", T0, 3.0, 1), ("A", T0 + 60, 2.0, 1), ("B", T0, 1.0, 1)],
        ),
        (
            [("A", 60, 1.0, 1, 1), ("A", T0, 2.0, 1, 1), ("A", 60, 3.0, 1, 2)],
            [("A", 60, 3.0, 1), ("A", T0, 2.0, 1)],
        ),  # sparse span: sort path
    ],
)
def test_true_bar_rule(rows, expected):
    """The greatest emitted_at wins per (symbol, ts); output is sorted by symbol, ts."""
    assert key_values(true_bars(bars(rows))) == expected


def test_last_bars_keeps_newest_window_per_symbol():
    """The rolling window keeps the newest N true bars of each symbol."""
    rows = [("A", T0 + 60 * i, float(i + 1), 1, 1) for i in range(10)] + [("B", T0, 5.0, 1, 1)]
    kept = key_values(last_bars(bars(rows), 3))
    assert kept == [("A", T0 + 420, 8.0, 1), ("A", T0 + 480, 9.0, 1), ("A", T0 + 540, 10.0, 1), ("B", T0, 5.0, 1)]


def test_parquet_roundtrip_keeps_schema_and_values():
    """Bars survive zstd Parquet encoding with the contract's types."""
    table = bars([("A", T0, 10.5, 7, 3)])
    data = to_parquet(table)
    assert data[:4] == b"PAR1"
    back = from_parquet(data)
    assert back.schema == BAR_SCHEMA
    assert key_values(back) == [("A", T0, 10.5, 7)]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("AAPL", "AAPL"),
        ("aapl", "AAPL"),
        ("brk-b", "BRK-B"),
        ("^gspc", "^GSPC"),
        ("eurusd=x", "EURUSD=X"),
        ("GOOG\n", None),  # `$` would match before a trailing newline; fullmatch does not
        ("straße", None),  # Unicode upper-casing would make it STRASSE
        ("ǅ", None),  # a title-case digraph: non-ASCII whatever its case
        ("AAPL ", None),
        (" AAPL", None),
        ("", None),
        ("A" * 16, "A" * 16),
        ("A" * 17, None),
        ("-AAPL", None),
        ("../x", None),
        (42, None),
        (None, None),
        (b"AAPL", None),
    ],
)
def test_normalise_symbol(raw, normalised):
    """Symbols are upper-cased when valid in any ASCII case; anything else is None."""
    assert normalise_symbol(raw) == normalised
    assert valid_symbol(raw) is (normalised is not None and raw == normalised)


def test_bounds_are_exact_in_every_representation():
    """The volume bound and every timestamp bound survive float64 and int64 exactly."""
    assert MAX_VOLUME < 2**53 and int(MAX_VOLUME) == 10**15
    assert (MIN_TS, MIN_EMITTED_AT_MS) == (946_684_800, 946_684_800_000)  # 2000-01-01T00:00:00Z
    assert (MAX_PRICE, MAX_TS_AHEAD_S, MAX_EMITTED_AHEAD_MS) == (1e9, 86_400, 86_400_000)
