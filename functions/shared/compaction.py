"""Compaction of ``raw/``: each closed hour's per-batch blobs merged into one Parquet blob, crash-safely.

Ingest writes one blob per invocation under ``raw/date=D/hour=H/`` (the folder named by the
invocation's clock). For an hour that is *closed* (it ended more than a margin ago, so no
invocation can still be writing into it) this module merges the folder's blobs by the true-bar rule
into ``raw/date=D/hour=H/_compacted.parquet``, whose Parquet key-value metadata (the manifest) names
the raw blobs whose bars it holds; readers skip exactly those (the manifest rule,
:func:`functions.shared.rebuild.bar_blobs_to_read`). One hour:

1. read the compacted blob (if any) with its ETag, then list the folder: a name the old manifest
   covers that the listing lacks is gone for good (raw names are unique per batch);
2. download every raw blob the manifest does not cover, and fold them into the compacted bars
   (true-bar rule; a blob that does not decode is left in place, uncovered, with a warning);
3. write the new compacted blob only if the ETag is still the one read (``If-None-Match: *`` when
   there was none), its manifest the old one's names still present plus those just merged;
4. only then delete the raw blobs the new manifest covers.

A kill before 3 leaves the old state; after 3, every covered raw blob is skipped by readers whether
it is deleted yet or not, and the next run deletes what is left. A bar is therefore always read
exactly once, and a rerun finishes the job.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, ContainerClient

from functions.shared.bars import BAR_SCHEMA, empty_bars, true_bars
from functions.shared.rebuild import (
    COMPACTED_NAME,
    MANIFEST_KEY,
    RAW_PREFIX,
    CorruptBlobError,
    decode_bars,
    hour_start,
    manifest,
)

log = logging.getLogger(__name__)

HOUR_S = 3600
# Blob metadata of the compacted blob naming the raw blobs beside it that do not decode, so that
# the run's one listing (with metadata) tells an hour with work left from one holding only those;
# Azure caps all of a blob's metadata at 8 KiB, so past this length the list is left out.
UNREADABLE_METADATA = "unreadable"
UNREADABLE_COUNT_METADATA = "unreadable_count"
_UNREADABLE_METADATA_MAX = 4096
# raw blobs folded into the compacted bars at once: bounds memory to the hour's distinct bars plus one chunk
_CHUNK = 64
_THREADS = 8
OUTCOMES = ("compacted", "cleaned", "unchanged", "conflict", "failed")

Checkpoint = Callable[[str], None]


def _no_checkpoint(point: str) -> None:
    """Checkpoints are for tests that kill a run at a named point; a real run passes them by."""


# --- the pure core -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hour:
    """A ``raw/`` hour folder as the run's listing shows it."""

    prefix: str  # raw/date=D/hour=H/
    start: float  # unix s
    names: frozenset[str]  # blobs directly in the folder, the compacted one excluded
    compacted: bool
    # raw blobs the compacted blob records as undecodable; None when it records none, or too many to list
    unreadable: frozenset[str] | None = None
    unreadable_count: int = 0

    @property
    def work(self) -> frozenset[str]:
        """Blobs left to merge or to delete: all but those recorded as undecodable."""
        return self.names - (self.unreadable or frozenset())

    @property
    def overflowed(self) -> bool:
        """More undecodable blobs than the metadata could name: the hour looks busy on every run."""
        return self.unreadable_count > len(self.unreadable or ())


def is_closed(start: float, now: float, margin_s: float) -> bool:
    """Whether the hour starting at ``start`` ended more than ``margin_s`` before ``now``."""
    return now - (start + HOUR_S) > margin_s


