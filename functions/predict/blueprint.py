"""HTTP trigger: ``GET /api/predict/{symbol}`` and ``POST /api/predict`` (behind API Management)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import azure.functions as func
import pyarrow.compute as pc
from azure.core.exceptions import ResourceNotFoundError

from functions import telemetry
from functions.ingest.bars import from_parquet
from functions.ingest.latest import latest_blob_name
from functions.ingest.storage import bars_container
from functions.predict.client import UNAVAILABLE, scoring_client
from functions.predict.requests import ApiError, forecast_body, newest_close, parse_post, parse_symbol
from functions.settings import Settings, get_settings

log = logging.getLogger(__name__)
bp = func.Blueprint()
MAX_BODY_BYTES = 2_000_000
JSON = "application/json"
SYMBOL_ROUTE = "predict/{symbol}"  # route templates: the `route` dimension of stockcast.predict.duration
POST_ROUTE = "predict"


@dataclass
class _Latest:
    """A symbol's newest bars as read at one moment, and the forecast made from them once."""

    expires: float
    bars: list[dict]
    lock: threading.Lock = field(default_factory=threading.Lock)
    body: bytes | None = None


_cache: dict[str, _Latest] = {}
_cache_lock = threading.Lock()


def _latest(settings: Settings, symbol: str, request_id: str) -> _Latest:
    """The newest bars of ``symbol``, as many as the served model needs, through a short per-process cache.

    Bars change once a minute, so re-reading the blob for every request only adds a storage
    round trip; ``PREDICT_CACHE_SECONDS`` (default 2 s) bounds how stale an answer can be.
    """
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(symbol)
    if hit and hit.expires > now:
        return hit
    count = scoring_client(settings).bars_needed(request_id)
    entry = _Latest(now + settings.predict_cache_seconds, _read_latest(settings, symbol, count))
    with _cache_lock:
        _cache[symbol] = entry
    return entry


def _read_latest(settings: Settings, symbol: str, count: int) -> list[dict]:
    """The newest ``count`` bars of ``symbol`` from ``latest/<SYMBOL>.parquet``, as scoring records."""
    try:
        data = bars_container(settings).download_blob(latest_blob_name(symbol)).readall()
    except ResourceNotFoundError:
        raise ApiError(404, "unknown_symbol", f"no bars stored for {symbol}") from None
    table = from_parquet(data)
    table = table.slice(max(0, table.num_rows - count))
    ts = pc.cast(table.column("ts"), "int64").to_pylist()
    cols = {k: table.column(k).to_pylist() for k in ("open", "high", "low", "close", "volume")}
    return [
        {"symbol": symbol, "ts": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, o, h, lo, c, v in zip(
            ts, cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"], strict=True
        )
    ]


def _score(symbol: str, bars: list[dict], settings: Settings, request_id: str) -> tuple[bytes, float]:
    """The forecast body for ``bars`` and the seconds spent in the endpoint."""
    scored, endpoint_s = scoring_client(settings).score(bars, request_id)
    return forecast_body(symbol, scored, newest_close(bars)), endpoint_s


def _forecast_latest(symbol: str, settings: Settings, request_id: str) -> tuple[bytes, float]:
    """Score the symbol's latest bars once per cache entry; concurrent requests share that call.

    A forecast is a function of the bars and the model, and the bars change once a minute, so
    every request between two reads of ``latest/`` gets the same answer without a second call.
    """
    entry = _latest(settings, symbol, request_id)
    if entry.body is None:
        with entry.lock:
            if entry.body is None:
                entry.body, endpoint_s = _score(symbol, entry.bars, settings, request_id)
                return entry.body, endpoint_s
    return entry.body, 0.0


def _answer(symbol: str, body: bytes, endpoint_s: float, request_id: str, started: float) -> func.HttpResponse:
    total = time.perf_counter() - started
    log.info(
        "request=%s symbol=%s total_ms=%.2f endpoint_ms=%.2f overhead_ms=%.2f",
        request_id,
        symbol,
        total * 1000,
        endpoint_s * 1000,
        (total - endpoint_s) * 1000,
    )
    headers = {
        "x-request-id": request_id,
        "server-timing": f"endpoint;dur={endpoint_s * 1000:.2f}, total;dur={total * 1000:.2f}",
    }
    return func.HttpResponse(body, status_code=200, mimetype=JSON, headers=headers)


def _error(err: ApiError, request_id: str) -> func.HttpResponse:
    log.info("request=%s error status=%d code=%s %s", request_id, err.status, err.code, err.message)
    headers = {"x-request-id": request_id, **dict(err.headers)}
    return func.HttpResponse(err.body(), status_code=err.status, mimetype=JSON, headers=headers)


def _handle(req: func.HttpRequest, post: bool) -> func.HttpResponse:
    started = time.perf_counter()
    response = _respond(req, post, started)
    telemetry.predict_duration(
        (time.perf_counter() - started) * 1000, response.status_code, POST_ROUTE if post else SYMBOL_ROUTE
    )
    return response


def _respond(req: func.HttpRequest, post: bool, started: float) -> func.HttpResponse:
    request_id = req.headers.get("x-request-id") or uuid.uuid4().hex
    try:
        settings = get_settings()
        telemetry.configure(settings)
        if post:
            symbol, bars = parse_post(req.get_body(), settings.predict_max_bars, MAX_BODY_BYTES)
            body, endpoint_s = _score(symbol, bars, settings, request_id)
        else:
            symbol = parse_symbol(req.route_params.get("symbol"))
            body, endpoint_s = _forecast_latest(symbol, settings, request_id)
        return _answer(symbol, body, endpoint_s, request_id, started)
    except ApiError as err:
        return _error(err, request_id)
    except Exception:  # the API answers JSON even for what it did not foresee
        log.exception("request=%s failed", request_id)
        return _error(
            ApiError(503, "internal_error", "the request could not be served; retry later", UNAVAILABLE), request_id
        )


@bp.function_name("predict_symbol")
@bp.route(route=SYMBOL_ROUTE, methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def predict_symbol(req: func.HttpRequest) -> func.HttpResponse:
    """Forecast the next close of a symbol from its stored latest bars."""
    return _handle(req, post=False)


@bp.function_name("predict_bars")
@bp.route(route=POST_ROUTE, methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def predict_bars(req: func.HttpRequest) -> func.HttpResponse:
    """Forecast the next close from bars sent in the request."""
    return _handle(req, post=True)
