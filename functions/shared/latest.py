"""Keep ``latest/<SYMBOL>.parquet`` (the newest true bars of a symbol) current.

Each update reads the blob with its ETag, merges by the true-bar rule and writes back only if the
ETag still matches, so two batches updating one symbol at once both land. Merging is idempotent:
applying the same batch twice gives the same blob contents. ``raw/`` is the truth and ``latest/``
a view of it: a blob that cannot be decoded is quarantined and rebuilt from ``raw/`` by the same
ETag-conditional write (:mod:`functions.shared.rebuild`), so it never blocks a batch or a forecast.
A blob that is missing though ``symbols/<SYMBOL>`` (written before the blob is first created) says
the symbol was stored is rebuilt from ``raw/`` too; a symbol without that marker is unknown, and
costs one more HEAD request, never a scan of ``raw/``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContainerClient

from functions.shared.bars import last_bars, to_parquet, valid_symbol
from functions.shared.rebuild import CorruptBlobError, decode_bars, quarantine, rebuild_from_raw
from functions.shared.storage import download

log = logging.getLogger(__name__)
LATEST_PREFIX = "latest/"
SYMBOLS_PREFIX = "symbols/"  # an empty blob per symbol whose latest/ blob was ever created
MERGE_WORKERS = 8  # symbols of one batch merged at once

# what a conditional write or delete raises when another writer got there first (a 404 when a
# concurrent repairer deleted the blob we meant to replace): re-read and merge again
_CONFLICTS = (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError)


class LatestConflictError(RuntimeError):
    """The blob kept changing under us for every attempt; the invocation should be retried."""


class LatestUpdateError(RuntimeError):
    """Some symbols of a batch could not be updated (the others were); the batch should be retried."""

    def __init__(self, batch_id: str, failed: dict[str, Exception]) -> None:
        reasons = ", ".join(f"{s} ({type(e).__name__}: {e})" for s, e in sorted(failed.items()))
        super().__init__(f"batch {batch_id}: latest/ not updated for {reasons}")
        self.failed = failed


def latest_blob_name(symbol: str) -> str:
    """Blob name of a symbol's rolling window."""
    return f"{LATEST_PREFIX}{symbol}.parquet"


def symbol_marker_name(symbol: str) -> str:
    """Blob name of the marker saying a symbol's latest/ blob was created, so its absence is damage."""
    return f"{SYMBOLS_PREFIX}{symbol}"


def stored_symbols(container: ContainerClient) -> list[str]:
    """Every symbol with a latest/ blob or a marker saying it had one, sorted (two listings)."""
    names = {b.name.removeprefix(SYMBOLS_PREFIX) for b in container.list_blobs(name_starts_with=SYMBOLS_PREFIX)}
    for blob in container.list_blobs(name_starts_with=LATEST_PREFIX):
        names.add(blob.name.removeprefix(LATEST_PREFIX).removesuffix(".parquet"))
    return sorted(name for name in names if valid_symbol(name))


@lru_cache(maxsize=1024)
def _latest_client(container: ContainerClient, symbol: str) -> BlobClient:
    """The client of a symbol's latest/ blob, kept for the next read (Azure SDK clients are thread-safe).

    Predict reads a symbol's blob on every uncached GET and ingest merges into it every batch; a
    new client each time made the conditional read cost 20–30 % more CPU (measured against Azurite).
    """
    return container.get_blob_client(latest_blob_name(symbol))


class _Found(NamedTuple):
    """What one read of a latest/ blob found, repaired from raw/ where it had to be (a tuple: read per GET)."""

    table: pa.Table | None  # None: absent, and its symbol was never stored
    etag: str | None  # the blob's as read (a corrupt one's, so its repair replaces exactly it); None if absent
    repaired: bool = False  # rebuilt from raw/: corrupt, or missing though its symbol was stored
    marker_etag: str | None = None  # the symbol's marker as seen, when the blob was missing


def _read(
    container: ContainerClient,
    blob: BlobClient,
    symbol: str,
    window: int,
    batch_id: str,
    known_etag: str | None = None,
) -> _Found:
    """The stored window, or its rebuild from raw/ when the blob is corrupt or missing though its symbol was stored.

    With ``known_etag``, a blob that still has it is answered with a 304 (raised) instead of being downloaded.
    """
    try:
        downloader = download(blob, known_etag)
    except ResourceNotFoundError:
        # the cost of an unknown symbol: one HEAD; only a symbol stored before pays for the rebuild
        try:
            marker = container.get_blob_client(symbol_marker_name(symbol)).get_blob_properties()
        except ResourceNotFoundError:
            return _Found(None, None)
        log.warning(
            "batch=%s %s is missing though %s was stored; rebuilding from raw/", batch_id, blob.blob_name, symbol
        )
        return _Found(rebuild_from_raw(container, symbol, window, batch_id), None, True, marker.etag)
    data, etag = downloader.readall(), downloader.properties.etag
    try:
        return _Found(decode_bars(data, symbol), etag)
    except CorruptBlobError as exc:
        name = quarantine(container, symbol, data, exc.reason, batch_id)
        log.warning(
            "batch=%s %s is corrupt (%s); copied to %s, rebuilding from raw/", batch_id, blob.blob_name, exc, name
        )
        return _Found(rebuild_from_raw(container, symbol, window, batch_id), etag, True)


