"""Pure validation of predict requests and shaping of answers and errors."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import orjson

from functions.ingest.bars import SYMBOL_PATTERN, normalise_symbol

BAR_FIELDS = ("ts", "open", "high", "low", "close", "volume")
MODEL_KINDS = ("persistence", "lstm_attention")  # what the endpoint may serve; anything else is "unknown"
INTERVAL_FIELDS = ("level", "low", "high")
SKILL_FIELDS = ("ratio_to_persistence", "p_value", "n", "evaluated_at")


@dataclass(frozen=True)
class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, message, optional headers."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        """The JSON error document."""
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})


def parse_symbol(raw: str | None) -> str:
    """Check a symbol against the bar contract (ASCII, whole string) and upper-case it."""
    symbol = normalise_symbol(raw)
    if symbol is None:
        raise ApiError(400, "invalid_symbol", f"symbol {raw!r} does not match {SYMBOL_PATTERN.pattern}")
    return symbol


def _number(bar: dict, name: str, index: int) -> float:
    value = bar.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, "invalid_bar", f"bars[{index}].{name} must be a finite number")
    return float(value)


def _is_time(ts: Any) -> bool:
    """Whether ``ts`` is unix seconds or an ISO 8601 time the endpoint can read."""
    if isinstance(ts, bool) or not isinstance(ts, (int, str)):
        return False
    try:
        ts_seconds(ts)
    except (ValueError, OverflowError, OSError):
        return False
    return True


def parse_post(body: bytes, max_bars: int, max_bytes: int) -> tuple[str, list[dict[str, Any]]]:
    """Validate ``{"symbol", "bars": [...]}``; returns the symbol and normalised bars."""
    if len(body) > max_bytes:
        raise ApiError(413, "too_large", f"request body over {max_bytes} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "malformed", 'body must be an object {"symbol": ..., "bars": [...]}')
    symbol = parse_symbol(doc.get("symbol") if isinstance(doc.get("symbol"), str) else None)
    bars = doc.get("bars")
    if not isinstance(bars, list) or not bars:
        raise ApiError(400, "malformed", "bars must be a non-empty list")
    if len(bars) > max_bars:
        raise ApiError(413, "too_large", f"at most {max_bars} bars per request, got {len(bars)}")
    out = []
    for i, bar in enumerate(bars):
        if not isinstance(bar, dict):
            raise ApiError(400, "invalid_bar", f"bars[{i}] must be an object")
        ts = bar.get("ts")
        if not _is_time(ts):
            raise ApiError(400, "invalid_bar", f"bars[{i}].ts must be an ISO 8601 time or unix seconds")
        o, h, lo, c = (_number(bar, k, i) for k in ("open", "high", "low", "close"))
        v = _number(bar, "volume", i)
        if min(o, h, lo, c) <= 0 or v < 0 or lo > min(o, c) or max(o, c) > h:
            raise ApiError(400, "invalid_bar", f"bars[{i}]: need prices > 0, low <= open/close <= high, volume >= 0")
        out.append({"symbol": symbol, "ts": ts, "open": o, "high": h, "low": lo, "close": c, "volume": v})
    return symbol, out


def ts_seconds(value: str | int) -> int:
    """Unix seconds of a bar's ``ts`` (ISO 8601, UTC if no offset, or unix seconds), as the endpoint reads it."""
    if isinstance(value, int):
        return value
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def newest_close(bars: list[dict[str, Any]]) -> float:
    """The close of the newest bar by time; of bars with the same time, the last sent (as the endpoint keeps)."""
    newest = max(range(len(bars)), key=lambda i: (ts_seconds(bars[i]["ts"]), i))
    return float(bars[newest]["close"])


def _model(scored: dict[str, Any]) -> dict[str, str]:
    """Name, version and kind of the model that scored; ``unknown`` for what an older endpoint omits."""
    model = scored.get("model")
    model = model if isinstance(model, dict) else {}
    kind = model.get("kind")
    return {
        "name": str(model.get("name", "unknown")),
        "version": str(model.get("version", "unknown")),
        "kind": kind if kind in MODEL_KINDS else "unknown",
    }


def _skill(scored: dict[str, Any]) -> dict[str, Any] | None:
    """The served version's skill against persistence, or None when the endpoint reports none."""
    skill = scored.get("skill")
    if not isinstance(skill, dict):
        return None
    return {key: skill.get(key) for key in SKILL_FIELDS}


def _interval(row: dict[str, Any]) -> dict[str, float] | None:
    """The prediction interval as scored, or None (no interval, or no forecast across a close)."""
    interval = row.get("interval")
    if not isinstance(interval, dict) or any(interval.get(key) is None for key in INTERVAL_FIELDS):
        return None
    return {key: interval[key] for key in INTERVAL_FIELDS}


def forecast_body(symbol: str, scored: dict[str, Any], last_close: float) -> bytes:
    """The 200 answer from the scoring endpoint's response."""
    rows = [r for r in scored.get("forecasts", []) if r.get("symbol") == symbol]
    if not rows:
        raise ApiError(503, "endpoint_error", "the scoring endpoint returned no forecast", (("Retry-After", "5"),))
    row = rows[0]
    return orjson.dumps(
        {
            "symbol": symbol,
            "as_of": row["as_of"],
            "target_ts": row.get("target_ts"),
            "predicted_close": row["predicted_close"],
            "last_close": last_close,
            "interval": _interval(row),
            "session_closed": bool(row.get("session_closed", False)),
            "next_open": row.get("next_open"),
            "model": _model(scored),
            "skill": _skill(scored),
        }
    )
