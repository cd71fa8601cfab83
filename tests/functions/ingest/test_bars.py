"""The bar table: the true-bar rule, the rolling window and the Parquet encoding."""

from __future__ import annotations

import pyarrow as pa
import pytest

from functions.ingest.bars import BAR_SCHEMA, from_parquet, last_bars, to_parquet, true_bars

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
