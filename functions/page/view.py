"""The live page's data: recent closes, the forecasts served for each minute, versions, ingest health.

Everything comes from what the bars container holds, read cheaply and cached: ``latest/`` for the
realized closes, ``ledger/served/`` of the last :data:`SERVED_HOURS` hours (a served blob is
append-only, so each is decoded once), ``ledger/skill.json`` for the live figures, the newest
``raw/`` blob for the ingest lag and the ``deadletter/`` blobs of the last hour. The registry's
champion and newest version (with their decision tags) come from the ML backend, best effort.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from functions.shared.ledger import SERVED_PREFIX, ServedRecord, decode_served, read_skill
from functions.shared.rebuild import CorruptBlobError, decode_bars
from functions.shared.storage import download
from functions.train_trigger.ports import ModelSnapshot
from functions.train_trigger.report import DECISION, MODEL_RMSE, PERSISTENCE_RMSE

log = logging.getLogger(__name__)
MINUTES = 120  # the minutes of closes and forecasts shown per symbol
SERVED_HOURS = 3  # hour partitions of ledger/served/ read (the current one and those before)
VIEW_TTL_S = 3.0  # one view serves every poll within this
REGISTRY_TTL_S = 60.0  # the registry is asked at most this often
DEADLETTER_WINDOW_S = 3600


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def served_prefixes(now: float, hours: int = SERVED_HOURS) -> list[str]:
    """The ``ledger/served/`` hour partitions of the last ``hours`` hours, newest first."""
    at = dt.datetime.fromtimestamp(now, dt.UTC).replace(minute=0, second=0, microsecond=0)
    return [
        f"{SERVED_PREFIX}date={t:%Y-%m-%d}/hour={t:%H}/" for t in (at - dt.timedelta(hours=h) for h in range(hours))
    ]


def symbol_series(
    closes: Mapping[int, float], served: Iterable[ServedRecord], minutes: int = MINUTES
) -> dict[str, Any]:
    """Aligned per-minute series of one symbol: closes, the newest forecast per target minute and its band.

    The x axis is every minute of the last ``minutes`` stored bars and the forecast targets after
    the first of them; a version change is where the forecasting version differs from the minute before.
    """
    shown = sorted(closes)[-minutes:]
    start = shown[0] if shown else 0
    chosen: dict[int, ServedRecord] = {}
    for record in served:
        if record.target_ts >= start:
            kept = chosen.get(record.target_ts)
            if kept is None or record.served_at_ms >= kept.served_at_ms:
                chosen[record.target_ts] = record
    x = sorted(set(shown) | set(chosen))
    changes, previous = [], None
    for ts in x:
        record = chosen.get(ts)
        if record is not None:
            if previous is not None and record.version != previous:
                changes.append({"ts": ts, "from": previous, "to": record.version})
            previous = record.version
    return {
        "x": x,
        "close": [closes.get(ts) for ts in x],
        "forecast": [chosen[ts].predicted_close if ts in chosen else None for ts in x],
        "low": [chosen[ts].interval_low if ts in chosen else None for ts in x],
        "high": [chosen[ts].interval_high if ts in chosen else None for ts in x],
        "version": [chosen[ts].version if ts in chosen else None for ts in x],
        "changes": changes,
        "last_close": closes[shown[-1]] if shown else None,
        "last_ts": shown[-1] if shown else None,
        "forecasts": len(chosen),
    }


def _decision_ratio(tags: Mapping[str, str]) -> float | None:
    """Decision-slice RMSE over persistence's, from a version's tags; None where either is missing."""
    try:
        model, persistence = float(tags[MODEL_RMSE]), float(tags[PERSISTENCE_RMSE])
    except (KeyError, TypeError, ValueError):
        return None
    return model / persistence if persistence > 0 else None


def version_rows(
    skill: Mapping[str, Any], registry: ModelSnapshot | None, serving: Mapping[str, str], kinds: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The versions table: every version the registry, the live figures or the ledger name, newest first.

    ``skill`` is ``ledger/skill.json``'s ``versions``; ``serving`` maps a symbol to the version of its
    newest served forecast; ``kinds`` the kind each served version reported.
    """
    tagged = {}
    if registry is not None:
        for mv in (registry.newest, registry.champion):
            if mv is not None:
                tagged[mv.version] = mv.tags
    champion = registry.champion.version if registry is not None and registry.champion is not None else None
    names = set(skill) | set(tagged) | set(kinds)
    rows = []
    for version in sorted(names, key=lambda v: (not v.isdigit(), -int(v) if v.isdigit() else 0, v)):
        live = skill.get(version) or {}
        tags = tagged.get(version, {})
        rows.append(
            {
                "version": version,
                "kind": live.get("kind") or kinds.get(version) or tags.get("kind"),
                "decision": tags.get(DECISION),
                "decision_ratio": _decision_ratio(tags),
                "live_ratio": live.get("ratio_to_persistence"),
                "live_p": live.get("p_value"),
                "live_n": live.get("n"),
                "coverage": live.get("coverage"),
                "champion": version == champion,
                "serving": sorted(s for s, v in serving.items() if v == version),
            }
        )
    return rows


