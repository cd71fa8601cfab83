"""Read what ingest stored: the true bars of ``raw/`` and the dead-letter records."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from azure.storage.blob import ContainerClient

from functions.shared.bars import empty_bars, from_parquet, true_bars


def _download_all(container: ContainerClient, prefix: str) -> list[bytes]:
    names = [b.name for b in container.list_blobs(name_starts_with=prefix)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda n: container.download_blob(n).readall(), names))


def stored_bars(container: ContainerClient, symbol: str | None = None) -> pa.Table:
    """All true bars under ``raw/`` (optionally of one symbol), sorted by symbol and ts."""
    tables = [from_parquet(data) for data in _download_all(container, "raw/")]
    table = pa.concat_tables(tables) if tables else empty_bars()
    if symbol:
        table = table.filter(pc.equal(table.column("symbol"), symbol.upper()))
    return true_bars(table)


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
