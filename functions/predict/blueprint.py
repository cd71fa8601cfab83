"""HTTP trigger: ``GET /api/predict/{symbol}`` and ``POST /api/predict`` (behind API Management)."""

from __future__ import annotations

import logging
import time

import azure.functions as func

from functions import telemetry
from functions.predict.api import (
    ApiError,
    new_request_id,
    parse_post,
    parse_symbol,
    usable_request_id,
)
from functions.predict.forecasts import as_api_error, forecast_latest, score_bars
from functions.settings import get_settings

log = logging.getLogger(__name__)
bp = func.Blueprint()
MAX_BODY_BYTES = 2_000_000
JSON = "application/json"
SYMBOL_ROUTE = "predict/{symbol}"  # route templates: the `route` dimension of stockcast.predict.duration
POST_ROUTE = "predict"


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


def _request_id(req: func.HttpRequest) -> str:
    """The request's id: the client's ``x-request-id`` when safe to echo and log, else a new one."""
    raw = req.headers.get("x-request-id")
    rid = usable_request_id(raw)
    if rid is None:
        rid = new_request_id()
        if raw:  # never echoed, and logged only as a short escaped prefix
            log.info("request=%s replaces an unusable x-request-id of %d chars: %a", rid, len(raw), raw[:32])
    return rid


def _respond(req: func.HttpRequest, post: bool, started: float) -> func.HttpResponse:
    request_id = _request_id(req)
    try:
        settings = get_settings()
        telemetry.configure(settings)
        if post:
            symbol, bars = parse_post(req.get_body(), settings.predict_max_bars, MAX_BODY_BYTES)
            body, endpoint_s = score_bars(symbol, bars, settings, request_id, "post")
        else:
            symbol = parse_symbol(req.route_params.get("symbol"))
            body, endpoint_s = forecast_latest(symbol, settings, request_id)
        return _answer(symbol, body, endpoint_s, request_id, started)
    except Exception as exc:  # the API answers JSON even for what it did not foresee
        return _error(as_api_error(exc, request_id), request_id)


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
