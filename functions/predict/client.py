"""Client of the scoring endpoint: one pooled httpx transport per process, timeouts, retries through stamina.

In Azure the endpoint's key (or Azure ML token) is fetched with the app's managed identity,
cached, and fetched again when it expires or the endpoint answers 401; it is never an app setting.
Its address is the endpoint's own ``scoring_uri``, read the same way and read again when a
connection fails (the inference router's address changes when the AzureML extension is
reinstalled or the cluster is stopped and started); ``SCORING_URL`` overrides it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import orjson
import stamina

from functions.predict.api import UNAVAILABLE, ApiError
from functions.settings import Settings
from functions.shared.identity import ml_client

log = logging.getLogger(__name__)
SERVED_TTL_S = 60.0  # how long what the endpoint said it serves is trusted before asking again
SERVED_RETRY_S = 5.0  # after a failed info call, how long the fallback bar count is used
# a connection failure reads the endpoint's address again at most this often (one ARM call each)
ADDRESS_REFRESH_S = 30.0
CONNECT_TIMEOUT_S = 1.0
# batches: what an endpoint that has not said its max_batch is tried with, and score.py's MAX_BARS
DEFAULT_MAX_BATCH = 64
MAX_BATCH_BARS = 20_000


class _RetryableError(Exception):
    """An attempt that failed in a way another attempt may not: a transport error, a 5xx, an expired credential."""


def attempt_budget_s(settings: Settings) -> float:
    """The longest one attempt can take: connect timeout, read timeout and the longest backoff."""
    return CONNECT_TIMEOUT_S + settings.scoring_timeout_s + 0.5


@dataclass(frozen=True)
class Served:
    """What the endpoint serves, as its GET said: the model version and the bars one forecast needs."""

    version: str | None
    bars_needed: int
    expires: float
    max_batch: int = 1  # requests one POST may carry; 1: the endpoint takes no batches


def served_from_info(info: Any, fallback: int, expires: float) -> Served:
    """Read the endpoint's GET answer; an endpoint that does not say ``bars_needed`` gets ``fallback``."""
    info = info if isinstance(info, dict) else {}
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    needed = info.get("bars_needed")
    valid = isinstance(needed, int) and not isinstance(needed, bool) and needed > 0
    version = model.get("version")
    batch = info.get("max_batch")
    batch = batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 1 else 1
    return Served(None if version is None else str(version), needed if valid else fallback, expires, batch)


def is_current(served: Served | None, now: float) -> bool:
    """Whether the cached answer may still be used."""
    return served is not None and served.expires > now


def contradicts(served: Served | None, scored: dict[str, Any]) -> bool:
    """Whether a scoring response came from another model version than the cached one."""
    model = scored.get("model") if isinstance(scored, dict) else None
    version = model.get("version") if isinstance(model, dict) else None
    return served is not None and version is not None and str(version) != served.version


def endpoint_document(status: int, content: bytes | Any, parsed: bool = False) -> dict[str, Any]:
    """The document of an endpoint answer with ``status`` (a 200), or the ApiError it means.

    422, 400 and 413 keep their status and the endpoint's code; anything else is 503.
    ``parsed``: ``content`` is already the JSON value (one answer inside a batch).
    """
    if parsed:
        doc = content
    else:
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ApiError(503, "endpoint_error", f"endpoint answered {status} without JSON", UNAVAILABLE) from None
    if status == 200:
        if not isinstance(doc, dict):  # off contract: the endpoint is failing, not this function
            raise ApiError(503, "endpoint_error", "endpoint answered 200 without a JSON object", UNAVAILABLE)
        return doc
    error = doc.get("error") if isinstance(doc, dict) else None
    error = error if isinstance(error, dict) else {}
    code, message = str(error.get("code", "endpoint_error")), str(error.get("message", f"endpoint answered {status}"))
    if status in (400, 413, 422):
        raise ApiError(status, code, message)
    raise ApiError(503, "endpoint_error", message, UNAVAILABLE)


