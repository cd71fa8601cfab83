"""Pure validation of predict requests and shaping of answers and errors."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from azure.core.exceptions import HttpResponseError, IncompleteReadError, ServiceRequestError, ServiceResponseError

from functions.shared.bars import MAX_PRICE, MAX_TS_AHEAD_S, MAX_VOLUME, MIN_TS, SYMBOL_PATTERN, normalise_symbol

BAR_FIELDS = ("ts", "open", "high", "low", "close", "volume")
PRICE_FIELDS = ("open", "high", "low", "close")
_NUMBER = frozenset({int, float})  # exact types: bool is an int subclass, and not a price
# Bounds of a plausible 1-minute bar. Ingest should hold stored bars to the same ones (they belong in
# functions/shared/bars.py, shared by both); until then they are defined here, for POSTed bars.
UNAVAILABLE = (("Retry-After", "5"),)  # a dependency failed: the same request may succeed shortly
RETRYABLE_STATUSES = frozenset({408, 429})  # with every 5xx: the service is busy or down, not refusing us
# transports and timeouts (azure-core's timeouts subclass its request and response errors)
TRANSIENT_ERRORS = (
    ServiceRequestError,
    ServiceResponseError,
    IncompleteReadError,
    TimeoutError,
    ConnectionError,
    httpx.TransportError,
)
MODEL_KINDS = ("persistence", "lstm_attention")  # what the endpoint may serve; anything else is "unknown"
INTERVAL_FIELDS = ("level", "low", "high")
SKILL_FIELDS = ("ratio_to_persistence", "p_value", "n", "evaluated_at")
# an x-request-id that is echoed and logged: bounded, and nothing a header or a log line could be split on
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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


def usable_request_id(raw: str | None) -> str | None:
    """The client's ``x-request-id`` if it is safe to echo and log (1–128 of ``[A-Za-z0-9._:-]``), else None."""
    return raw if raw is not None and len(raw) <= 128 and REQUEST_ID.fullmatch(raw) else None


def new_request_id() -> str:
    """A request id for a request without a usable one."""
    return uuid.uuid4().hex


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


def _bar_seconds(ts: Any, index: int, now: float) -> int:
    """Unix seconds of ``bars[index].ts``: a time within [2000-01-01, now + 1 day], else 400 invalid_bar."""
    if isinstance(ts, bool) or not isinstance(ts, (int, str)):
        raise ApiError(400, "invalid_bar", f"bars[{index}].ts must be an ISO 8601 time or unix seconds")
    try:
        seconds = ts_seconds(ts)
    except (ValueError, OverflowError, OSError):
        raise ApiError(400, "invalid_bar", f"bars[{index}].ts must be an ISO 8601 time or unix seconds") from None
    if not MIN_TS <= seconds <= now + MAX_TS_AHEAD_S:
        # milliseconds are the usual mistake: every millisecond time since 1970-01-12 lies past the bound
        hint = "; ts is unix seconds, not milliseconds" if isinstance(ts, int) and seconds > 1e11 else ""
        raise ApiError(400, "invalid_bar", f"bars[{index}].ts must lie between 2000-01-01 and a day from now{hint}")
    return seconds


def _bar(bar: Any, index: int, symbol: str) -> dict[str, Any]:
    """The normalised scoring record of ``bars[index]`` (its ts already checked), or 400 invalid_bar."""
    o, h, lo, c = (_number(bar, k, index) for k in PRICE_FIELDS)
    v = _number(bar, "volume", index)
    if min(o, h, lo, c) <= 0 or max(o, h, lo, c) > MAX_PRICE:
        raise ApiError(400, "invalid_bar", f"bars[{index}]: prices must lie in (0, {MAX_PRICE:g}]")
    if not 0 <= v <= MAX_VOLUME:
        raise ApiError(400, "invalid_bar", f"bars[{index}]: volume must lie in [0, {MAX_VOLUME:g}]")
    if lo > min(o, c) or max(o, c) > h:
        raise ApiError(400, "invalid_bar", f"bars[{index}]: need low <= open/close <= high")
    return {"symbol": symbol, "ts": bar["ts"], "open": o, "high": h, "low": lo, "close": c, "volume": v}