def group_hours(blobs: Iterable[tuple[str, Mapping[str, str] | None]]) -> list[Hour]:
    """The hour folders of a ``raw/`` listing of (name, metadata), oldest first.

    Only blobs directly in a folder the host names (``raw/date=YYYY-MM-DD/hour=HH/``) count; anything
    else under ``raw/`` is never compacted and readers read it as before.
    """
    names: dict[str, set[str]] = {}
    compacted: dict[str, Mapping[str, str]] = {}
    for name, metadata in blobs:
        folder, _, base = name.rpartition("/")
        prefix = folder + "/"
        if hour_start(prefix) is None:
            continue
        if base == COMPACTED_NAME:
            compacted[prefix] = {k.lower(): v for k, v in (metadata or {}).items()}
        else:
            names.setdefault(prefix, set()).add(base)
    hours = []
    for prefix in sorted(set(names) | set(compacted)):
        meta = compacted.get(prefix)
        listed = meta.get(UNREADABLE_METADATA) if meta is not None else None
        try:
            count = int(meta.get(UNREADABLE_COUNT_METADATA, "0")) if meta is not None else 0
        except ValueError:
            count = 0
        hours.append(
            Hour(
                prefix,
                hour_start(prefix) or 0.0,
                frozenset(names.get(prefix, ())),
                prefix in compacted,
                frozenset(listed.split()) if listed is not None else None,
                count,
            )
        )
    return hours


def plan(hours: Iterable[Hour], now: float, margin_s: float, max_hours: int) -> tuple[list[Hour], int]:
    """The closed hours with work to do, oldest first, at most ``max_hours``; and how many are left over.

    An hour with more undecodable blobs than its metadata names looks busy on every run, so it goes
    after all others: however many there are, they never starve the backlog.
    """
    due = [h for h in hours if h.work and is_closed(h.start, now, margin_s)]
    due.sort(key=lambda h: (h.overflowed, h.start))
    return due[:max_hours], max(0, len(due) - max_hours)


def next_covers(old: frozenset[str], listed: frozenset[str], merged: Iterable[str]) -> frozenset[str]:
    """The new manifest: the old one's names still listed (deleted ones are gone for good) plus those merged.

    Names still listed stay covered until deleted, so a run killed between its write and its
    deletes (or a reader that listed them) never reads them twice.
    """
    return (old & listed) | frozenset(merged)


def manifest_json(covers: Iterable[str], unreadable: Iterable[str]) -> bytes:
    """The manifest document stored under :data:`MANIFEST_KEY`."""
    return orjson.dumps({"version": 1, "covers": sorted(covers), "unreadable": sorted(unreadable)})


def encode_compacted(table: pa.Table, covers: Iterable[str], unreadable: Iterable[str]) -> bytes:
    """The compacted blob: the bars as :func:`functions.shared.bars.to_parquet` writes them, plus the manifest."""
    sink = io.BytesIO()
    bars = table.cast(BAR_SCHEMA).replace_schema_metadata({MANIFEST_KEY: manifest_json(covers, unreadable)})
    pq.write_table(bars, sink, compression="zstd")
    return sink.getvalue()


def unreadable_metadata(unreadable: Iterable[str]) -> dict[str, str]:
    """Blob metadata naming the undecodable raw blobs, when they fit in a header; their count always."""
    names = sorted(unreadable)
    joined = " ".join(names)
    # header values must be printable ASCII; a name that is not, or too many, leave only the count
    fits = len(joined) <= _UNREADABLE_METADATA_MAX and all(
        n.isascii() and n.isprintable() and " " not in n for n in names
    )
    return {UNREADABLE_METADATA: joined if fits else "", UNREADABLE_COUNT_METADATA: str(len(names))}


# --- storage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourOutcome:
    """What one hour's compaction did."""

    hour: str
    outcome: str  # one of OUTCOMES
    merged: int = 0  # raw blobs folded into the compacted blob by this run
    deleted: int = 0  # covered raw blobs deleted
    unreadable: tuple[str, ...] = ()  # raw blobs left in place because they do not decode
    bytes_read: int = 0  # of the raw blobs merged
    bytes_written: int = 0  # of the compacted blob written
    rows: int = 0  # true bars the compacted blob holds