@dataclass
class _Pending:
    """One request's bars waiting for a scoring call, and (once done) its outcome."""

    bars: list[dict[str, Any]]
    request_id: str
    outcome: tuple[dict[str, Any], float] | BaseException | None = None
    batch: list[_Pending] | None = None  # for this request's thread to send: it is the batch's first request
    woken: threading.Event = dataclasses.field(default_factory=threading.Event)  # done, or a batch handed over


class _Batcher:
    """Requests that arrive while the endpoint's workers are all busy go together in the next call.

    Nothing waits for a batch to fill: a request that finds a worker free is sent at once (alone,
    in the single-request format); those that queue behind busy workers are sent together as soon
    as one returns, by one of their own threads. Up to ``in_flight`` calls run at once, one per
    scoring worker: with one call at a time, a second worker sat idle while requests queued.
    Under load the endpoint answers a few batched calls in place of one call per request; each
    request still gets its own answer, 4xx or forecast.

    A call that returns hands its worker straight to the oldest queued request (with the batch it
    sends) and wakes exactly the requests it answered: waking every waiter on each return was
    14 % of the predict process's CPU under 8 concurrent POSTs, in the one core they queue for.
    """

    def __init__(
        self,
        send: Callable[[list[_Pending]], list[tuple[dict[str, Any], float] | BaseException]],
        in_flight: int,
    ) -> None:
        self._send = send
        self._limit = in_flight  # SCORING_WORKERS: a positive integer (settings)
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []  # never waiting while a worker is free: a free worker takes it
        self._in_flight = 0

    def submit(self, bars: list[dict[str, Any]], request_id: str, max_batch: int) -> tuple[dict[str, Any], float]:
        """Score ``bars`` in the next call; returns (document, seconds of that call) or raises its error."""
        item = _Pending(bars, request_id)
        with self._lock:
            if self._in_flight < self._limit:
                self._in_flight += 1
                item.batch = [item]
            else:
                self._queue.append(item)
        if item.batch is None:
            item.woken.wait()  # until a call answers it, or a worker is handed to it with a batch to send
        if item.batch is not None:  # the batch starts with this request (the oldest queued), so it answers it
            self._fly(item.batch, max_batch)
        if isinstance(item.outcome, ApiError):
            raise dataclasses.replace(item.outcome)  # each request raises its own copy
        if isinstance(item.outcome, BaseException):
            raise item.outcome
        return item.outcome

    def _fly(self, batch: list[_Pending], max_batch: int) -> None:
        """Send ``batch``, record each outcome, hand the worker on to the oldest queued request, wake the answered."""
        try:
            outcomes = self._send(batch)
        except BaseException as exc:  # even an interrupt must release the queued requests
            self._release(batch, [exc] * len(batch), max_batch)
            if not isinstance(exc, Exception):
                raise
            return
        self._release(batch, outcomes, max_batch)

    def _release(self, batch: list[_Pending], outcomes: list, max_batch: int) -> None:
        """Answer ``batch``'s requests and pass the worker on: to the oldest queued request, else back."""
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
        with self._lock:
            if self._queue:
                nxt = self._queue[0]
                nxt.batch = self._take(max_batch)  # the worker stays in flight: it passes to nxt
            else:
                nxt = None
                self._in_flight -= 1
        for pending in batch:
            pending.woken.set()
        if nxt is not None:
            nxt.woken.set()

    def _take(self, max_batch: int) -> list[_Pending]:
        """The oldest queued requests that fit one call: at most ``max_batch``, and ``MAX_BATCH_BARS`` bars."""
        batch, bars = [self._queue[0]], len(self._queue[0].bars)
        for pending in self._queue[1:max_batch]:
            if bars + len(pending.bars) > MAX_BATCH_BARS:
                break
            batch.append(pending)
            bars += len(pending.bars)
        del self._queue[: len(batch)]
        return batch


@dataclass
class _Credential:
    value: str
    expires_at: float


