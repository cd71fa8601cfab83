"""Read bars for training: every Parquet file under a folder, reduced to the true bars.

The job never imports the Function App; the bar table is the contract between them (docs/design.md),
held by a test that writes with the ingest code and reads with this reader.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

BAR_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume", "emitted_at"]
# exact emitted_at ties are broken on values, as every reader of bars does
_ORDER = ["symbol", "ts", "emitted_at", "volume", "close", "high", "low", "open"]


log = logging.getLogger(__name__)
SYMBOL = r"^[A-Z0-9^][A-Z0-9.^=-]{0,15}$"  # the bar contract's symbol rule (docs/design.md)
# the bar contract's bounds, as functions/shared/bars.py holds them (the job never imports the app)
MIN_TS = 946_684_800  # 2000-01-01T00:00:00Z
MAX_PRICE = 1e9
MAX_VOLUME = 1e15
_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("ts", pa.timestamp("s", tz="UTC")),
        *((name, pa.float64()) for name in ("open", "high", "low", "close")),
        ("volume", pa.int64()),
        ("emitted_at", pa.int64()),
    ]
)


class NoDataError(RuntimeError):
    """Nothing usable to train on."""


def _read(path: str) -> pa.Table | None:
    """One file's bar columns, or None (with a warning) when it cannot be read."""
    try:
        return ds.dataset(path, format="parquet").to_table(columns=BAR_COLUMNS).cast(_SCHEMA, safe=False)
    except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
        log.warning("skipped unreadable bar file %s: %s", path, exc)
        return None


def contract_mask(table: pa.Table, now: float | None = None) -> pa.ChunkedArray:
    """Rows that keep the bar contract: symbol, time within [2000, now + 1 day], sane OHLC and volume.

    Ingest validates every bar, but the job reads whatever lies under the folder (older files, a
    hand-copied one), and one bad row must not stop a run: rows failing this are dropped and counted.
    """
    horizon = int((time.time() if now is None else now) + 86_400)
    ts = pc.cast(table.column("ts"), pa.int64())
    o, h, lo, c = (table.column(k) for k in ("open", "high", "low", "close"))
    checks = [
        pc.match_substring_regex(table.column("symbol"), SYMBOL),
        pc.greater_equal(ts, MIN_TS),
        pc.less_equal(ts, horizon),
        pc.greater(lo, 0.0),
        pc.less_equal(h, MAX_PRICE),
        pc.less_equal(lo, pc.min_element_wise(o, c)),
        pc.less_equal(pc.max_element_wise(o, c), h),
        pc.greater_equal(table.column("volume"), 0),
        pc.less_equal(table.column("volume"), MAX_VOLUME),
    ]
    mask = checks[0]
    for check in checks[1:]:
        mask = pc.and_kleene(mask, check)
    return pc.fill_null(mask, False)


def read_bars(folder: Path, now: float | None = None) -> pd.DataFrame:
    """All true bars under ``folder`` (recursively): one row per (symbol, ts), sorted.

    Unreadable files and rows that break the bar contract are skipped with a warning.
    """
    files = sorted(str(p) for p in Path(folder).rglob("*.parquet"))
    if not files:
        raise NoDataError(f"no Parquet files under {folder}")
    tables = [t for t in (_read(f) for f in files) if t is not None and t.num_rows]
    if not tables:
        raise NoDataError(f"no readable bars in the {len(files)} Parquet files under {folder}")
    table = pa.concat_tables(tables)
    mask = contract_mask(table, now)
    dropped = table.num_rows - pc.sum(mask).as_py()
    if dropped:
        log.warning("dropped %d of %d rows that break the bar contract", dropped, table.num_rows)
        table = table.filter(mask)
    if not table.num_rows:
        raise NoDataError(f"no bar under {folder} keeps the bar contract")
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
