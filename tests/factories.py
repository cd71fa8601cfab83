"""Builders for Airbyte messages and an independent, plain-Python oracle of the true bars."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

SYMBOL = re.compile(r"[A-Z0-9^][A-Z0-9.^=-]{0,15}")
FIELDS = ("open", "high", "low", "close", "volume")


def message(
    symbol: str,
    emitted_at: int,
    ts: Sequence[int],
    bars: Sequence[Sequence[Any]],
    stream: str = "price",
    extra_results: Sequence[dict] = (),
) -> bytes:
    """One destination-kafka record with a single chart result; ``bars`` rows are (o, h, l, c, v)."""
    quote = {name: [row[k] for row in bars] for k, name in enumerate(FIELDS)}
    result = {
        "meta": {"symbol": symbol, "dataGranularity": "1m", "exchangeTimezoneName": "America/New_York"},
        "timestamp": list(ts),
        "indicators": {"quote": [quote]},
    }
    return orjson.dumps(
        {
            "_airbyte_ab_id": "00000000-0000-0000-0000-000000000000",
            "_airbyte_stream": stream,
            "_airbyte_emitted_at": emitted_at,
            "_airbyte_data": {"chart": {"result": [result, *extra_results], "error": None}},
        }
    )


def _number(value: Any) -> float | None:
    """A JSON number as float, or None for anything else (bools, strings, objects)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def oracle(bodies: Iterable[bytes]) -> dict[tuple[str, int], tuple]:
    """True bars by (symbol, minute ts) -> (o, h, l, c, v), computed the slow, obvious way.

    A bar counts when the contract's bounds hold: ts an integral number of seconds in
    [2000-01-01, emitted_at + 1 day], prices finite in (0, 1e9] with low <= open/close <= high,
    volume integral in [0, 1e15], and an ASCII symbol whose upper case matches the pattern whole.
    """
    best: dict[tuple[str, int], tuple] = {}
    for body in bodies:
        try:
            doc = json.loads(body.decode("utf-8"))
            chart = doc["_airbyte_data"]["chart"]
            if doc["_airbyte_stream"] != "price" or chart.get("error") is not None:
                continue
            emitted = doc["_airbyte_emitted_at"]
            results = chart["result"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            continue
        if isinstance(emitted, bool) or not isinstance(emitted, int):
            continue
        if not 946_684_800_000 <= emitted <= (time.time() + 86_400) * 1000:  # a plausible epoch in ms
            continue
        for result in results:
            raw = result["meta"]["symbol"]
            if not isinstance(raw, str) or not raw.isascii() or not SYMBOL.fullmatch(raw.upper()):
                continue
            symbol = raw.upper()
            quote = result["indicators"]["quote"][0]
            for i, t in enumerate(result.get("timestamp") or []):
                t = _number(t)
                if t is None or not t.is_integer() or not 946_684_800 <= t <= emitted / 1000 + 86_400:
                    continue
                values = [_number(quote[name][i]) for name in FIELDS]
                if None in values:
                    continue
                o, h, lo, c, v = values
                if not all(math.isfinite(x) for x in values) or h > 1e9 or v > 1e15 or not v.is_integer():
                    continue
                if not (0 < lo <= min(o, c) and max(o, c) <= h and v >= 0):
                    continue
                key = (symbol, int(t) - int(t) % 60)
                candidate = (emitted, v, c, h, lo, o)
                if key not in best or candidate > best[key]:
                    best[key] = candidate
    return {k: (o, h, lo, c, int(v)) for k, (_, v, c, h, lo, o) in best.items()}


def table_bars(table: Any) -> dict[tuple[str, int], tuple]:
    """A bar table as the oracle's dict."""
    rows = table.to_pydict()
    return {
        (s, int(t.timestamp())): (o, h, lo, c, v)
        for s, t, o, h, lo, c, v in zip(
            rows["symbol"],
            rows["ts"],
            rows["open"],
            rows["high"],
            rows["low"],
            rows["close"],
            rows["volume"],
            strict=True,
        )
    }


# the required app settings of the local backend (settings tests start from these)
LOCAL_APP_SETTINGS = {
    "BARS_CONTAINER": "bars",
    "BARS_EVENTHUB_NAME": "stock_bars",
    "BARS_CONSUMER_GROUP": "ingest",
    "TRAIN_SCHEDULE": "0 */15 * * * *",
    "STOCKCAST_HOME": "/tmp/x",
    "MLFLOW_TRACKING_URI": "sqlite:////tmp/x/mlflow.db",
}

# app settings of a Function App on the Azure ML backend (the control-plane tests build requests from them)
AML_APP_SETTINGS = {
    "BARS_CONTAINER": "bars",
    "BARS_EVENTHUB_NAME": "stock_bars",
    "BARS_CONSUMER_GROUP": "ingest",
    "TRAIN_SCHEDULE": "0 */15 * * * *",
    "BarsStorage__blobServiceUri": "https://st.blob.core.windows.net",
    "ML_BACKEND": "aml",
    "AZURE_SUBSCRIPTION_ID": "sub",
    "AZURE_RESOURCE_GROUP": "rg",
    "AML_WORKSPACE": "ws",
    "AML_ENDPOINT": "stockcast-ep",
    "AML_COMPUTE": "cpu-cluster",
    "AML_BARS_DATASTORE": "bars",
}