def _write(container: ContainerClient, symbol: str, blob: BlobClient, table: pa.Table, etag: str | None) -> None:
    """Create the blob (marking its symbol as stored first), or replace it only if it still has ``etag``.

    The marker goes first, so a crash between the two leaves a symbol whose missing blob the next
    read or merge rebuilds, never a blob whose loss would read as an unknown symbol.
    """
    if etag is None:
        container.upload_blob(symbol_marker_name(symbol), b"", overwrite=True)
        blob.upload_blob(to_parquet(table), overwrite=False)
    else:
        blob.upload_blob(to_parquet(table), overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)


def update_symbol(
    container: ContainerClient, symbol: str, bars: pa.Table, window: int, max_attempts: int, batch_id: str
) -> int:
    """Merge ``bars`` of one symbol into its latest blob; return the rows it now holds."""
    blob = _latest_client(container, symbol)
    for attempt in range(1, max_attempts + 1):
        found = _read(container, blob, symbol, window, batch_id)
        merged = last_bars(bars if found.table is None else pa.concat_tables([found.table, bars]), window)
        try:
            _write(container, symbol, blob, merged, found.etag)
            return merged.num_rows
        except _CONFLICTS:
            log.info("batch=%s latest/%s changed concurrently, attempt %d/%d", batch_id, symbol, attempt, max_attempts)
    raise LatestConflictError(f"latest/{symbol}.parquet: still conflicting after {max_attempts} attempts")


@dataclass(frozen=True)
class Latest:
    """What a read of a symbol's latest/ blob found."""

    table: pa.Table | None  # None: neither latest/ nor raw/ holds a bar of the symbol
    etag: str | None  # the blob's ETag as read; None when it was absent or has just been rebuilt
    unchanged: bool = False  # it still had the ETag the reader knew: nothing was downloaded


def read_latest(
    container: ContainerClient,
    symbol: str,
    window: int,
    max_attempts: int,
    request_id: str,
    known_etag: str | None = None,
) -> Latest:
    """A symbol's stored window, repaired from raw/ if corrupt, or if missing though the symbol was stored.

    With ``known_etag``, a blob that still has it is not downloaded (``If-None-Match``, HTTP 304):
    the answer is ``unchanged`` and holds no table.
    """
    blob = _latest_client(container, symbol)
    for attempt in range(1, max_attempts + 1):
        try:
            found = _read(container, blob, symbol, window, request_id, known_etag)
        except ResourceModifiedError as exc:  # the SDK's type for a 304 (x-ms-error-code ConditionNotMet)
            if known_etag is None or exc.status_code != 304:
                raise
            return Latest(None, known_etag, unchanged=True)
        if not found.repaired:
            return Latest(found.table, found.etag)
        try:
            if found.table is not None and found.table.num_rows:
                _write(container, symbol, blob, found.table, found.etag)
                return Latest(found.table, None)
            # raw/ has no bar of it either: the bad blob goes (its bytes are in quarantine), and so
            # does the marker, unless a batch rewrote it since (then the retry finds its blob)
            if found.etag is not None:
                blob.delete_blob(etag=found.etag, match_condition=MatchConditions.IfNotModified)
            if found.marker_etag is not None:
                container.delete_blob(
                    symbol_marker_name(symbol), etag=found.marker_etag, match_condition=MatchConditions.IfNotModified
                )
            return Latest(None, None)
        except _CONFLICTS:
            log.info(
                "batch=%s latest/%s changed during repair, attempt %d/%d", request_id, symbol, attempt, max_attempts
            )
    raise LatestConflictError(f"latest/{symbol}.parquet: still conflicting after {max_attempts} attempts")


def update_latest(
    container: ContainerClient, bars: pa.Table, window: int, max_attempts: int, batch_id: str
) -> dict[str, int]:
    """Merge a batch's true bars into every symbol's latest blob; return rows held per symbol.

    Every symbol is tried even when another fails, so one symbol's trouble never holds back the
    rest; then :class:`LatestUpdateError` fails the invocation and the host retries the whole
    batch, which the idempotent merge makes safe.
    """
    held: dict[str, int] = {}
    failed: dict[str, Exception] = {}
    symbols = pc.unique(bars.column("symbol")).to_pylist()

    def one(symbol: str) -> int:
        rows = bars.filter(pc.equal(bars.column("symbol"), symbol))
        return update_symbol(container, symbol, rows, window, max_attempts, batch_id)

    # each symbol is a download, a merge and a conditional upload: storage round trips, so the
    # symbols of a batch are merged concurrently (the SDK's clients are thread-safe)
    with ThreadPoolExecutor(max_workers=min(MERGE_WORKERS, len(symbols)) or 1) as pool:
        futures = {symbol: pool.submit(one, symbol) for symbol in symbols}
    for symbol, future in futures.items():
        try:
            held[symbol] = future.result()
        except Exception as exc:  # re-raised below, once every symbol had its turn
            log.warning("batch=%s latest/%s not updated: %s: %s", batch_id, symbol, type(exc).__name__, exc)
            failed[symbol] = exc
    if failed:
        raise LatestUpdateError(batch_id, failed) from next(iter(failed.values()))
    return held