@dataclass(frozen=True)
class CompactionReport:
    """What one run did, hour by hour, and how many closed hours it left for the next runs."""

    run: str
    hours: tuple[HourOutcome, ...] = ()
    left_over: int = 0

    def total(self, name: str) -> int:
        """Sum of one :class:`HourOutcome` count over the hours."""
        return sum(getattr(h, name) for h in self.hours)

    def outcomes(self) -> dict[str, int]:
        """Hours per outcome (every outcome, 0 included)."""
        return {o: sum(h.outcome == o for h in self.hours) for o in OUTCOMES}


def _download(container: ContainerClient, name: str) -> bytes | None:
    try:
        return container.download_blob(name).readall()
    except ResourceNotFoundError:
        return None


def _delete(container: ContainerClient, name: str) -> bool:
    """Delete a covered raw blob; False when it was gone already (a rerun, or a concurrent run)."""
    try:
        container.delete_blob(name)
    except ResourceNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class _Compacted:
    """An hour's compacted blob as read: its bars, manifest and ETag (all empty when there is none yet)."""

    held: pa.Table
    covers: frozenset[str] = frozenset()
    recorded: frozenset[str] = frozenset()  # the undecodable blobs its manifest names
    etag: str | None = None


def _read_compacted(container: ContainerClient, name: str, run: str) -> _Compacted | None:
    """The hour's compacted blob, or None when it does not decode (the hour is then left for a person)."""
    try:
        downloader = container.download_blob(name)
        old, etag = downloader.readall(), downloader.properties.etag
    except ResourceNotFoundError:
        return _Compacted(empty_bars())
    try:
        held = decode_bars(old)
    except CorruptBlobError as exc:
        # the only copy of the bars of every raw blob it covered: never overwritten, left for a person
        log.error("run=%s %s does not decode (%s); hour left as it is", run, name, exc)
        return None
    found = manifest(pq.ParquetFile(io.BytesIO(old)).metadata.metadata)
    return _Compacted(held, found["covers"], found["unreadable"], etag)


@dataclass
class _Merge:
    """What folding an hour's uncovered raw blobs into its bars did."""

    held: pa.Table
    merged: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    bytes_read: int = 0


def _merge_uncovered(
    container: ContainerClient, prefix: str, uncovered: list[str], held: pa.Table, run: str, pool: ThreadPoolExecutor
) -> _Merge | None:
    """Fold the uncovered raw blobs into ``held`` by the true-bar rule; None when one vanished (another run is here)."""
    merge = _Merge(held)
    for start in range(0, len(uncovered), _CHUNK):
        chunk = uncovered[start : start + _CHUNK]
        tables = []
        for name, data in zip(chunk, pool.map(lambda n: _download(container, prefix + n), chunk), strict=True):
            if data is None:
                # only a compaction deletes raw blobs: another run is at this hour, and its write beats ours
                log.info("run=%s %s%s vanished: another compaction is at this hour", run, prefix, name)
                return None
            try:
                tables.append(decode_bars(data))
            except CorruptBlobError as exc:
                log.warning("run=%s leaving unreadable %s%s uncompacted (%s)", run, prefix, name, exc)
                merge.unreadable.append(name)
                continue
            merge.merged.append(name)
            merge.bytes_read += len(data)
        if tables:
            merge.held = true_bars(pa.concat_tables([merge.held, *tables]))
    return merge


