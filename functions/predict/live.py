"""Predict's side of the live skill ledger: record each forecast served, and know the live figures.

Recording costs a request one lock and one append: the forecast goes to an in-process buffer, and
a background thread (one per process, started by the first use) writes the buffer as one
``ledger/served/…`` blob every :data:`FLUSH_S` seconds. The same thread reads
``ledger/skill.json`` (by ETag) every :data:`LIVE_REFRESH_S` seconds, so a request reads the live
figures from memory and never waits for storage. Nothing here may fail or slow a forecast: a
failed flush keeps its records for the next one, a failed read keeps the figures known, and a
crash loses at most the unflushed buffer (at most :data:`FLUSH_S` seconds of forecasts).
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from azure.storage.blob import ContainerClient

from functions.settings import Settings
from functions.shared.ledger import ServedRecord, encode_served, read_skill, served_blob_name
from functions.shared.storage import bars_container

log = logging.getLogger(__name__)
FLUSH_S = 15.0  # the most forecasts a crash loses, in seconds of serving
LIVE_REFRESH_S = 60.0  # how stale the live figures in an answer may be, beyond the timer's 15 minutes
MAX_BUFFER = 50_000  # records held while storage is down; past it new ones are dropped (and counted)
RECENT_KEYS = 16_384  # keys recorded lately: a cached GET forecast answered again is not buffered again
CLOSE_WAIT_S = 5.0  # at exit, how long the last flush may take

# the values a request hands over, converted on the background thread
Row = tuple[str, str, str, str, str, float, float, Any, int, str, str]


def _seconds(value: str | int) -> int:
    """Unix seconds of an ISO 8601 time (UTC if it has no offset) or of unix seconds."""
    if isinstance(value, int):
        return value
    parsed = dt.datetime.fromisoformat(value)
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp())


def to_record(row: Row) -> ServedRecord:
    """The served record of a buffered row; ValueError for a forecast off the contract."""
    symbol, version, kind, as_of, target_ts, predicted, last_close, interval, served_at_ms, source, request_id = row
    level = low = high = None
    if isinstance(interval, dict):
        level, low, high = (None if interval.get(k) is None else float(interval[k]) for k in ("level", "low", "high"))
    return ServedRecord(
        symbol,
        version,
        kind,
        _seconds(as_of),
        _seconds(target_ts),
        float(predicted),
        float(last_close),
        level,
        low,
        high,
        served_at_ms,
        source,
        request_id,
    ).check()


class LedgerWorker:
    """The process's buffer of served forecasts and its copy of the live figures, both kept by one thread."""

    def __init__(
        self,
        container: Callable[[], ContainerClient],
        flush_s: float = FLUSH_S,
        refresh_s: float = LIVE_REFRESH_S,
        instance: str | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._container = container
        self.flush_s = flush_s
        self.refresh_s = refresh_s
        self.instance = instance or uuid.uuid4().hex[:12]  # one writer per process: blob names never collide
        self._clock = clock
        self._lock = threading.Lock()
        self._buffer: list[Row] = []
        self._recent: collections.OrderedDict[tuple[str, str, str], None] = collections.OrderedDict()
        self._seq = 0
        self.dropped = 0  # records refused because the buffer was full
        self._dropped_logged = 0
        self.flushed = 0  # records written
        # (generation, API objects by version): replaced whole, so a request reads it without a lock
        self._live: tuple[int, Mapping[str, dict[str, Any]]] = (0, {})
        self._etag: str | None = None
        self._refreshed_at = -float("inf")
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._io_lock = threading.Lock()  # one flush or refresh at a time (the thread, a test, the exit hook)

    # ---- on the request thread: memory only ----

    def record(self, doc: Mapping[str, Any], source: str, request_id: str) -> None:
        """Buffer a forecast answer (the API document); one without a target minute or a version is not scored."""
        target = doc.get("target_ts")
        model = doc["model"]
        version = model["version"]
        if target is None or version == "unknown":
            return
        key = (doc["symbol"], doc["as_of"], version)
        row = (
            doc["symbol"],
            version,
            model["kind"],
            doc["as_of"],
            target,
            doc["predicted_close"],
            doc["last_close"],
            doc["interval"],
            time.time_ns() // 1_000_000,
            source,
            request_id,
        )
        with self._lock:
            if key in self._recent:
                return
            if len(self._buffer) >= MAX_BUFFER:
                self.dropped += 1
                return
            self._recent[key] = None
            if len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)
            self._buffer.append(row)
        if self._thread is None:
            self._start()

    def live(self, version: str) -> tuple[int, dict[str, Any] | None]:
        """(generation, the version's ``skill.live`` object or None); the generation changes with the figures."""
        if self._thread is None:
            self._start()
        generation, figures = self._live
        return generation, figures.get(version)

    # ---- on the background thread (or called directly) ----

    def flush(self) -> int:
        """Write the buffered forecasts as one blob; returns how many. A failure keeps them for the next flush."""
        with self._io_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
                dropped, self._dropped_logged = self.dropped - self._dropped_logged, self.dropped
            if dropped:
                log.warning("ledger buffer full: %d forecasts were not recorded since the last flush", dropped)
            if not rows:
                return 0
            records, kept_rows, refused = [], [], []
            for row in rows:
                try:
                    records.append(to_record(row))
                except (ValueError, TypeError) as exc:  # an endpoint answering off contract: not scorable
                    refused.append((row[-1], exc))
                    continue
                kept_rows.append(row)
            if refused:  # one line per flush, however many
                request_id, exc = refused[0]
                log.warning(
                    "%d forecasts not recorded in the ledger, e.g. request=%s: %s", len(refused), request_id, exc
                )
            if not records:
                return 0
            self._seq += 1
            name = served_blob_name(self._clock(), self.instance, self._seq)
            try:
                self._container().upload_blob(name, encode_served(records), overwrite=False)
            except Exception as exc:  # kept; a blob written whose answer was lost is deduplicated by key
                with self._lock:
                    room = MAX_BUFFER - len(self._buffer)
                    kept = kept_rows[-room:] if room > 0 else []
                    self.dropped += len(kept_rows) - len(kept)
                    self._buffer[:0] = kept
                log.warning(
                    "ledger flush=%s of %d records failed (%s: %s); kept for the next flush",
                    name,
                    len(kept_rows),
                    type(exc).__name__,
                    exc,
                )
                return 0
            self.flushed += len(records)
            log.info("ledger flush=%s wrote %d records", name, len(records))
            return len(records)

    def refresh(self) -> bool:
        """Read ``ledger/skill.json`` (by ETag); returns whether the figures changed. A failure keeps them."""
        with self._io_lock:
            self._refreshed_at = time.monotonic()
            try:
                stored = read_skill(self._container(), self._etag)
            except Exception as exc:
                log.warning("ledger refresh of the live figures failed (%s: %s); kept", type(exc).__name__, exc)
                return False
            if stored.unchanged:
                return False
            document = stored.document
            figures = (
                {}
                if document is None
                else {v: f.api(document.updated_at) for v, f in document.versions.items() if f.n > 0}
            )
            self._etag = stored.etag
            self._live = (self._live[0] + 1, figures)
            return True

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._refreshed_at >= self.refresh_s:
                self.refresh()
            if now >= next_flush:
                self.flush()
                next_flush = now + self.flush_s
            due = min(next_flush, self._refreshed_at + self.refresh_s) - time.monotonic()
            self._wake.wait(max(0.05, due))
            self._wake.clear()
        self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"ledger-{self.instance}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Stop the thread after a last flush (waits at most ``timeout``); records after it are flushed by none."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


_workers: dict[tuple[str | None, str | None, str], LedgerWorker] = {}
_workers_lock = threading.Lock()


def ledger_worker(settings: Settings) -> LedgerWorker:
    """The process's worker for the settings' bars container (one per container, whatever else changes)."""
    key = (settings.bars_storage_connection_string, settings.bars_storage_blob_service_uri, settings.bars_container)
    worker = _workers.get(key)
    if worker is None:
        with _workers_lock:
            worker = _workers.get(key)
            if worker is None:
                worker = _workers[key] = LedgerWorker(lambda: bars_container(settings))
    return worker


def close_workers(timeout: float = CLOSE_WAIT_S) -> None:
    """Flush and stop every worker of the process, and forget them (tests; the exit hook flushes too)."""
    with _workers_lock:
        workers = list(_workers.values())
        _workers.clear()
    for worker in workers:
        worker.close(timeout)
