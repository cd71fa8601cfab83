"""HTTP triggers: ``GET /api/live`` (the live page, one self-contained HTML document) and ``GET /api/live/data``."""

from __future__ import annotations

import logging
import uuid
from functools import cache
from pathlib import Path

import azure.functions as func
import orjson

from functions.page.view import PageData
from functions.settings import get_settings
from functions.shared.storage import bars_container
from functions.train_trigger import backends
from functions.train_trigger.ports import ModelSnapshot

log = logging.getLogger(__name__)
bp = func.Blueprint()
STATIC = Path(__file__).parent / "static"
PAGE_ROUTE = "live"
DATA_ROUTE = "live/data"
# the chart library and the page's own script and style, inlined: one request, nothing fetched elsewhere
INLINED = ("uPlot.min.css", "page.css", "uPlot.iife.min.js", "page.js")


@cache
def page_html() -> bytes:
    """The page with its style and scripts inlined (built on the first request, then kept)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for name in INLINED:
        html = html.replace(f"<!--{name}-->", (STATIC / name).read_text(encoding="utf-8"))
    return html.encode("utf-8")


def _snapshot() -> ModelSnapshot:
    """The registry's champion and newest version, through the app's ML backend."""
    return backends.create(get_settings()).models.snapshot()


@cache
def page_data() -> PageData:
    """The process's page data builder (its caches are shared by every poll)."""
    return PageData(bars_container(get_settings()), _snapshot)


@bp.function_name("live_page")
@bp.route(route=PAGE_ROUTE, methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def live_page(req: func.HttpRequest) -> func.HttpResponse:
    """The live page: closes, forecasts with their band, versions, ingest health; it polls live/data."""
    return func.HttpResponse(
        page_html(), status_code=200, mimetype="text/html", charset="utf-8", headers={"cache-control": "no-cache"}
    )


@bp.function_name("live_data")
@bp.route(route=DATA_ROUTE, methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def live_data(req: func.HttpRequest) -> func.HttpResponse:
    """The live page's JSON document (cached for a few seconds)."""
    rid = uuid.uuid4().hex  # the correlation id of this poll's log lines
    headers = {"x-request-id": rid, "cache-control": "no-store"}
    try:
        body = orjson.dumps(page_data().view(rid))
    except Exception as exc:  # the page keeps its last view and says why this one failed
        log.warning("request=%s live data failed: %s: %s", rid, type(exc).__name__, exc)
        error = {"error": {"code": "unavailable", "message": f"{type(exc).__name__}: {exc}"}}
        return func.HttpResponse(
            orjson.dumps(error), status_code=503, mimetype="application/json", headers={**headers, "Retry-After": "5"}
        )
    return func.HttpResponse(body, status_code=200, mimetype="application/json", headers=headers)
