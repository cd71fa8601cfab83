"""Forecasts for predict: from the bars a POST sends, or from a symbol's latest/ blob, shared per cache period.

The HTTP trigger (``blueprint.py``) only parses requests and shapes answers; what a forecast
costs (the read of ``latest/``, the scoring call) and how concurrent GETs share it lives here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future

import orjson
import pyarrow.compute as pc

from functions.predict.api import UNAVAILABLE, ApiError, dependency_error, forecast_doc, newest_close
from functions.predict.client import attempt_budget_s, scoring_client
from functions.predict.live import ledger_worker
from functions.settings import Settings
from functions.shared.latest import read_latest
from functions.shared.storage import bars_container

log = logging.getLogger(__name__)
FAILURE_TTL_S = 1.0  # a failed forecast is shared this long at most: the next request soon tries again
MAX_FLIGHTS = 1024  # symbols come from requests: past this many, finished flights are dropped
STORAGE_WAIT_S = 15.0  # the read of latest/, in the bound on how long a GET waits for another's forecast


@dataclasses.dataclass(frozen=True)
class _Known:
    """A forecast body and what it was made from: latest/ at ``etag``, scored by model ``version``.

    A forecast is a function of the bars and the model alone, so while the blob keeps its ETag
    and the endpoint serves the same version and window, the body is exactly what scoring again
    would answer; only the live figures in it may have changed since (``live_generation``), and
    the body is then made again from the scoring answer kept here, without a call.
    """

    etag: str
    version: str
    bars_needed: int
    body: bytes
    scored: dict
    last_close: float
    live_generation: int


class _Flight:
    """The read of ``latest/`` and the scoring call for one symbol, shared by the GETs of one cache period.

    The first GET (the owner) does the work and completes ``outcome`` with the body or the ApiError;
    the others wait on it, so a failing endpoint is tried once, not once per waiting request.
    """

    def __init__(self, started: float, period_s: float, request_id: str, known: _Known | None = None) -> None:
        self.started = started  # monotonic seconds
        self.expires = started + period_s  # changed under _flights_lock
        self.request_id = request_id
        # the error is a result, not set_exception: each waiter raises its own copy, never a shared object
        self.outcome: Future[bytes | ApiError] = Future()
        self.known = known  # the newest forecast made from a read of latest/, handed from flight to flight

    def joinable(self, now: float, stuck_s: float) -> bool:
        """Whether a GET at ``now`` shares this flight: running (its bars are read now) but not stuck, or fresh.

        A flight running longer than anyone waits for it is given up on, so that one hung call
        cannot turn every later GET for the symbol into a timeout.
        """
        if self.outcome.done():
            return self.expires > now
        return now - self.started < stuck_s


_flights: dict[str, _Flight] = {}
_flights_lock = threading.Lock()


def _join(symbol: str, settings: Settings, request_id: str) -> tuple[_Flight, bool]:
    """The flight a GET for ``symbol`` shares, and whether this request starts it (and so must fly it)."""
    now, stuck_s = time.monotonic(), _wait_s(settings)
    with _flights_lock:
        flight = _flights.get(symbol)
        if flight is not None and flight.joinable(now, stuck_s):
            return flight, False
        if len(_flights) >= MAX_FLIGHTS:
            for key in [key for key, old in _flights.items() if not old.joinable(now, stuck_s)]:
                del _flights[key]
        known = flight.known if flight is not None else None
        flight = _flights[symbol] = _Flight(now, settings.predict_cache_seconds, request_id, known)
        return flight, True


def _wait_s(settings: Settings) -> float:
    """How long a GET waits for another's forecast: two endpoint calls at their worst, plus a storage read."""
    return 2 * (settings.scoring_retries + 1) * attempt_budget_s(settings) + STORAGE_WAIT_S


