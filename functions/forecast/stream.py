"""The pure rules of the forecast stream: which bars get a forecast, its window, and the message.

A batch of ``stock_bars`` events yields at most one forecast per symbol: for the symbol's newest
true bar in the batch (``as_of``), made from the bars up to that minute, where the batch's bars
win over those read from ``latest/`` (the batch may be read before ingest stored it). A forecast
is a function of its bars and the model, so a batch delivered again yields the same messages,
with the same idempotency key ``symbol|as_of|version``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

BAR_FIELDS = ("ts", "open", "high", "low", "close", "volume")


def records(table: pa.Table | None, symbol: str) -> list[dict[str, Any]]:
    """The rows of ``symbol`` in a bars table as scoring records (``ts`` in unix seconds), in table order."""
    if table is None or table.num_rows == 0:
        return []
    if "symbol" in table.column_names:
        table = table.filter(pc.equal(table.column("symbol"), symbol))
    ts = pc.cast(table.column("ts"), "int64").to_pylist()
    cols = [table.column(k).to_pylist() for k in BAR_FIELDS[1:]]
    return [
        {"symbol": symbol, "ts": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, o, h, lo, c, v in zip(ts, *cols, strict=True)
    ]


def newest_bars(bars: pa.Table) -> dict[str, int]:
    """Per symbol, the minute (unix seconds) of its newest true bar in a decoded batch: the forecasts due."""
    if bars.num_rows == 0:
        return {}
    symbols = bars.column("symbol").to_pylist()
    ts = pc.cast(bars.column("ts"), "int64").to_pylist()
    newest: dict[str, int] = {}
    for symbol, t in zip(symbols, ts, strict=True):
        if t > newest.get(symbol, -(2**62)):
            newest[symbol] = t
    return dict(sorted(newest.items()))


def window(
    batch: Iterable[Mapping[str, Any]], stored: Iterable[Mapping[str, Any]], as_of: int, count: int
) -> list[dict[str, Any]]:
    """The newest ``count`` bars up to ``as_of``: ``stored`` (latest/) merged with ``batch``, whose bars win."""
    merged = {int(b["ts"]): dict(b) for b in stored}
    merged.update({int(b["ts"]): dict(b) for b in batch})
    kept = [merged[t] for t in sorted(merged) if t <= as_of]
    return kept[-count:]


def idempotency_key(symbol: str, as_of: str, version: str) -> str:
    """The key a consumer deduplicates by: the same bars and model always give the same key."""
    return f"{symbol}|{as_of}|{version}"


def message(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stream message of a forecast answer (predict's document), or None when it is not published.

    Not published: a forecast past the session (``session_closed``: no next minute prints), one
    without a target minute, and one from an endpoint that does not say its model version.
    """
    model = doc.get("model") or {}
    version = model.get("version")
    if doc.get("session_closed") or doc.get("target_ts") is None or version in (None, "unknown"):
        return None
    return {
        "symbol": doc["symbol"],
        "as_of": doc["as_of"],
        "target_ts": doc["target_ts"],
        "forecast": doc["predicted_close"],
        "last_close": doc.get("last_close"),
        "interval": doc.get("interval"),
        "version": str(version),
        "kind": model.get("kind"),
        "key": idempotency_key(doc["symbol"], doc["as_of"], str(version)),
    }
