"""Repair ``latest/``: ``raw/`` is the truth and ``latest/<SYMBOL>.parquet`` only a view of it.

A latest blob that cannot be decoded (empty, not Parquet, truncated, another schema, another
symbol's bars) is copied under ``quarantine/latest/<SYMBOL>/`` for a post-mortem and its window is
rebuilt from ``raw/`` by the true-bar rule. The caller replaces the bad blob with an
ETag-conditional write, so repairing never races a concurrent update.

``raw/`` folders are named by write time, not by the minutes they hold: a backfill written late
holds old minutes, and an older folder may hold a minute's true bar. So the rebuild stops only where
no unread folder can change the window: it is full, and every older folder's bars are older than its
oldest minute (a bar lies at most :data:`REACH_S` past its folder's hour).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from azure.storage.blob import BlobPrefix, ContainerClient

from functions.shared.bars import BAR_SCHEMA, MAX_EMITTED_AHEAD_MS, MAX_TS_AHEAD_S, empty_bars, last_bars

log = logging.getLogger(__name__)

RAW_PREFIX = "raw/"
QUARANTINE_PREFIX = "quarantine/latest/"
_DATE_PREFIX = re.compile(r"raw/date=\d{4}-\d{2}-\d{2}/")
_HOUR_PREFIX = re.compile(r"raw/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")
# How far past the start of its raw/ folder's hour a stored bar's minute can lie: the host names the
# folder by the invocation's clock; ingest accepts an event emitted up to a day after its batch's
# clock and a bar stamped up to a day after its event (bars.py); plus the folder's own hour and an
# hour for the invocation's run between naming the folder and decoding the batch.
REACH_S = MAX_EMITTED_AHEAD_MS // 1000 + MAX_TS_AHEAD_S + 2 * 3600
# raw/ blobs of one hour are downloaded in parallel: a repair reads hours of per-batch blobs
_DOWNLOAD_THREADS = 8


class CorruptBlobError(ValueError):
    """A bars blob that cannot be decoded into the bar schema; ``reason`` is a short slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_bars(data: bytes, symbol: str | None = None) -> pa.Table:
    """Decode a bars Parquet blob, raising :class:`CorruptBlobError` for anything unusable.

    With ``symbol``, every row must be that symbol's (a latest blob holds one symbol only).
    """
    if not data:
        raise CorruptBlobError("empty", "the blob has no bytes")
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:  # truncated, not Parquet, bad pages
        raise CorruptBlobError("unreadable", str(exc)) from exc
    try:
        # casting to the non-nullable schema also rejects nulls in required columns
        table = table.select(BAR_SCHEMA.names).cast(BAR_SCHEMA)
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise CorruptBlobError("schema", str(exc)) from exc
    if symbol is not None and table.num_rows and not pc.all(pc.equal(table.column("symbol"), symbol)).as_py():
        raise CorruptBlobError("wrong-symbol", f"rows of other symbols in a blob of {symbol}")
    return table


def quarantine(container: ContainerClient, symbol: str, data: bytes, reason: str, batch_id: str) -> str:
    """Keep a copy of a bad latest blob's bytes under ``quarantine/latest/<SYMBOL>/``; return its name."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    # the suffix keeps two repairers of one blob in the same microsecond from colliding
    name = f"{QUARANTINE_PREFIX}{symbol}/{stamp}-{reason}-{uuid.uuid4().hex[:8]}.parquet"
    container.upload_blob(name, data, overwrite=False, metadata={"batch": batch_id, "reason": reason})
    return name


def _prefixes(container: ContainerClient, prefix: str, pattern: re.Pattern[str]) -> list[str]:
    """The child folders of ``prefix`` that match ``pattern``, newest (greatest name) first."""
    found = [
        item.name
        for item in container.walk_blobs(name_starts_with=prefix, delimiter="/")
        if isinstance(item, BlobPrefix) and pattern.fullmatch(item.name)
    ]
    return sorted(found, reverse=True)


def _iter_hours(container: ContainerClient) -> Iterator[str]:
    """``raw/date=…/hour=…/`` prefixes newest first, listing a date's hours only when the scan reaches it."""
    for date in _prefixes(container, RAW_PREFIX, _DATE_PREFIX):
        yield from _prefixes(container, date, _HOUR_PREFIX)


def newest_minute_in(hour: str) -> float:
    """The newest minute (unix s) a bar stored under the ``raw/`` hour folder ``hour`` can have; inf if unparsable.

    A folder the host never names (``date=2026-13-40``) bounds nothing: the scan never stops at it.
    """
    match = _HOUR_PREFIX.fullmatch(hour)
    try:
        start = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00:00+00:00") if match else None
    except ValueError:
        start = None
    return math.inf if start is None else start.timestamp() + REACH_S


def _hour_bars(container: ContainerClient, hour: str, symbol: str, pool: ThreadPoolExecutor, batch_id: str) -> pa.Table:
    """Bars of ``symbol`` in the raw/ blobs of one hour; an unreadable blob is skipped with a warning."""
    names = [b.name for b in container.list_blobs(name_starts_with=hour)]
    tables = []
    for name, data in zip(names, pool.map(lambda n: container.download_blob(n).readall(), names), strict=True):
        try:
            table = decode_bars(data)
        except CorruptBlobError as exc:
            # one bad raw blob must not stop the repair; it stays in raw/ for a person to inspect
            log.warning("batch=%s skipping unreadable %s during rebuild of %s (%s)", batch_id, name, symbol, exc)
            continue
        tables.append(table.filter(pc.equal(table.column("symbol"), symbol)))
    return pa.concat_tables(tables) if tables else empty_bars()


def rebuild_from_raw(container: ContainerClient, symbol: str, window: int, batch_id: str) -> pa.Table:
    """The newest ``window`` true bars of ``symbol`` according to ``raw/``, read newest folder first.

    Folders are by write time, so neither a full window nor an hour that changed nothing ends the
    scan (a backfill written after newer minutes looks like both); it ends once the window is full
    and the next folder, and so every older one, can only hold minutes older than its oldest.
    """
    held = empty_bars()
    hours = 0
    with ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
        for hour in _iter_hours(container):
            if held.num_rows >= window and newest_minute_in(hour) < held.column("ts")[0].as_py().timestamp():
                break
            hours += 1
            found = _hour_bars(container, hour, symbol, pool, batch_id)
            if found.num_rows:
                held = last_bars(pa.concat_tables([held, found]), window)
    log.info("batch=%s rebuilt %s from raw/: %d bars from %d hours", batch_id, symbol, held.num_rows, hours)
    return held
