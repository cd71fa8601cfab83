"""Repair ``latest/``: ``raw/`` is the truth and ``latest/<SYMBOL>.parquet`` only a view of it.

A latest blob that cannot be decoded (empty, not Parquet, truncated, another schema, another
symbol's bars) is copied under ``quarantine/latest/<SYMBOL>/`` for a post-mortem and its window is
rebuilt from ``raw/`` by the true-bar rule. The caller replaces the bad blob with an
ETag-conditional write, so repairing never races a concurrent update.

``raw/`` folders are named by write time, not by the minutes they hold: a backfill written late
holds old minutes, and an older folder may hold a minute's true bar. So the rebuild stops only where
no unread folder can change the window: it is full, and every older folder's bars are older than its
oldest minute (a bar lies at most :data:`REACH_S` past its folder's hour).

Every reader of ``raw/`` applies the manifest rule (:func:`bar_blobs_to_read`): a folder may hold a
compacted blob, ``_compacted.parquet`` (:mod:`functions.shared.compaction` writes it), whose Parquet
key-value metadata names the raw blobs of that folder whose bars it holds; those are skipped, and
everything else in the folder is read. :func:`read_bar_blobs` lists, then downloads, and lists again
when a blob vanished in between (compaction deletes the raw blobs it covered).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from azure.core.exceptions import ResourceNotFoundError
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
# The compacted blob of a raw/ folder, and the Parquet key-value metadata key of its manifest: a JSON
# object whose "covers" lists the names (relative to the folder) of the raw blobs whose bars it holds.
COMPACTED_NAME = "_compacted.parquet"
MANIFEST_KEY = b"stockcast.compaction"
# A listing goes stale only when a compaction deletes what it just covered, at most every few minutes;
# a read that loses that race this often in a row is a storage fault, not bad luck.
_READ_ATTEMPTS = 4


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


class RawChangedError(RuntimeError):
    """Blobs kept vanishing between the listing of ``raw/`` and their download, for every attempt."""


def manifest(metadata: Mapping[bytes, bytes] | None) -> dict[str, frozenset[str]]:
    """A compacted blob's manifest from its Parquet key-value metadata: ``covers`` and ``unreadable`` names.

    Absent or garbled, it covers nothing: the raw blobs beside it are then read too, and the
    true-bar rule makes a bar read twice count once.
    """
    try:
        doc = orjson.loads((metadata or {})[MANIFEST_KEY])
    except (KeyError, orjson.JSONDecodeError):
        doc = None

    def names(key: str) -> frozenset[str]:
        found = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(found, list):
            return frozenset()
        # only plain names of the same folder, never the compacted blob itself
        return frozenset(n for n in found if isinstance(n, str) and n and "/" not in n and n != COMPACTED_NAME)

    return {"covers": names("covers"), "unreadable": names("unreadable")}


def covered_by(data: bytes) -> frozenset[str]:
    """The raw blob names a compacted blob's bytes cover (none when its footer cannot be read)."""
    try:
        metadata = pq.ParquetFile(io.BytesIO(data)).metadata.metadata
    except (pa.ArrowException, OSError, ValueError):
        return frozenset()
    return manifest(metadata)["covers"]


def bar_blobs_to_read(names: Iterable[str], covers: Mapping[str, frozenset[str]]) -> list[str]:
    """The manifest rule: ``names`` less those a compacted blob of their folder covers (``covers``: folder → names).

    A folder is a name's part before its last ``/``; the compacted blob itself is always read.
    """
    kept = []
    for name in names:
        folder, _, base = name.rpartition("/")
        if base == COMPACTED_NAME or base not in covers.get(folder, frozenset()):
            kept.append(name)
    return kept


def _download_each(
    container: ContainerClient, names: list[str], pool: ThreadPoolExecutor
) -> list[tuple[str, bytes]] | None:
    """Each blob's bytes, or None when one of them is gone."""

    def one(name: str) -> bytes | None:
        try:
            return container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None

    found = list(zip(names, pool.map(one, names), strict=True))
    if any(data is None for _, data in found):
        return None
    return [(name, data) for name, data in found if data is not None]


def _read_once(container: ContainerClient, prefix: str, pool: ThreadPoolExecutor) -> list[tuple[str, bytes]] | None:
    """One listing of ``prefix`` read by the manifest rule, or None if a listed blob vanished meanwhile."""
    names = sorted(b.name for b in container.list_blobs(name_starts_with=prefix))
    compacted = [n for n in names if n.rpartition("/")[2] == COMPACTED_NAME]
    # compacted blobs first: a raw blob that one covers may be deleted by now, and must not be fetched
    found = _download_each(container, compacted, pool)
    if found is None:
        return None
    covers = {name.rpartition("/")[0]: covered_by(data) for name, data in found}
    rest = [n for n in bar_blobs_to_read(names, covers) if n.rpartition("/")[2] != COMPACTED_NAME]
    more = _download_each(container, rest, pool)
    return None if more is None else sorted(found + more)


def read_bar_blobs(
    container: ContainerClient,
    prefix: str = RAW_PREFIX,
    request_id: str = "read",
    pool: ThreadPoolExecutor | None = None,
) -> list[tuple[str, bytes]]:
    """Name and bytes of each blob under ``prefix`` a bars reader reads: compacted blobs, raw blobs none covers.

    A raw blob listed but gone by its download was covered by a compacted blob written before it
    was deleted, possibly after this listing; the prefix is then listed and read again. Bytes are
    returned undecoded: the caller skips what does not decode, as every reader does.
    """
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS)
    try:
        for attempt in range(1, _READ_ATTEMPTS + 1):
            found = _read_once(container, prefix, pool)
            if found is not None:
                return found
            log.info(
                "read=%s %s changed while read (compacted), attempt %d/%d", request_id, prefix, attempt, _READ_ATTEMPTS
            )
    finally:
        if own:
            pool.shutdown()
    raise RawChangedError(f"{prefix}: blobs vanished between listing and download {_READ_ATTEMPTS} times")


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


def hour_start(hour: str) -> float | None:
    """The start (unix s) of the ``raw/date=…/hour=…/`` folder ``hour``; None for a folder the host never names."""
    match = _HOUR_PREFIX.fullmatch(hour)
    try:
        start = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00:00+00:00") if match else None
    except ValueError:  # date=2026-13-40, hour=24
        return None
    return None if start is None else start.timestamp()


def newest_minute_in(hour: str) -> float:
    """The newest minute (unix s) a bar stored under the ``raw/`` hour folder ``hour`` can have; inf if unparsable.

    A folder the host never names (``date=2026-13-40``) bounds nothing: the scan never stops at it.
    """
    start = hour_start(hour)
    return math.inf if start is None else start + REACH_S


def _hour_bars(container: ContainerClient, hour: str, symbol: str, pool: ThreadPoolExecutor, batch_id: str) -> pa.Table:
    """Bars of ``symbol`` in one hour's blobs, by the manifest rule; an unreadable blob is skipped with a warning."""
    tables = []
    for name, data in read_bar_blobs(container, hour, batch_id, pool):
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
