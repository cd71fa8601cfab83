"""One batch of the forecast stream: read latest/, score every due symbol in one call, shape the messages.

The handler (``blueprint.py``) decodes the batch and hands its true bars here. The batch itself is
the source of the new bars: the function has its own consumer group, so it may read the batch
before ingest has stored it in ``latest/``; ``latest/`` only supplies the older bars of the window.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from functions.forecast.stream import message, newest_bars, records, window
from functions.predict.api import ApiError, forecast_doc, newest_close
from functions.predict.client import scoring_client
from functions.predict.live import ledger_worker
from functions.settings import Settings
from functions.shared.latest import read_latest
from functions.shared.storage import bars_container

log = logging.getLogger(__name__)
SOURCE = "stream"  # the ledger's source label of the stream's forecasts
READERS = 8  # concurrent reads of latest/ per batch


def _stored(settings: Settings, symbol: str, batch_id: str) -> list[dict[str, Any]]:
    """The symbol's bars in latest/ (none for a symbol never stored)."""
    latest = read_latest(
        bars_container(settings), symbol, settings.latest_window, settings.latest_max_attempts, batch_id
    )
    return records(latest.table, symbol)


def forecast_batch(bars: pa.Table, settings: Settings, batch_id: str) -> list[dict[str, Any]]:
    """The stream messages of a batch's true ``bars``: one per symbol whose newest bar is in a session.

    Each forecast made is recorded in the live skill ledger (source ``stream``). A request the
    endpoint refuses (4xx: too few bars) is logged and skipped; an unavailable endpoint raises,
    so the retry policy runs the batch again.
    """
    due = newest_bars(bars)
    if not due:
        return []
    client = scoring_client(settings)
    count = client.bars_needed(batch_id)
    symbols = list(due)
    with ThreadPoolExecutor(min(READERS, len(symbols))) as pool:
        stored = list(pool.map(lambda s: _stored(settings, s, batch_id), symbols))
    windows = [
        window(records(bars, symbol), old, due[symbol], count) for symbol, old in zip(symbols, stored, strict=True)
    ]
    outcomes = client.score_many(windows, batch_id)
    worker = ledger_worker(settings)
    messages = []
    for symbol, bars_used, outcome in zip(symbols, windows, outcomes, strict=True):
        if isinstance(outcome, ApiError):
            if outcome.status >= 500:
                raise outcome
            log.warning("batch=%s symbol=%s not forecast: %s %s", batch_id, symbol, outcome.code, outcome.message)
            continue
        doc = forecast_doc(symbol, outcome[0], newest_close(bars_used))
        try:
            worker.record(doc, SOURCE, batch_id)
        except Exception:  # the ledger never fails a forecast
            log.exception("batch=%s the forecast of %s was not recorded in the ledger", batch_id, symbol)
        shaped = message(doc)
        if shaped is not None:
            messages.append(shaped)
    log.info("batch=%s symbols=%d forecasts=%d", batch_id, len(symbols), len(messages))
    return messages