def _read_latest(
    settings: Settings, symbol: str, count: int, known_etag: str | None = None
) -> tuple[list[dict], str | None] | None:
    """The newest ``count`` bars of ``symbol`` from ``latest/<SYMBOL>.parquet``, as scoring records, and the ETag.

    None when the blob still has ``known_etag`` (nothing is downloaded). A corrupt blob is
    quarantined and rebuilt from raw/ (the truth) rather than answered with 503.
    """
    latest = read_latest(
        bars_container(settings),
        symbol,
        settings.latest_window,
        settings.latest_max_attempts,
        f"predict-{symbol}",
        known_etag,
    )
    if latest.unchanged:
        return None
    if latest.table is None:
        raise ApiError(404, "unknown_symbol", f"no bars stored for {symbol}")
    table = latest.table.slice(max(0, latest.table.num_rows - count))
    ts = pc.cast(table.column("ts"), "int64").to_pylist()
    cols = {k: table.column(k).to_pylist() for k in ("open", "high", "low", "close", "volume")}
    records = [
        {"symbol": symbol, "ts": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, o, h, lo, c, v in zip(
            ts, cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"], strict=True
        )
    ]
    return records, latest.etag


def answer(
    symbol: str, scored: dict, last_close: float, settings: Settings, request_id: str, source: str
) -> tuple[bytes, int]:
    """The 200 body with the served version's live figures, the forecast recorded in the ledger; and their generation.

    Both cost memory only (see :mod:`functions.predict.live`); a recording that fails is logged
    and the forecast is answered all the same.
    """
    doc = forecast_doc(symbol, scored, last_close)
    worker = ledger_worker(settings)
    generation, live = worker.live(doc["model"]["version"])
    if doc["skill"] is not None:
        doc["skill"]["live"] = live
    try:
        worker.record(doc, source, request_id)
    except Exception:  # the ledger never fails a forecast
        log.exception("request=%s the forecast was not recorded in the ledger", request_id)
    return orjson.dumps(doc), generation


def score_bars(symbol: str, bars: list[dict], settings: Settings, request_id: str, source: str) -> tuple[bytes, float]:
    """The forecast body for ``bars`` (recorded as served by ``source``) and the seconds spent in the endpoint."""
    scored = _score(symbol, bars, settings, request_id, source)
    return scored.body, scored.endpoint_s


@dataclasses.dataclass(frozen=True)
class _Scored:
    """A forecast made by the endpoint: the body, what it was made from, and the endpoint's seconds."""

    body: bytes
    scored: dict
    last_close: float
    live_generation: int
    endpoint_s: float


def _score(symbol: str, bars: list[dict], settings: Settings, request_id: str, source: str) -> _Scored:
    """Score ``bars`` and answer (recording the forecast as served by ``source``)."""
    scored, endpoint_s = scoring_client(settings).score(bars, request_id)
    last_close = newest_close(bars)
    body, generation = answer(symbol, scored, last_close, settings, request_id, source)
    return _Scored(body, scored, last_close, generation, endpoint_s)


def as_api_error(exc: BaseException, request_id: str) -> ApiError:
    """The answer to an exception: an ApiError as is, 503 for a failed dependency, else 500 (a bug, logged)."""
    if isinstance(exc, ApiError):
        return exc
    unavailable = dependency_error(exc)
    if unavailable is not None:
        log.warning("request=%s dependency failed: %s: %s", request_id, type(exc).__name__, exc)
        return unavailable
    log.error("request=%s failed unexpectedly", request_id, exc_info=exc)
    return ApiError(500, "internal_error", "the request failed unexpectedly")


def _fly(flight: _Flight, symbol: str, settings: Settings, request_id: str) -> tuple[bytes, float]:
    """As the flight's owner: read the newest bars, score them, and hand the outcome to the waiting GETs."""
    try:
        client = scoring_client(settings)
        count = client.bars_needed(request_id)
        served, known = client.served, flight.known
        if known is not None and (served is None or (served.version, served.bars_needed) != (known.version, count)):
            known = None  # another model, or another window: the forecast it made says nothing now
        read = _read_latest(settings, symbol, count, known.etag if known else None)
        if read is None:  # latest/ kept the ETag it was asked with: the same bars, the same model
            log.debug("request=%s latest/%s unchanged; the forecast stands", request_id, symbol)
            body, endpoint_s = known.body, 0.0
            if ledger_worker(settings).live(known.version)[0] != known.live_generation:  # new live figures
                body, generation = answer(symbol, known.scored, known.last_close, settings, request_id, "get")
                flight.known = dataclasses.replace(known, body=body, live_generation=generation)
        else:
            bars, etag = read
            made = _score(symbol, bars, settings, request_id, "get")
            body, endpoint_s = made.body, made.endpoint_s
            served = client.served  # as the call left it: a call that contradicted it forgot it
            if etag is not None and served is not None and served.version is not None:
                flight.known = _Known(
                    etag, served.version, served.bars_needed, body, made.scored, made.last_close, made.live_generation
                )
    except BaseException as exc:  # even an interrupt must release the waiters
        err = as_api_error(exc, request_id)
        with _flights_lock:  # the failure is shared briefly, then the next GET tries again
            flight.expires = min(flight.expires, time.monotonic() + FAILURE_TTL_S)
        flight.outcome.set_result(err)
        if err is exc or not isinstance(exc, Exception):
            raise
        raise err from exc
    flight.outcome.set_result(body)
    return body, endpoint_s


def _await(flight: _Flight, settings: Settings, request_id: str) -> bytes:
    """The body of a flight another GET flies, or its error; 503 if it takes longer than it can."""
    log.debug("request=%s shares the forecast of request=%s", request_id, flight.request_id)
    try:
        outcome = flight.outcome.result(timeout=_wait_s(settings))
    except TimeoutError:  # concurrent.futures.TimeoutError is the builtin since Python 3.11
        log.warning("request=%s gave up waiting for the forecast of request=%s", request_id, flight.request_id)
        raise ApiError(503, "timeout", "the forecast is taking too long; retry later", UNAVAILABLE) from None
    if isinstance(outcome, ApiError):
        raise dataclasses.replace(outcome)
    return outcome


def forecast_latest(symbol: str, settings: Settings, request_id: str) -> tuple[bytes, float]:
    """The forecast from the symbol's latest bars, made once per cache period however many GETs ask.

    A forecast is a function of the bars and the model, and the bars change once a minute, so the
    GETs of one period share one read of ``latest/`` and one endpoint call, or the one error they
    ended in; ``PREDICT_CACHE_SECONDS`` (default 2 s) bounds how stale an answer can be. After
    the period the blob is asked for again with ``If-None-Match``: while it keeps its ETag and the
    endpoint serves the same model (as last heard, at most ``SERVED_TTL_S`` ago), the last
    forecast is still the answer, and nothing is downloaded or scored.
    """
    flight, owner = _join(symbol, settings, request_id)
    if owner:
        return _fly(flight, symbol, settings, request_id)
    return _await(flight, settings, request_id), 0.0