class EndpointAuth:
    """Authorization header for the endpoint: none locally; key or token fetched with the identity."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._credential: _Credential | None = None

    def headers(self) -> dict[str, str]:
        """Headers to send; fetches the credential on first use or after expiry."""
        if self.settings.scoring_auth == "none":
            return {}
        with self._lock:
            if self._credential is None or self._credential.expires_at < time.time() + 60:
                self._credential = self._fetch()
            return {"Authorization": f"Bearer {self._credential.value}"}

    def invalidate(self) -> None:
        """Forget the credential (the endpoint answered 401)."""
        with self._lock:
            self._credential = None

    def _fetch(self) -> _Credential:
        keys = ml_client(self.settings).online_endpoints.get_keys(name=self.settings.aml_endpoint)
        if self.settings.scoring_auth == "key":
            return _Credential(keys.primary_key, time.time() + 3600)  # re-read hourly: keys can be rotated
        return _Credential(keys.access_token, float(keys.expiry_time_utc))


def valid_scoring_uri(uri: Any) -> str:
    """The endpoint's ``scoring_uri`` if it is an http(s) URL; ValueError otherwise (an endpoint being created)."""
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")) or len(uri) < 10:
        raise ValueError(f"the endpoint has no scoring URI yet ({uri!r})")
    return uri