def _plain_bar(bar: Any, symbol: str, latest: float) -> tuple[int, dict[str, Any]] | None:
    """(seconds, record) of a bar with unix-seconds ``ts`` that passes every check, else None.

    A client sends 90 such bars per POST, and the full checks (3–4 µs a bar) were a quarter of
    the predict process's CPU per POST; this accepts exactly what they accept, and leaves anything
    else (an ISO time, a string price, a bound crossed) to them and their messages. NaN fails
    every comparison.
    """
    if type(bar) is not dict:
        return None
    get = bar.get  # spelled out, not a loop over BAR_FIELDS: this runs for every bar of every POST
    ts, o, h, lo, c, v = get("ts"), get("open"), get("high"), get("low"), get("close"), get("volume")
    if type(ts) is not int or not MIN_TS <= ts <= latest:
        return None
    if not (type(o) in _NUMBER and type(h) in _NUMBER and type(lo) in _NUMBER and type(c) in _NUMBER):
        return None
    if type(v) not in _NUMBER:
        return None
    o, h, lo, c, v = float(o), float(h), float(lo), float(c), float(v)
    if not (0 < lo <= o <= h <= MAX_PRICE and lo <= c <= h and 0 <= v <= MAX_VOLUME):
        return None
    return ts, {"symbol": symbol, "ts": ts, "open": o, "high": h, "low": lo, "close": c, "volume": v}


def parse_post(
    body: bytes, max_bars: int, max_bytes: int, now: float | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Validate ``{"symbol", "bars": [...]}``; returns the symbol and normalised bars, oldest first.

    ``now`` (unix seconds, default the clock) bounds how far ahead a bar's time may lie.
    """
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
    now = time.time() if now is None else now
    latest = now + MAX_TS_AHEAD_S
    timed = []
    for i, bar in enumerate(bars):
        pair = _plain_bar(bar, symbol, latest)
        if pair is None:  # not the plain case: the full checks, which name what is wrong
            if not isinstance(bar, dict):
                raise ApiError(400, "invalid_bar", f"bars[{i}] must be an object")
            pair = (_bar_seconds(bar.get("ts"), i, now), _bar(bar, i, symbol))
        timed.append(pair)
    # sent in time order; a stable sort keeps bars of the same time in the order sent (the later one wins)
    timed.sort(key=lambda pair: pair[0])
    return symbol, [bar for _, bar in timed]


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
    stamps = [ts_seconds(bar["ts"]) for bar in bars]
    return float(bars[len(stamps) - 1 - stamps[::-1].index(max(stamps))]["close"])  # the last of the newest


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


def _skill(scored: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decision-slice skill the endpoint reports, with the ``live`` figures beside; None if it reports none."""
    skill = scored.get("skill")
    if not isinstance(skill, dict):
        return None
    shaped = {key: skill.get(key) for key in SKILL_FIELDS}
    shaped["live"] = live
    return shaped


def _interval(row: dict[str, Any]) -> dict[str, float] | None:
    """The prediction interval as scored, or None (no interval, or no forecast across a close)."""
    interval = row.get("interval")
    if not isinstance(interval, dict) or any(interval.get(key) is None for key in INTERVAL_FIELDS):
        return None
    return {key: interval[key] for key in INTERVAL_FIELDS}


def forecast_body(symbol: str, scored: dict[str, Any], last_close: float, live: dict[str, Any] | None = None) -> bytes:
    """The 200 answer from the scoring endpoint's response."""
    return orjson.dumps(forecast_doc(symbol, scored, last_close, live))


def forecast_doc(
    symbol: str, scored: dict[str, Any], last_close: float, live: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The 200 answer as a document: the endpoint's forecast for ``symbol``, and the version's ``live`` figures."""
    forecasts = scored.get("forecasts")
    forecasts = forecasts if isinstance(forecasts, list) else []
    rows = [r for r in forecasts if isinstance(r, dict) and r.get("symbol") == symbol]
    # an endpoint answering off contract is a failing dependency (503), not a bug of this function
    if not rows or any(key not in rows[0] for key in ("as_of", "predicted_close")):
        raise ApiError(503, "endpoint_error", "the scoring endpoint returned no forecast", UNAVAILABLE)
    row = rows[0]
    return {
        "symbol": symbol,
        "as_of": row["as_of"],
        "target_ts": row.get("target_ts"),
        "predicted_close": row["predicted_close"],
        "last_close": last_close,
        "interval": _interval(row),
        "session_closed": bool(row.get("session_closed", False)),
        "next_open": row.get("next_open"),
        "model": _model(scored),
        "skill": _skill(scored, live),
    }


def dependency_error(exc: BaseException) -> ApiError | None:
    """The 503 for a dependency that failed (storage, a transport, a timeout); None for anything else (a bug).

    Transport errors, timeouts and 408/429/5xx answers of Azure services may pass on a retry, so they
    say Retry-After; any other exception is a defect that a retry would only repeat.
    """
    transient = isinstance(exc, TRANSIENT_ERRORS)
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        transient = transient or exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUSES
    if not transient:
        return None
    # the type only: the messages of SDK errors carry URLs and account names
    message = f"a dependency failed ({type(exc).__name__}); retry later"
    return ApiError(503, "dependency_unavailable", message, UNAVAILABLE)
