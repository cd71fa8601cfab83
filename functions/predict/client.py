"""Client of the scoring endpoint: one pooled httpx client per process, timeouts, bounded retries.

In Azure the endpoint's key (or Azure ML token) is fetched with the app's managed identity,
cached, and fetched again when it expires or the endpoint answers 401; it is never an app setting.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import orjson

from functions.predict.requests import ApiError
from functions.settings import Settings

log = logging.getLogger(__name__)
UNAVAILABLE = (("Retry-After", "5"),)


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
        from functions.train_trigger.aml_jobs import ml_client

        keys = ml_client(self.settings).online_endpoints.get_keys(name=self.settings.aml_endpoint)
        if self.settings.scoring_auth == "key":
            return _Credential(keys.primary_key, time.time() + 3600)  # re-read hourly: keys can be rotated
        return _Credential(keys.access_token, float(keys.expiry_time_utc))


class ScoringClient:
    """POSTs ``{"bars": [...]}`` to the endpoint and maps failures to API errors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.scoring_endpoint
        self.auth = EndpointAuth(settings)
        timeout = httpx.Timeout(settings.scoring_timeout_s, connect=1.0)
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))

    def score(self, bars: list[dict[str, Any]], request_id: str) -> tuple[dict[str, Any], float]:
        """Score the bars; returns (response document, seconds spent in the endpoint call)."""
        body = orjson.dumps({"bars": bars})
        attempts = self.settings.scoring_retries + 1
        for attempt in range(1, attempts + 1):
            headers = {"Content-Type": "application/json", "x-ms-client-request-id": request_id, **self.auth.headers()}
            started = time.perf_counter()
            try:
                response = self.http.post(self.url, content=body, headers=headers)
            except httpx.TransportError as exc:
                log.warning("request=%s scoring attempt %d/%d failed: %s", request_id, attempt, attempts, exc)
                self._backoff(attempt, attempts)
                continue
            elapsed = time.perf_counter() - started
            if response.status_code == 401 and attempt < attempts:
                self.auth.invalidate()
                continue
            if response.status_code >= 500:
                log.warning(
                    "request=%s scoring attempt %d/%d: HTTP %d", request_id, attempt, attempts, response.status_code
                )
                self._backoff(attempt, attempts)
                continue
            return self._result(response), elapsed
        raise ApiError(503, "endpoint_unavailable", "the scoring endpoint is unavailable; retry later", UNAVAILABLE)

    @staticmethod
    def _backoff(attempt: int, attempts: int) -> None:
        if attempt < attempts:
            time.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))

    @staticmethod
    def _result(response: httpx.Response) -> dict[str, Any]:
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ApiError(
                503, "endpoint_error", f"endpoint answered {response.status_code} without JSON", UNAVAILABLE
            ) from None
        if response.status_code == 200:
            return doc
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        code, message = (
            error.get("code", "endpoint_error"),
            error.get("message", f"endpoint answered {response.status_code}"),
        )
        if response.status_code == 422:
            raise ApiError(422, code, message)
        if response.status_code in (400, 413):
            raise ApiError(response.status_code, code, message)
        raise ApiError(503, "endpoint_error", message, UNAVAILABLE)


@cache
def scoring_client(settings: Settings) -> ScoringClient:
    """The process-wide client (one connection pool)."""
    return ScoringClient(settings)