class ScoringAddress:
    """Where scoring requests go: SCORING_URL or the local server as set, or the Azure ML endpoint's ``scoring_uri``.

    The endpoint's address is read on first use and read again after a connection failure (at most
    every :data:`ADDRESS_REFRESH_S`); a read that fails keeps the address already known.
    """

    def __init__(self, settings: Settings, lookup: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self._lookup = lookup or self._endpoint_scoring_uri
        self._lock = threading.Lock()
        self._url: str | None = None if settings.reads_scoring_uri else settings.scoring_endpoint
        self._read_at = -ADDRESS_REFRESH_S

    def url(self, request_id: str) -> str:
        """The address to call; reads the endpoint's on first use. Raises 503 if it cannot be read."""
        url = self._url
        if url is not None:
            return url
        with self._lock:
            if self._url is None:
                self._url = self._read(request_id)
            return self._url

    def refresh(self, request_id: str) -> None:
        """A connection failed: read the endpoint's address again, unless it was read moments ago."""
        if not self.settings.reads_scoring_uri:
            return
        with self._lock:
            if time.monotonic() - self._read_at < ADDRESS_REFRESH_S:
                return
            try:
                found = self._read(request_id)
            except ApiError:
                return  # keep what is known; the retry or the next request tries again
            if found != self._url:
                log.warning("request=%s the endpoint's scoring URI changed: %s -> %s", request_id, self._url, found)
            self._url = found

    def _read(self, request_id: str) -> str:
        self._read_at = time.monotonic()
        try:
            return valid_scoring_uri(self._lookup())
        except Exception as exc:  # ARM unreachable, the endpoint missing or still being created
            log.warning("request=%s cannot read the endpoint's scoring URI: %s", request_id, exc)
            raise ApiError(
                503, "endpoint_unavailable", "the scoring endpoint's address is unavailable; retry later", UNAVAILABLE
            ) from exc

    def _endpoint_scoring_uri(self) -> Any:
        return ml_client(self.settings).online_endpoints.get(self.settings.aml_endpoint).scoring_uri


class ScoringClient:
    """Calls the endpoint (POST ``{"bars": [...]}`` to score, GET for what it serves), maps failures to API errors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = ScoringAddress(settings)
        self.auth = EndpointAuth(settings)
        self._timeout = httpx.Timeout(settings.scoring_timeout_s, connect=CONNECT_TIMEOUT_S).as_dict()
        # httpx's pooled transport without the Client around it: redirects, cookies, auth flows and
        # event hooks cost 0.3 ms of CPU a call (a third of the call) and a scoring call needs none
        self.http = httpx.HTTPTransport(limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        self._served: Served | None = None
        self._served_lock = threading.Lock()
        self._batcher = _Batcher(self._send, settings.scoring_workers)  # one call in flight per worker
        self._unbatched_until = 0.0  # monotonic; an endpoint refused a batch: send one request per call

    def score(self, bars: list[dict[str, Any]], request_id: str) -> tuple[dict[str, Any], float]:
        """Score the bars; returns (response document, seconds spent in the endpoint call).

        Concurrent requests share calls (see :class:`_Batcher`) where the endpoint takes batches.
        """
        try:
            max_batch = self._max_batch()
            if max_batch > 1:
                scored, elapsed = self._batcher.submit(bars, request_id, max_batch)
            else:
                scored, elapsed = self._call("POST", orjson.dumps({"bars": bars}), request_id)
        except ApiError as err:
            if err.code == "not_enough_bars":  # the served model may have changed: ask again next time
                self.forget_served()
            raise
        if contradicts(self._served, scored):
            log.info("request=%s the endpoint now serves another model version; asking it again", request_id)
            self.forget_served()
        return scored, elapsed

    def score_many(
        self, requests: list[list[dict[str, Any]]], request_id: str
    ) -> list[tuple[dict[str, Any], float] | ApiError]:
        """Score several requests in as few calls as the endpoint takes (one while they fit a batch)."""
        max_batch = self._max_batch()
        outcomes: list[tuple[dict[str, Any], float] | ApiError] = []
        chunk: list[_Pending] = []
        bars = 0
        for i, request in enumerate(requests):
            if chunk and (len(chunk) >= max_batch or bars + len(request) > MAX_BATCH_BARS):
                outcomes.extend(self._send_chunk(chunk))
                chunk, bars = [], 0
            chunk.append(_Pending(request, f"{request_id}-{i}"))
            bars += len(request)
        if chunk:
            outcomes.extend(self._send_chunk(chunk))
        return outcomes

    def _send_chunk(self, chunk: list[_Pending]) -> list[tuple[dict[str, Any], float] | ApiError]:
        """One call for ``chunk``; an exception other than an ApiError is raised, not returned."""
        sent = self._send(chunk)
        for outcome in sent:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ApiError):
                raise outcome
        return sent  # type: ignore[return-value]

    def _max_batch(self) -> int:
        """Requests one call may carry: as the endpoint said; untried, a batch (a refusal switches it off)."""
        now = time.monotonic()
        if now < self._unbatched_until:
            return 1
        served = self._served
        return served.max_batch if is_current(served, now) else DEFAULT_MAX_BATCH

    def _send(self, batch: list[_Pending]) -> list[tuple[dict[str, Any], float] | BaseException]:
        """One call for the queued requests: the single-request format for one, a batch for more."""
        if len(batch) == 1:
            return [self._alone(batch[0])]
        lead = batch[0].request_id
        log.debug("request=%s scores a batch of %d: %s", lead, len(batch), ",".join(p.request_id for p in batch))
        try:
            doc, elapsed = self._call("POST", orjson.dumps({"requests": [{"bars": p.bars} for p in batch]}), lead)
        except ApiError as err:
            if err.status != 400:
                return [err] * len(batch)
            # an endpoint without batches (an older scoring script) calls the envelope malformed
            log.warning("request=%s the endpoint refused a batch (%s); sending one request per call", lead, err.code)
            self._unbatched_until = time.monotonic() + SERVED_TTL_S
            return [self._alone(p) for p in batch]
        responses = doc.get("responses")
        if not isinstance(responses, list) or len(responses) != len(batch):
            off = ApiError(503, "endpoint_error", "endpoint answered a batch off contract", UNAVAILABLE)
            return [off] * len(batch)
        return [self._answer_in_batch(response, elapsed) for response in responses]

    def _alone(self, pending: _Pending) -> tuple[dict[str, Any], float] | ApiError:
        try:
            return self._call("POST", orjson.dumps({"bars": pending.bars}), pending.request_id)
        except ApiError as err:
            return err

    @staticmethod
    def _answer_in_batch(response: Any, elapsed: float) -> tuple[dict[str, Any], float] | ApiError:
        status = response.get("status") if isinstance(response, dict) else None
        if not isinstance(status, int) or isinstance(status, bool):
            return ApiError(503, "endpoint_error", "endpoint answered a batch off contract", UNAVAILABLE)
        try:
            return endpoint_document(status, response.get("body"), parsed=True), elapsed
        except ApiError as err:
            return err

    def info(self, request_id: str) -> dict[str, Any]:
        """The endpoint's GET answer: ``{"model", "bars_needed", "skill", "max_batch"}``."""
        return self._call("GET", None, request_id)[0]

    def bars_needed(self, request_id: str) -> int:
        """Bars the served model needs for a forecast, asked of the endpoint at most once a minute.

        If the endpoint cannot say, ``PREDICT_HISTORY_BARS`` bars are sent instead.
        """
        served = self._served
        if not is_current(served, time.monotonic()):
            with self._served_lock:
                served = self._served
                if not is_current(served, time.monotonic()):
                    served = self._served = self._ask_served(request_id)
        return served.bars_needed

    @property
    def served(self) -> Served | None:
        """What the endpoint last said it serves (None until asked, or after it was forgotten)."""
        return self._served

    def forget_served(self) -> None:
        """Drop what the endpoint said it serves; the next GET forecast asks again."""
        self._served = None

    def _ask_served(self, request_id: str) -> Served:
        fallback = self.settings.predict_history_bars
        try:
            info = self.info(request_id)
        except ApiError as err:
            log.warning(
                "request=%s endpoint info failed (%s: %s); sending %d bars", request_id, err.code, err.message, fallback
            )
            return Served(None, fallback, time.monotonic() + SERVED_RETRY_S)
        served = served_from_info(info, fallback, time.monotonic() + SERVED_TTL_S)
        log.info("request=%s endpoint serves version %s, needs %d bars", request_id, served.version, served.bars_needed)
        return served

    def _call(self, method: str, body: bytes | None, request_id: str) -> tuple[dict[str, Any], float]:
        """One request with retries; returns (JSON document of a 200, seconds spent in the last attempt).

        A transport error, a 5xx or a first 401 (after dropping the credential) is tried again, with
        exponential backoff and jitter, at most ``SCORING_RETRIES`` more times and never past the
        time budget, so a GET never waits longer than ``forecasts`` allows for.
        """
        attempts = self.settings.scoring_retries + 1
        base = {"x-ms-client-request-id": request_id}
        if body is not None:
            base["Content-Type"] = "application/json"
        try:
            for attempt in stamina.retry_context(
                on=_RetryableError,
                attempts=attempts,
                timeout=attempts * attempt_budget_s(self.settings),
                wait_initial=0.05,
                wait_max=0.5,
                wait_jitter=0.05,
            ):
                with attempt:
                    return self._attempt(method, body, base, request_id, attempt.num, attempts)
        except _RetryableError:
            pass
        raise ApiError(503, "endpoint_unavailable", "the scoring endpoint is unavailable; retry later", UNAVAILABLE)

    def _attempt(
        self, method: str, body: bytes | None, base: dict[str, str], request_id: str, num: int, attempts: int
    ) -> tuple[dict[str, Any], float]:
        headers = {**base, **self.auth.headers()}
        url = self.address.url(request_id)
        started = time.perf_counter()
        try:
            extensions = {"timeout": self._timeout}
            request = httpx.Request(method, url, content=body, headers=headers, extensions=extensions)
            response = self.http.handle_request(request)
            try:
                content = response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            log.warning("request=%s scoring %s %d/%d failed: %s", request_id, method, num, attempts, exc)
            if isinstance(exc, httpx.ConnectError):  # nothing listens there any more: the address may have moved
                self.address.refresh(request_id)
            raise _RetryableError(str(exc)) from exc
        elapsed = time.perf_counter() - started
        if response.status_code == 401 and num < attempts:
            self.auth.invalidate()
            raise _RetryableError("401: credential refreshed")
        if response.status_code >= 500:
            log.warning("request=%s scoring %s %d/%d: HTTP %d", request_id, method, num, attempts, response.status_code)
            raise _RetryableError(f"HTTP {response.status_code}")
        return endpoint_document(response.status_code, content), elapsed


@cache
def scoring_client(settings: Settings) -> ScoringClient:
    """The process-wide client (one connection pool)."""
    return ScoringClient(settings)
