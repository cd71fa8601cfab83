"""The job's bar reader and window builder survive hostile files and rows: bad data is dropped, never fatal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training_job.config import TrainConfig
from training_job.data import NoDataError, read_bars
from training_job.train import build_windows

T0 = 1_793_629_800  # 2026-11-02 14:30 UTC
NOW = T0 + 10 * 86_400


def write(path, rows):
    """Write bar rows (symbol, ts, o, h, l, c, v) as the ingest's Parquet schema would hold them."""
    symbol, ts, o, h, lo, c, v = zip(*rows, strict=True)
    table = pa.table(
        {
            "symbol": pa.array(symbol, pa.string()),
            "ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
            "open": pa.array(o, pa.float64()),
            "high": pa.array(h, pa.float64()),
            "low": pa.array(lo, pa.float64()),
            "close": pa.array(c, pa.float64()),
            "volume": pa.array(v, pa.int64()),
            "emitted_at": pa.array([T0 * 1000] * len(rows), pa.int64()),
        }
    )
    pq.write_table(table, path)


GOOD = ("AAA", T0, 10.0, 10.5, 9.5, 10.2, 100)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (("AAA", T0 * 1000, 10.0, 10.5, 9.5, 10.2, 100), "millisecond timestamp (year ~58,800)"),
        (("AAA", 4_102_444_800, 10.0, 10.5, 9.5, 10.2, 100), "dated 2100"),
        (("AAA", 253_402_300_740, 10.0, 10.5, 9.5, 10.2, 100), "year 9999"),
        (("AAA", T0 + 60, 1e308, 1e308, 1e308, 1e308, 100), "price 1e308"),
        (("AAA", T0 + 60, 10.0, 10.5, 9.5, 10.2, -5), "negative volume (a wrapped 1e19)"),
        (("AAA", T0 + 60, 10.0, 9.0, 9.5, 10.2, 100), "high below open"),
        (("aaa\n", T0 + 60, 10.0, 10.5, 9.5, 10.2, 100), "symbol outside the contract"),
        (("AAA", 800_000_000, 10.0, 10.5, 9.5, 10.2, 100), "before 2000"),
    ],
)
def test_rows_that_break_the_contract_are_dropped_not_fatal(tmp_path, bad, why):
    """A hostile row is dropped; the valid rows of the same file are read."""
    write(tmp_path / "a.parquet", [GOOD, bad])
    df = read_bars(tmp_path, now=NOW)
    assert df[["symbol", "close"]].to_dict("records") == [{"symbol": "AAA", "close": 10.2}], why
    assert df["ts"].iloc[0] == pd.Timestamp(T0, unit="s", tz="UTC")


def test_an_unreadable_file_is_skipped(tmp_path):
    """A file that is not Parquet is skipped with a warning; the others are read."""
    write(tmp_path / "good.parquet", [GOOD])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert read_bars(tmp_path, now=NOW)["close"].tolist() == [10.2]


def test_nothing_valid_is_a_clear_no_data_error(tmp_path):
    """Only hostile rows: NoDataError saying so, not a pandas overflow."""
    write(tmp_path / "a.parquet", [("AAA", T0 * 1000, 10.0, 10.5, 9.5, 10.2, 100)])
    with pytest.raises(NoDataError, match="keeps the bar contract"):
        read_bars(tmp_path, now=NOW)


def _frame(symbol: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    return pd.DataFrame(
        {
            "symbol": symbol,
            "ts": pd.to_datetime(T0 + 60 * np.arange(n), unit="s", utc=True),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": rng.integers(1000, 5000, n),
        }
    )


def test_one_symbol_with_unusable_bars_does_not_stop_the_others():
    """A symbol whose bars the forecaster rejects is skipped with its reason; the rest still train."""
    bad = _frame("BAD", 400, 1)
    bad.loc[200, "close"] = np.nan  # what a hand-made or pre-validation file could hold
    bars = pd.concat([_frame("AAA", 400, 0), bad], ignore_index=True)
    windows, skipped, without_target = build_windows(bars, TrainConfig(window=20, min_windows_per_symbol=100))
    assert set(windows.symbol) == {"AAA"}
    assert list(skipped) == ["BAD"] and "unusable bars" in skipped["BAD"]
    assert without_target == {"AAA": {"in_segment": 0, "at_gap": 0}}  # contiguous minutes: every target is there
