"""Read bars for training: every Parquet file under a folder, reduced to the true bars.

The job never imports the Function App; the bar table is the contract between them (docs/design.md),
held by a test that writes with the ingest code and reads with this reader. So is the ``raw/``
layout: a folder holding ``_compacted.parquet`` (the app's compaction) skips the files its manifest
covers, as every reader of bars does (functions/shared/rebuild.py), and a ``date=…/hour=…`` folder
holds no bar more than :data:`REACH_S` past its hour.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

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


# the raw/ layout as functions/shared/rebuild.py holds it: the compacted file of a folder, and the
# Parquet key-value metadata key of its manifest, whose "covers" names the files of that folder it holds
COMPACTED_NAME = "_compacted.parquet"
MANIFEST_KEY = b"stockcast.compaction"
# how far past the start of its date=…/hour=… folder a bar's minute can lie (rebuild.py's REACH_S): an
# event emitted up to a day after its batch's clock, a bar stamped up to a day after its event, the
# folder's own hour and an hour for the invocation's run
REACH_S = 86_400 + 86_400 + 2 * 3600
_HOUR_FOLDER = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")
# a file listed but gone by its read was compacted meanwhile: its folder is scanned again, this often
_SCAN_ATTEMPTS = 4
NEWEST_FILES = 16  # files of the newest partition read to find where the history window ends


class NoDataError(RuntimeError):
    """Nothing usable to train on."""


def _read(path: str) -> pa.Table | None:
    """One file's bar columns, or None (with a warning) when it cannot be read; a vanished file raises."""
    try:
        return ds.dataset(path, format="parquet").to_table(columns=BAR_COLUMNS).cast(_SCHEMA, safe=False)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
        log.warning("skipped unreadable bar file %s: %s", path, exc)
        return None


def newest_minute_in(folder: Path) -> float:
    """The newest minute (unix s) a bar under ``date=…/hour=…`` ``folder`` can have; inf for any other folder."""
    match = _HOUR_FOLDER.fullmatch(f"{folder.parent.name}/{folder.name}")
    try:
        start = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00:00+00:00") if match else None
    except ValueError:  # a folder the host never names (date=2026-13-40) bounds nothing
        return math.inf
    return math.inf if start is None else start.timestamp() + REACH_S


def covered_names(path: Path) -> frozenset[str]:
    """The files of its folder a compacted file's manifest covers; none when it has no readable manifest.

    Covering nothing is the safe failure: those files are read too, and the true-bar rule counts a
    bar read twice once.
    """
    try:
        doc = json.loads((pq.read_metadata(path).metadata or {})[MANIFEST_KEY])
    except (OSError, pa.ArrowException, KeyError, ValueError):
        return frozenset()
    names = doc.get("covers") if isinstance(doc, dict) else None
    if not isinstance(names, list):
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str) and n != COMPACTED_NAME)


def folder_files(folder: Path) -> list[Path]:
    """The Parquet files directly in ``folder`` a reader reads: all but those its compacted file covers."""
    names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".parquet") and e.is_file())
    covers = covered_names(folder / COMPACTED_NAME) if COMPACTED_NAME in names else frozenset()
    return [folder / name for name in names if name not in covers]


def _folders(root: Path, since: float | None) -> list[Path]:
    """Every folder under ``root`` (itself included), less hour folders, and what they hold, too old for ``since``."""
    found = []
    for path, dirs, _ in os.walk(root):
        here = Path(path)
        if since is not None and newest_minute_in(here) < since:
            dirs.clear()
            continue
        dirs.sort()
        found.append(here)
    return found


def _read_folder(folder: Path) -> tuple[int, list[pa.Table]]:
    """The files of one folder by the manifest rule, and their tables; scanned again if a file vanished."""
    for attempt in range(1, _SCAN_ATTEMPTS + 1):
        files = folder_files(folder)
        try:
            return len(files), [t for t in (_read(str(f)) for f in files) if t is not None and t.num_rows]
        except FileNotFoundError as exc:
            log.info(
                "bar file %s vanished (compacted), scanning %s again (%d/%d)",
                exc.filename,
                folder,
                attempt,
                _SCAN_ATTEMPTS,
            )
    # a mount that keeps listing deleted files (a stale cache): this run trains without them
    log.warning("files kept vanishing under %s; read what stayed", folder)
    files = folder_files(folder)
    tables = []
    for path in files:
        try:
            table = _read(str(path))
        except FileNotFoundError:
            log.warning("skipped vanished bar file %s", path)
            continue
        if table is not None and table.num_rows:
            tables.append(table)
    return len(files), tables


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


def read_bars(folder: Path, now: float | None = None, since: float | None = None) -> pd.DataFrame:
    """All true bars under ``folder`` (recursively): one row per (symbol, ts), sorted.

    Files a compacted file covers are skipped (the manifest rule). With ``since`` (unix s), only bars
    at or after it: hour folders that cannot hold one are not read at all. Unreadable files and rows
    that break the bar contract are skipped with a warning.
    """
    count, tables = 0, []
    for here in _folders(Path(folder), since):
        files, found = _read_folder(here)
        count += files
        tables.extend(found)
    if not count:
        after = "" if since is None else f" that can hold a bar at or after {since}"
        raise NoDataError(f"no Parquet files under {folder}{after}")
    if not tables:
        raise NoDataError(f"no readable bars in the {count} Parquet files under {folder}")
    table = pa.concat_tables(tables)
    if since is not None:
        table = table.filter(pc.greater_equal(pc.cast(table.column("ts"), pa.int64()), math.ceil(since)))
        if not table.num_rows:
            raise NoDataError(f"no bar under {folder} at or after {since}")
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


def _newest_partition(folder: Path) -> list[Path]:
    """The Parquet files of the newest partition under ``folder``, at most :data:`NEWEST_FILES` of them.

    Names sort by time in every layout the job reads (``raw/date=…/hour=…/``, one file per date), so
    the greatest-named folder is descended at each level: a few listings, however long the history.
    A folder's files are those a reader reads (:func:`folder_files`: compaction).
    """
    try:
        folders = sorted((e.path for e in os.scandir(folder) if e.is_dir()), reverse=True)
        for sub in folders:
            found = _newest_partition(Path(sub))
            if found:
                return found
        return folder_files(Path(folder))[::-1][:NEWEST_FILES]
    except OSError:  # a folder gone or unreadable mid-scan (compaction, a mount): no hint from it
        return []


def newest_bar_hint(folder: Path, now: float | None = None) -> int | None:
    """A time (unix s) no later than the newest bar under ``folder``: the newest of its newest partition's.

    Only a lower bound matters: the history read from it may hold more than the window, never less,
    and is cut again at the newest bar read. Its rows pass the bar contract first, so a bad row
    cannot move the window past the bars. None where nothing there is readable.
    """
    newest = None
    for path in _newest_partition(Path(folder)):
        try:
            table = _read(str(path))  # read_bars' own reader: the same columns, schema and skips
        except FileNotFoundError:  # compacted since it was listed: the compacted file holds its bars
            continue
        if table is None or not table.num_rows:
            continue
        ts = epoch_seconds(table.filter(contract_mask(table, now)).column("ts").to_pandas())
        if len(ts):
            newest = int(ts.max()) if newest is None else max(newest, int(ts.max()))
    return newest


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
