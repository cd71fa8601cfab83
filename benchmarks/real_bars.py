"""Real 1-minute bars for the benchmarks: three equities on three exchanges, as shipped in a PyPI package.

The source distribution of ``market-prices`` (MIT licence, Marcus Read) carries, for its tutorials,
about four weeks of Yahoo Finance 1-minute bars of MSFT (XNYS), AZN.L (XLON) and 9988.HK (XHKG) from
May and June 2022. The sdist is fetched with pip once (pinned version and SHA-256), cached outside
the clone, and its CSV files become bars in the project's schema, one Parquet per symbol and day,
as ingest would have left them in ``raw/``.

    python benchmarks/real_bars.py OUT_FOLDER     # writes the bars, prints how many
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from functions.shared.bars import BAR_SCHEMA, to_parquet  # noqa: E402

PACKAGE = "market-prices"
VERSION = "0.12.14"
SDIST = f"market_prices-{VERSION}.tar.gz"
SHA256 = "3a45da206f7dbe237f8723a10d830d5bc368daea4352d4f68274f5055cf9a5f1"
# symbol -> the 1-minute CSV in the sdist (columns date, open, high, low, close, volume; dates in UTC)
PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:")
FILES = {
    "MSFT": "docs/tutorials/resources/MSFT_T1.csv",
    "AZN.L": "docs/tutorials/resources/AZN.L_T1.csv",
    "9988.HK": "docs/tutorials/resources/9988.HK_T1.csv",
}


def cache_dir() -> Path:
    """Where the sdist is kept between runs (outside the clone, like pip's own cache)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stockcast" / "real-bars"


def fetch_sdist(folder: Path | None = None) -> Path:
    """The pinned sdist, downloaded with pip on first use; raises if its SHA-256 is not the pinned one."""
    folder = folder or cache_dir()
    path = folder / SDIST
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            subprocess.run(
                [*PIP_DOWNLOAD, "--dest", tmp, f"{PACKAGE}=={VERSION}"],
                check=True,
            )
            os.replace(Path(tmp) / SDIST, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not the pinned {SHA256}; delete it and run again")
    return path


def read_csvs(sdist: Path) -> dict[str, pd.DataFrame]:
    """The 1-minute CSV of each symbol, as read from the sdist."""
    out = {}
    with tarfile.open(sdist) as tar:
        for symbol, member in FILES.items():
            handle = tar.extractfile(f"market_prices-{VERSION}/{member}")
            if handle is None:
                raise RuntimeError(f"{sdist} has no {member}")
            out[symbol] = pd.read_csv(io.BytesIO(handle.read()))
    return out


def to_bars(frame: pd.DataFrame, symbol: str) -> pa.Table:
    """One symbol's CSV as bars of the project's schema; rows that break the bar rules are dropped.

    ``emitted_at`` is the minute's end, as a sync right after the bar closed would stamp it.
    """
    ts = pd.to_datetime(frame["date"], utc=True)
    o, h, lo, c = (frame[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    volume = frame["volume"].to_numpy(np.float64)
    ok = (
        np.isfinite(o + h + lo + c + volume)
        & (np.minimum(o, c) >= lo)
        & (np.maximum(o, c) <= h)
        & (lo > 0)
        & (volume >= 0)
    )
    seconds = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    keep = np.flatnonzero(ok)
    return pa.table(
        {
            "symbol": pa.array([symbol] * len(keep), pa.string()),
            "ts": pa.array(seconds[keep], pa.timestamp("s", tz="UTC")),
            "open": o[keep],
            "high": h[keep],
            "low": lo[keep],
            "close": c[keep],
            "volume": volume[keep].astype(np.int64),
            "emitted_at": (seconds[keep] + 60) * 1000,
            "partition": pa.nulls(len(keep), pa.string()),
            "sequence_number": pa.nulls(len(keep), pa.int64()),
            "enqueued_at": pa.nulls(len(keep), pa.timestamp("ms", tz="UTC")),
        },
        schema=BAR_SCHEMA,
    )


def write_real_bars(folder: str | Path, symbols: tuple[str, ...] = tuple(FILES)) -> int:
    """Write the real bars of ``symbols`` under ``folder`` (one Parquet per symbol and UTC day); returns the rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = read_csvs(fetch_sdist())
    rows = 0
    for symbol in symbols:
        bars = to_bars(frames[symbol], symbol)
        days = bars.column("ts").cast("int64").to_numpy() // 86_400
        for day in np.unique(days):
            name = pd.Timestamp(int(day) * 86_400, unit="s").date().isoformat()
            (folder / f"date={name}-{symbol}.parquet").write_bytes(to_parquet(bars.filter(days == day)))
        rows += bars.num_rows
    return rows


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "real-bars")
    print(f"{write_real_bars(out)} real 1-minute bars of {', '.join(FILES)} written to {out}")
