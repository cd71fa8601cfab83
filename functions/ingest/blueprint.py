"""Event Hubs trigger: decode a batch of Airbyte messages and store it losslessly.

Outputs: the batch's true bars as one Parquet blob under ``raw/`` and its undecodable events as
one JSONL blob under ``deadletter/`` (both blob output bindings, written by the host after the
function returns), and the rolling ``latest/<SYMBOL>.parquet`` windows (ETag-conditional SDK
writes; a corrupt one is quarantined and rebuilt from ``raw/``). Every symbol's window is updated
even when another's fails; any storage error then fails the invocation, so neither output is
written, and the retry policy re-runs the whole batch, which is safe because every reader
applies the true-bar rule and the latest/ merge is idempotent.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter

import azure.functions as func

from functions import telemetry
from functions.ingest.airbyte import RawEvent, decode_batch
from functions.settings import get_settings
from functions.shared.bars import to_parquet
from functions.shared.latest import update_latest
from functions.shared.storage import bars_container

log = logging.getLogger(__name__)

bp = func.Blueprint()

RAW_PATH = "%BARS_CONTAINER%/raw/date={DateTime:yyyy-MM-dd}/hour={DateTime:HH}/{rand-guid}.parquet"
DEADLETTER_PATH = "%BARS_CONTAINER%/deadletter/date={DateTime:yyyy-MM-dd}/{rand-guid}.jsonl"


def _partition(events: list[func.EventHubEvent]) -> str | None:
    metadata = events[0].metadata if events else None
    context = (metadata or {}).get("PartitionContext") or {}
    partition = context.get("PartitionId") if isinstance(context, dict) else None
    return str(partition) if partition is not None else None


def to_raw_events(events: list[func.EventHubEvent]) -> list[RawEvent]:
    """Copy bodies and lineage out of the Functions event objects."""
    partition = _partition(events)
    return [
        RawEvent(
            body=e.get_body(),
            partition=partition,
            sequence_number=e.sequence_number,
            enqueued_at_ms=int(e.enqueued_time.timestamp() * 1000) if e.enqueued_time else None,
            offset=e.offset,
        )
        for e in events
    ]


def batch_id(events: list[RawEvent]) -> str:
    """A stable id for a batch: partition and sequence range, or a digest when lineage is absent."""
    seqs = [e.sequence_number for e in events if e.sequence_number is not None]
    if events and seqs:
        return f"p{events[0].partition or '-'}-{min(seqs)}-{max(seqs)}"
    digest = hashlib.blake2b(digest_size=8)
    for e in events:
        digest.update(e.body)
    return f"x-{digest.hexdigest()}"


@bp.function_name("ingest")
@bp.retry(
    strategy="exponential_backoff", max_retry_count="-1", minimum_interval="00:00:02", maximum_interval="00:05:00"
)
@bp.event_hub_message_trigger(
    arg_name="events",
    connection="BarsEventHub",
    event_hub_name="%BARS_EVENTHUB_NAME%",
    consumer_group="%BARS_CONSUMER_GROUP%",
    cardinality="many",
    data_type="binary",
)
@bp.blob_output(arg_name="raw", path=RAW_PATH, connection="BarsStorage", data_type="binary")
@bp.blob_output(arg_name="deadletter", path=DEADLETTER_PATH, connection="BarsStorage", data_type="binary")
def ingest(events: list[func.EventHubEvent], raw: func.Out[bytes], deadletter: func.Out[bytes]) -> None:
    """Decode the batch, update latest/ windows, and hand raw/ and deadletter/ blobs to the host."""
    settings = get_settings()
    telemetry.configure(settings)
    raw_events = to_raw_events(events)
    bid = batch_id(raw_events)
    decoded = decode_batch(raw_events)
    log.info(
        "batch=%s events=%d ignored=%d bars_received=%d true_bars=%d dead_letters=%d",
        bid,
        decoded.events,
        decoded.ignored,
        decoded.bars_received,
        decoded.bars.num_rows,
        len(decoded.dead_letters),
    )
    if decoded.bars.num_rows:
        # raises only after every symbol was tried; the outputs below are then never set, because
        # the host writes them only for an invocation that returns
        held = update_latest(
            bars_container(settings), decoded.bars, settings.latest_window, settings.latest_max_attempts, bid
        )
        log.info("batch=%s latest updated for %s", bid, held)
        raw.set(to_parquet(decoded.bars))
    if decoded.dead_letters:
        for letter in decoded.dead_letters:
            log.warning(
                "batch=%s dead-letter seq=%s reason=%s %s",
                bid,
                letter.event.sequence_number,
                letter.reason,
                letter.detail,
            )
        deadletter.set(decoded.dead_letter_jsonl(bid))
    # counted when handed to the host, which writes both blobs as the function returns; a retried
    # batch is counted again (the metrics are at least once, like the delivery)
    telemetry.bars_ingested(decoded.bars.num_rows)
    telemetry.deadletters(Counter(letter.reason for letter in decoded.dead_letters))
    stored_ms = time.time() * 1000
    telemetry.ingest_lag_ms(stored_ms - e.enqueued_at_ms for e in raw_events if e.enqueued_at_ms is not None)