@dataclass
class PageData:
    """Builds the page's JSON document from the bars container, caching what it read."""

    container: ContainerClient
    registry: Callable[[], ModelSnapshot] | None = None
    clock: Callable[[], float] = time.time
    _served: dict[str, list[ServedRecord]] = field(default_factory=dict)
    _bars: dict[str, tuple[str, dict[int, float]]] = field(default_factory=dict)
    _skill: tuple[str | None, dict[str, Any], str | None] = (None, {}, None)
    _snapshot: tuple[float, ModelSnapshot | None] = (float("-inf"), None)
    _view: tuple[float, dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def view(self, request_id: str) -> dict[str, Any]:
        """The page's document, built at most once per :data:`VIEW_TTL_S` (concurrent polls share it)."""
        with self._lock:
            now = self.clock()
            if self._view is None or now - self._view[0] >= VIEW_TTL_S:
                self._view = (now, self._build(now, request_id))
            return self._view[1]

    def _served_records(self, now: float, request_id: str) -> list[ServedRecord]:
        names = [b.name for p in served_prefixes(now) for b in self.container.list_blobs(name_starts_with=p)]
        for name in names:
            if name not in self._served:
                try:
                    self._served[name] = decode_served(self.container.download_blob(name).readall())
                except ValueError as exc:
                    log.warning("request=%s page skips %s: %s", request_id, name, exc)
                    self._served[name] = []
        for gone in set(self._served) - set(names):
            del self._served[gone]
        return [record for name in names for record in self._served[name]]

    def _closes(self, symbol: str, request_id: str) -> dict[int, float]:
        """A symbol's stored closes by minute; a blob still at the ETag read before is not downloaded (304)."""
        blob = self.container.get_blob_client(f"latest/{symbol}.parquet")
        known = self._bars.get(symbol)
        try:
            downloader = download(blob, None if known is None else known[0])
            data = downloader.readall()
        except ResourceModifiedError as exc:  # the SDK's type for a 304
            if known is None or exc.status_code != 304:
                raise
            return known[1]
        except ResourceNotFoundError:
            return {}
        try:
            table = decode_bars(data, symbol)
        except CorruptBlobError as exc:  # predict and ingest repair it; the page only reads
            log.warning("request=%s page cannot read latest/%s: %s", request_id, symbol, exc)
            return known[1] if known else {}
        stamps = [int(t.timestamp()) for t in table.column("ts").to_pylist()]
        closes = dict(zip(stamps, (float(c) for c in table.column("close").to_pylist()), strict=True))
        self._bars[symbol] = (downloader.properties.etag, closes)
        return closes

    def _live(self) -> tuple[dict[str, Any], str | None]:
        etag, versions, updated = self._skill
        stored = read_skill(self.container, etag)
        if not stored.unchanged:
            document = stored.document
            versions = {} if document is None else {v: vars(f) for v, f in document.versions.items()}
            updated = None if document is None else document.updated_at
            self._skill = (stored.etag, versions, updated)
        return versions, updated

    def _registry(self, now: float, request_id: str) -> ModelSnapshot | None:
        if self.registry is None:
            return None
        asked, snapshot = self._snapshot
        if now - asked >= REGISTRY_TTL_S:
            try:
                snapshot = self.registry()
            except Exception as exc:  # the page shows what it has; the registry is optional to it
                log.warning("request=%s page cannot read the registry: %s: %s", request_id, type(exc).__name__, exc)
            self._snapshot = (now, snapshot)
        return snapshot

    def _ingest(self, now: float) -> dict[str, Any]:
        today = dt.datetime.fromtimestamp(now, dt.UTC)
        newest = None
        for hours in range(SERVED_HOURS):
            at = today - dt.timedelta(hours=hours)
            stamps = [b.last_modified for b in self.container.list_blobs(f"raw/date={at:%Y-%m-%d}/hour={at:%H}/")]
            if stamps:
                newest = max(stamps).timestamp()
                break
        letters = 0
        for day in sorted({today.date(), (today - dt.timedelta(seconds=DEADLETTER_WINDOW_S)).date()}):
            for blob in self.container.list_blobs(f"deadletter/date={day:%Y-%m-%d}/"):
                letters += now - blob.last_modified.timestamp() <= DEADLETTER_WINDOW_S
        return {
            "newest_raw": _iso(newest),
            "lag_s": None if newest is None else max(0.0, now - newest),
            "deadletters_last_hour": letters,
        }

    def _build(self, now: float, request_id: str) -> dict[str, Any]:
        started = time.perf_counter()
        records = self._served_records(now, request_id)
        by_symbol: dict[str, list[ServedRecord]] = {}
        for record in records:
            by_symbol.setdefault(record.symbol, []).append(record)
        symbols = sorted(
            {b.name.removeprefix("latest/").removesuffix(".parquet") for b in self.container.list_blobs("latest/")}
        )
        series = {s: symbol_series(self._closes(s, request_id), by_symbol.get(s, [])) for s in symbols}
        serving = {s: max(rs, key=lambda r: (r.served_at_ms, r.as_of)).version for s, rs in by_symbol.items()}
        kinds = {r.version: r.kind for r in records}
        live, updated = self._live()
        snapshot = self._registry(now, request_id)
        champion = snapshot.champion.version if snapshot is not None and snapshot.champion is not None else None
        doc = {
            "now": _iso(now),
            "symbols": series,
            "versions": version_rows(live, snapshot, serving, kinds),
            "champion": champion,
            "serving": serving,
            "live_updated_at": updated,
            "ingest": self._ingest(now),
        }
        log.info(
            "request=%s page view: %d symbols, %d served records, %.1f ms",
            request_id,
            len(symbols),
            len(records),
            (time.perf_counter() - started) * 1000,
        )
        return doc
