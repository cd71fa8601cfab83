"""Read bars for training: every Parquet file under a folder, reduced to the true bars.

The job never imports the Function App; the bar table is the contract between them (DESIGN.md),
held by a test that writes with the ingest code and reads with this reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

BAR_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume", "emitted_at"]
# exact emitted_at ties are broken on values, as every reader of bars does
_ORDER = ["symbol", "ts", "emitted_at", "volume", "close", "high", "low", "open"]


class NoDataError(RuntimeError):
    """Nothing usable to train on."""


def read_bars(folder: Path) -> pd.DataFrame:
    """All true bars under ``folder`` (recursively): one row per (symbol, ts), sorted."""
    files = sorted(str(p) for p in Path(folder).rglob("*.parquet"))
    if not files:
        raise NoDataError(f"no Parquet files under {folder}")
    table = ds.dataset(files, format="parquet").to_table(columns=BAR_COLUMNS)
    df = table.to_pandas()
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df = df.sort_values(_ORDER, kind="stable").drop_duplicates(["symbol", "ts"], keep="last")
    return df.reset_index(drop=True)


def epoch_seconds(values: pd.Series | pd.Index) -> np.ndarray:
    """Unix seconds of datetimes, whatever their unit or time zone."""
    ts = pd.to_datetime(values, utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def model_input(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars as the pyfunc's signature takes them: its columns, ``ts`` as naive UTC (MLflow's rule)."""
    out = bars[BAR_COLUMNS[:-1]].reset_index(drop=True)
    out["ts"] = pd.to_datetime(out["ts"], utc=True).dt.tz_localize(None)
    return out


def profile(bars: pd.DataFrame, max_gap_minutes: int) -> dict:
    """Bars per symbol, time range and gaps longer than ``max_gap_minutes``: logged with every run."""
    out: dict = {"symbols": {}, "bars": len(bars)}
    for symbol, rows in bars.groupby("symbol", sort=True):
        ts = epoch_seconds(rows["ts"])
        gaps = np.diff(ts) / 60
        out["symbols"][symbol] = {
            "bars": len(rows),
            "first": rows["ts"].iloc[0].isoformat(),
            "last": rows["ts"].iloc[-1].isoformat(),
            "gaps_over_max": int((gaps > max_gap_minutes).sum()),
            "missing_minutes_within_sessions": int(np.clip(gaps[gaps <= max_gap_minutes] - 1, 0, None).sum()),
        }
    return out