def _write_compacted(
    container: ContainerClient, name: str, payload: bytes, metadata: dict[str, str], etag: str | None
) -> bool:
    """Write the compacted blob only if it is still the one read (absent: If-None-Match *); False if it is not."""
    try:
        if etag is None:
            container.upload_blob(name, payload, overwrite=False, metadata=metadata)
        else:
            container.upload_blob(
                name,
                payload,
                overwrite=True,
                metadata=metadata,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
    except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
        return False
    return True


def compact_hour(
    container: ContainerClient,
    prefix: str,
    run: str,
    pool: ThreadPoolExecutor,
    checkpoint: Checkpoint = _no_checkpoint,
) -> HourOutcome:
    """Merge one hour folder's raw blobs into its compacted blob, then delete the raw blobs it covers."""
    compacted_name = prefix + COMPACTED_NAME
    old = _read_compacted(container, compacted_name, run)
    if old is None:
        return HourOutcome(prefix, "failed")
    # listed after the compacted blob was read: a name it covers that is not listed is deleted for good
    listed = frozenset(
        name.removeprefix(prefix)
        for b in container.list_blobs(name_starts_with=prefix)
        if "/" not in (name := b.name).removeprefix(prefix) and name != compacted_name
    )
    checkpoint(f"listed {prefix}")
    merge = _merge_uncovered(container, prefix, sorted(listed - old.covers), old.held, run, pool)
    if merge is None:
        return HourOutcome(prefix, "conflict")
    checkpoint(f"merged {prefix}")
    new_covers = next_covers(old.covers, listed, merge.merged)
    bytes_written = 0
    # a write only when something changed: new bars, or another set of undecodable blobs to record
    if merge.merged or frozenset(merge.unreadable) != old.recorded:
        payload = encode_compacted(merge.held, new_covers, merge.unreadable)
        if not _write_compacted(container, compacted_name, payload, unreadable_metadata(merge.unreadable), old.etag):
            # another run wrote this hour since we read it: nothing of ours is in force, so nothing is deleted
            log.info("run=%s %s changed concurrently; left to the next run", run, compacted_name)
            return HourOutcome(prefix, "conflict")
        bytes_written = len(payload)
        checkpoint(f"written {prefix}")
    doomed = sorted(new_covers & listed)

    def delete(name: str) -> bool:
        gone = _delete(container, prefix + name)
        checkpoint(f"deleted {prefix}{name}")
        return gone

    deleted = sum(pool.map(delete, doomed))
    outcome = "compacted" if bytes_written else "cleaned" if doomed else "unchanged"
    log.info(
        "run=%s %s %s: merged=%d deleted=%d unreadable=%d rows=%d bytes_read=%d bytes_written=%d",
        run,
        prefix,
        outcome,
        len(merge.merged),
        deleted,
        len(merge.unreadable),
        merge.held.num_rows,
        merge.bytes_read,
        bytes_written,
    )
    return HourOutcome(
        prefix,
        outcome,
        len(merge.merged),
        deleted,
        tuple(merge.unreadable),
        merge.bytes_read,
        bytes_written,
        merge.held.num_rows,
    )


def _listing(container: ContainerClient) -> Iterable[tuple[str, Mapping[str, str] | None]]:
    blob: BlobProperties
    for blob in container.list_blobs(name_starts_with=RAW_PREFIX, include=["metadata"]):
        yield blob.name, blob.metadata


def compact(
    container: ContainerClient,
    now: float,
    margin_s: float,
    max_hours: int,
    run: str,
    threads: int = _THREADS,
    checkpoint: Checkpoint = _no_checkpoint,
) -> CompactionReport:
    """Compact the oldest ``max_hours`` closed hours with work left; one failing hour never stops the others.

    One flat listing of ``raw/`` (with metadata) finds them: after compaction an hour is one blob,
    so the listing grows by one name per hour of history, not by one per batch.
    """
    started = time.monotonic()
    chosen, left_over = plan(group_hours(_listing(container)), now, margin_s, max_hours)
    log.info("run=%s %d closed hours to compact, oldest first; %d left for later runs", run, len(chosen), left_over)
    outcomes = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for hour in chosen:
            try:
                outcomes.append(compact_hour(container, hour.prefix, run, pool, checkpoint))
            except Exception:  # storage trouble in one hour: the others still run, and the run fails at the end
                log.exception("run=%s compaction of %s failed", run, hour.prefix)
                outcomes.append(HourOutcome(hour.prefix, "failed"))
    report = CompactionReport(run, tuple(outcomes), left_over)
    log.info(
        "run=%s hours=%s blobs_merged=%d blobs_deleted=%d unreadable=%d bytes_read=%d bytes_written=%d "
        "left_over=%d seconds=%.1f",
        run,
        report.outcomes(),
        report.total("merged"),
        report.total("deleted"),
        sum(len(h.unreadable) for h in report.hours),
        report.total("bytes_read"),
        report.total("bytes_written"),
        left_over,
        time.monotonic() - started,
    )
    return report
