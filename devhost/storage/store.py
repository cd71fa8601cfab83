"""Read what ingest stored: the true bars of ``raw/`` and the dead-letter records.

A ``raw/`` blob that does not decode (a torn write, a stray file) is skipped with a warning naming
it and counted, as the rebuild of ``latest/`` skips it: it stays in place for a person to inspect.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from azure.storage.blob import ContainerClient

from functions.shared.bars import empty_bars, true_bars
from functions.shared.rebuild import RAW_PREFIX, CorruptBlobError, decode_bars, read_bar_blobs

log = logging.getLogger("devhost.store")


def _download_all(container: ContainerClient, prefix: str) -> list[bytes]:
    names = [b.name for b in container.list_blobs(name_starts_with=prefix)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda n: container.download_blob(n).readall(), names))


@dataclass(frozen=True)
class RawBars:
    """The true bars under ``raw/`` and the blobs skipped because they do not decode."""

    bars: pa.Table
    skipped: tuple[str, ...]


def read_raw(container: ContainerClient, symbol: str | None = None, request_id: str = "devhost-bars") -> RawBars:
    """All true bars under ``raw/`` (optionally of one symbol), sorted by symbol and ts; unreadable blobs skipped.

    Compacted hours are read from their compacted blob, the raw blobs it covers are not read again.
    """
    tables, skipped = [], []
    for name, data in read_bar_blobs(container, RAW_PREFIX, request_id):
        try:
            tables.append(decode_bars(data))
        except CorruptBlobError as exc:
            log.warning("read=%s skipping unreadable %s (%s)", request_id, name, exc)
            skipped.append(name)
    table = pa.concat_tables(tables) if tables else empty_bars()
    if symbol:
        table = table.filter(pc.equal(table.column("symbol"), symbol.upper()))
    return RawBars(true_bars(table), tuple(skipped))


def stored_bars(container: ContainerClient, symbol: str | None = None) -> pa.Table:
    """All true bars under ``raw/`` (optionally of one symbol), sorted by symbol and ts; unreadable blobs skipped."""
    return read_raw(container, symbol).bars


@dataclass(frozen=True)
class DeadLetters:
    """Dead-letter records, counted by event.

    A retried or re-sent batch writes a record again, so events are counted by what they
    carried (reason and original body), not by record.
    """

    records: list[dict]

    def _distinct(self) -> set[tuple[str, str]]:
        return {(r["reason"], r["body"]) for r in self.records}

    @property
    def events(self) -> int:
        """Distinct dead-lettered events."""
        return len(self._distinct())

    def by_reason(self) -> dict[str, int]:
        """Distinct events per reason."""
        return dict(sorted(Counter(reason for reason, _ in self._distinct()).items()))


def dead_letters(container: ContainerClient) -> DeadLetters:
    """All dead-letter records under ``deadletter/``."""
    records = []
    for data in _download_all(container, "deadletter/"):
        records.extend(orjson.loads(line) for line in data.splitlines() if line.strip())
    return DeadLetters(records)
