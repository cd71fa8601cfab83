"""Builders for Airbyte messages and an independent, plain-Python oracle of the true bars."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

SYMBOL = re.compile(r"^[A-Z0-9^][A-Z0-9.^=-]{0,15}$")
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


def oracle(bodies: Iterable[bytes]) -> dict[tuple[str, int], tuple]:
    """True bars by (symbol, minute ts) -> (o, h, l, c, v), computed the slow, obvious way."""
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
        for result in results:
            symbol = str(result["meta"]["symbol"]).upper()
            if not SYMBOL.match(symbol):
                continue
            quote = result["indicators"]["quote"][0]
            for i, t in enumerate(result.get("timestamp") or []):
                o, h, lo, c, v = (quote[name][i] for name in FIELDS)
                if None in (o, h, lo, c, v):
                    continue
                if not (0 < lo <= min(o, c) and max(o, c) <= h and v >= 0 and float(v).is_integer()):
                    continue
                key = (symbol, t - t % 60)
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
