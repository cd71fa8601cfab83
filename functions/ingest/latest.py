"""Keep ``latest/<SYMBOL>.parquet`` (the newest true bars of a symbol) current.

Each update reads the blob with its ETag, merges by the true-bar rule and writes back only if the
ETag still matches, so two batches updating one symbol at once both land. Merging is idempotent:
applying the same batch twice gives the same blob contents.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from functions.ingest.bars import from_parquet, last_bars, to_parquet

log = logging.getLogger(__name__)


class LatestConflictError(RuntimeError):
    """The blob kept changing under us for every attempt; the invocation should be retried."""


def latest_blob_name(symbol: str) -> str:
    """Blob name of a symbol's rolling window."""
    return f"latest/{symbol}.parquet"


def update_symbol(
    container: ContainerClient, symbol: str, bars: pa.Table, window: int, max_attempts: int, batch_id: str
) -> int:
    """Merge ``bars`` of one symbol into its latest blob; return the rows it now holds."""
    blob = container.get_blob_client(latest_blob_name(symbol))
    for attempt in range(1, max_attempts + 1):
        try:
            downloader = blob.download_blob()
            current, etag = from_parquet(downloader.readall()), downloader.properties.etag
        except ResourceNotFoundError:
            current, etag = None, None
        merged = last_bars(bars if current is None else pa.concat_tables([current, bars]), window)
        try:
            if etag is None:
                blob.upload_blob(to_parquet(merged), overwrite=False)
            else:
                blob.upload_blob(
                    to_parquet(merged), overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            return merged.num_rows
        except (ResourceModifiedError, ResourceExistsError):
            log.info("batch=%s latest/%s changed concurrently, attempt %d/%d", batch_id, symbol, attempt, max_attempts)
    raise LatestConflictError(f"latest/{symbol}.parquet: still conflicting after {max_attempts} attempts")


def update_latest(
    container: ContainerClient, bars: pa.Table, window: int, max_attempts: int, batch_id: str
) -> dict[str, int]:
    """Merge a batch's true bars into every symbol's latest blob; return rows held per symbol."""
    held = {}
    for symbol in pc.unique(bars.column("symbol")).to_pylist():
        rows = bars.filter(pc.equal(bars.column("symbol"), symbol))
        held[symbol] = update_symbol(container, symbol, rows, window, max_attempts, batch_id)
    return held
