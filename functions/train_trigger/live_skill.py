"""The timer's third duty: score the forecasts served against the bars that followed, per model version.

Each tick folds the ``ledger/served/`` blobs written since the last into ``ledger/state.json`` and
publishes the figures as ``ledger/skill.json`` (names in :mod:`functions.shared.ledger`):

- a served record is scored once its target minute's true bar is in ``latest/<SYMBOL>.parquet``
  and settled (a later bar exists, or :data:`SETTLE_S` has passed: the last bar of a sync is often
  provisional); the model's error is log(predicted / actual close), persistence's
  log(last close / actual close) for the close the forecast was made from;
- scored records are added to their version's :class:`~functions.shared.skill.LossSums` in target
  order, so each is counted once, and their keys are remembered while they could come again;
- the sums, the counted keys, the records still waiting and the names of the folded served blobs
  are one document, replaced only if it still has the ETag read: a tick that dies before the write
  changed nothing, and the next one folds the same blobs into the same sums; a tick that loses the
  race to another reads again. Nothing is counted unless its score is written in the same write.

``raw/`` is not read: its partitions are by write time, so a minute's bar can be anywhere in it,
and a served forecast's target is in ``latest/`` (the last 512 bars) long before a tick 15 minutes
on; a record whose target left the window unscored is dropped and counted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
import pyarrow.compute as pc
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobPrefix, ContainerClient

from functions import telemetry
from functions.shared.latest import read_latest
from functions.shared.ledger import (
    SERVED_PREFIX,
    SKILL_BLOB,
    STATE_BLOB,
    LiveFigures,
    ServedRecord,
    SkillDocument,
    decode_served,
    encode_skill,
    served_hour,
)
from functions.shared.skill import LossSums

log = logging.getLogger(__name__)

SETTLE_S = 3600  # a target bar with no later bar is taken as final this long after its minute
EXPIRE_S = 4 * 86_400  # a target minute with no bar this long after it is given up (a long weekend passes)
MAX_DRIFT = 0.05  # |log(served last close / stored close at as_of)| above this: not the stored history
MAX_PENDING = 20_000  # records waiting for their target; past it the oldest targets are dropped
MAX_BLOBS_PER_TICK = 5_000  # served blobs folded per tick; the rest wait for the next
HOUR_OPEN_S = 3_600  # a served hour may receive blobs this long after it ends (a slow upload, clock skew)
CURRENT_S = 3_600  # versions served this recently get their gauges each tick
MAX_ATTEMPTS = 3  # state writes lost to a concurrent tick before the duty fails
DOWNLOAD_THREADS = 8
QUARANTINE_PREFIX = "ledger/quarantine/"
STATE_SCHEMA = 1
PERSISTENCE = "persistence"

# a conditional write that lost: another tick wrote the state in between
_CONFLICTS = (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError)


class LedgerConflictError(RuntimeError):
    """Every attempt to write the state lost to a concurrent writer."""


# ---- the state ----


@dataclass(frozen=True)
class VersionLedger:
    """What is known of one version's live forecasts."""

    kind: str
    sums: LossSums = field(default_factory=LossSums)
    first_target: int | None = None
    last_target: int | None = None
    last_served_at_ms: int | None = None
    horizon: int = 1  # minutes from as_of to target of the version's forecasts (the HLN correction's h)

    def figures(self, version: str) -> LiveFigures:
        """The live figures of these sums (no p-values for persistence itself, as on its decision slice)."""
        test = self.sums.dm(self.horizon)
        trained = self.kind != PERSISTENCE
        return LiveFigures(
            version,
            self.kind,
            self.sums.n,
            self.sums.ratio(),
            test.p_better if trained else None,
            test.p_worse if trained else None,
            self.sums.coverage(),
            self.sums.interval_n,
            self.first_target,
            self.last_target,
            self.last_served_at_ms,
        )


@dataclass(frozen=True)
class LedgerState:
    """``ledger/state.json``: running sums, counted keys, waiting records, and which served blobs are folded."""

    open_from: str | None = None  # "YYYY-MM-DDTHH": served blobs of earlier hours are all folded
    folded: frozenset[str] = frozenset()  # the folded served blobs of hours from open_from on
    pending: tuple[ServedRecord, ...] = ()
    counted: Mapping[str, Mapping[str, frozenset[int]]] = field(default_factory=dict)  # symbol → version → as_of
    versions: Mapping[str, VersionLedger] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)  # records given up, by reason, ever
    updated_at: str | None = None

    def skill(self, updated_at: str) -> SkillDocument:
        """The live figures of every version scored."""
        return SkillDocument(updated_at, {v: ledger.figures(v) for v, ledger in self.versions.items()})


def encode_state(state: LedgerState) -> bytes:
    """The bytes of ``ledger/state.json``."""
    return orjson.dumps(
        {
            "schema": STATE_SCHEMA,
            "open_from": state.open_from,
            "folded": sorted(state.folded),
            "pending": [record.as_row() for record in state.pending],
            "counted": {
                symbol: {version: sorted(keys) for version, keys in sorted(by_version.items())}
                for symbol, by_version in sorted(state.counted.items())
            },
            "versions": {
                version: {
                    "kind": ledger.kind,
                    "sums": ledger.sums.as_json(),
                    "first_target": ledger.first_target,
                    "last_target": ledger.last_target,
                    "last_served_at_ms": ledger.last_served_at_ms,
                    "horizon": ledger.horizon,
                }
                for version, ledger in sorted(state.versions.items())
            },
            "dropped": dict(sorted(state.dropped.items())),
            "updated_at": state.updated_at,
        }
    )


def _int_or_none(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer or null")
    return value


def decode_state(data: bytes) -> LedgerState:
    """Parse ``ledger/state.json``; ValueError naming what is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
        raise ValueError(f"not a ledger state of schema {STATE_SCHEMA}")
    open_from, folded, pending = doc.get("open_from"), doc.get("folded"), doc.get("pending")
    counted, versions, dropped = doc.get("counted"), doc.get("versions"), doc.get("dropped")
    if open_from is not None and not isinstance(open_from, str):
        raise ValueError("open_from must be an hour or null")
    if not isinstance(folded, list) or not all(isinstance(name, str) for name in folded):
        raise ValueError("folded must be a list of blob names")
    if not isinstance(pending, list) or not isinstance(counted, dict) or not isinstance(versions, dict):
        raise ValueError("pending must be a list, counted and versions objects")
    if not isinstance(dropped, dict) or not all(isinstance(v, int) for v in dropped.values()):
        raise ValueError("dropped must map reasons to counts")
    keys: dict[str, dict[str, frozenset[int]]] = {}
    for symbol, by_version in counted.items():
        if not isinstance(by_version, dict):
            raise ValueError(f"counted[{symbol!r}] must be an object")
        for version, as_ofs in by_version.items():
            if not isinstance(as_ofs, list) or not all(isinstance(t, int) for t in as_ofs):
                raise ValueError(f"counted[{symbol!r}][{version!r}] must be a list of times")
            keys.setdefault(symbol, {})[version] = frozenset(as_ofs)
    ledgers = {}
    for version, entry in versions.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("kind"), str)
            or not isinstance(entry.get("sums"), dict)
        ):
            raise ValueError(f"versions[{version!r}] needs a kind and sums")
        ledgers[version] = VersionLedger(
            entry["kind"],
            LossSums.from_json(entry["sums"]),
            _int_or_none(entry.get("first_target"), "first_target"),
            _int_or_none(entry.get("last_target"), "last_target"),
            _int_or_none(entry.get("last_served_at_ms"), "last_served_at_ms"),
            _int_or_none(entry.get("horizon"), "horizon") or 1,
        )
    updated_at = doc.get("updated_at")
    return LedgerState(
        open_from,
        frozenset(folded),
        tuple(ServedRecord.from_row(row) for row in pending),
        keys,
        ledgers,
        dict(dropped),
        updated_at if isinstance(updated_at, str) else None,
    )


# ---- scoring (pure) ----


@dataclass(frozen=True)
class SymbolBars:
    """A symbol's true closes as ``latest/`` holds them: by minute, with the window's first and last minute."""

    closes: Mapping[int, float]
    first_ts: int
    last_ts: int

    @classmethod
    def of(cls, closes: Mapping[int, float]) -> SymbolBars | None:
        """The window of ``closes`` (unix seconds → close); None when there is none."""
        return cls(dict(closes), min(closes), max(closes)) if closes else None


@dataclass(frozen=True)
class Resolution:
    """What a served record comes to now: ``scored`` (with the errors), ``pending``, or a reason it was dropped."""

    outcome: str
    model_error: float | None = None  # log(predicted close / actual close)
    persistence_error: float | None = None  # log(last close / actual close)
    covered: bool | None = None  # the interval held the actual close (None: no interval)


PENDING = Resolution("pending")


def resolve(record: ServedRecord, bars: SymbolBars | None, now_s: int) -> Resolution:
    """Score a served record against its symbol's true bars, or say why it must wait or be dropped.

    Scored once the target bar is stored and settled (a later bar, or :data:`SETTLE_S` since the
    minute). Dropped: ``outside_window`` (as_of is older than ``latest/`` holds),
    ``not_stored_history`` (as_of is a minute ``latest/`` covers, but the forecast's last close is
    not the stored close of that minute within :data:`MAX_DRIFT`: bars a client POSTed; known as
    soon as as_of is stored, so such records never wait), ``no_target_bar`` (later minutes are
    stored but not the target: no trade in it), ``expired`` (no target bar :data:`EXPIRE_S` after
    it, e.g. a symbol never stored).
    """
    target = record.target_ts
    if bars is None:
        return Resolution("expired") if now_s - target > EXPIRE_S else PENDING
    if record.as_of < bars.first_ts:
        return Resolution("outside_window")
    if record.as_of <= bars.last_ts:
        stored = bars.closes.get(record.as_of)
        if stored is None or abs(math.log(record.last_close / stored)) > MAX_DRIFT:
            return Resolution("not_stored_history")
    actual = bars.closes.get(target)
    if actual is None:
        if bars.last_ts > target:
            return Resolution("no_target_bar")
        return Resolution("expired") if now_s - target > EXPIRE_S else PENDING
    if bars.last_ts == target and now_s - target < SETTLE_S:
        return PENDING  # the newest bar may be a sync's provisional one
    covered = None
    if record.interval_low is not None and record.interval_high is not None:
        covered = record.interval_low <= actual <= record.interval_high
    return Resolution(
        "scored", math.log(record.predicted_close / actual), math.log(record.last_close / actual), covered
    )


def _preferred(records: Iterable[ServedRecord]) -> dict[tuple[str, int, str], ServedRecord]:
    """One record per key: the first served (ties broken on the values), whatever order they came in."""
    chosen: dict[tuple[str, int, str], ServedRecord] = {}
    for record in records:
        rank = (record.served_at_ms, record.source, record.request_id or "", record.predicted_close)
        held = chosen.get(record.key)
        if held is None or rank < (held.served_at_ms, held.source, held.request_id or "", held.predicted_close):
            chosen[record.key] = record
    return chosen


@dataclass(frozen=True)
class FoldReport:
    """What one fold did."""

    scored: Mapping[str, int]  # by version
    dropped: Mapping[str, int]  # by reason
    duplicates: int
    pending: int


_Scored = tuple[ServedRecord, Resolution]


def fold(
    state: LedgerState, served: Sequence[ServedRecord], bars: Mapping[str, SymbolBars | None], now_s: int
) -> tuple[LedgerState, FoldReport]:
    """The state with ``served`` and the waiting records resolved against ``bars`` (by symbol), and a report.

    Pure: the same state, records and bars give the same state. A key counted before, or seen
    twice, is counted once; scored records join their version's sums in (target, symbol) order.
    """
    chosen = _preferred([*state.pending, *served])
    versions = _with_servings(state.versions, chosen.values())
    scored, waiting, dropped, counted_before = _resolve_uncounted(chosen, state.counted, bars, now_s)
    duplicates = len(state.pending) + len(served) - len(chosen) + counted_before
    scored.sort(key=lambda pair: (pair[0].target_ts, pair[0].symbol, pair[0].version))
    by_version: dict[str, list[_Scored]] = {}
    for record, resolution in scored:
        by_version.setdefault(record.version, []).append((record, resolution))
    for version, pairs in by_version.items():
        versions[version] = _with_scores(versions[version], pairs)
    counted = _counted_after(state.counted, [record for record, _ in scored], bars)
    waiting, overflow = _still_waiting(waiting)
    if overflow:
        dropped["overflow"] += overflow
    total = Counter(state.dropped)
    total.update(dropped)
    new = LedgerState(state.open_from, state.folded, waiting, counted, versions, dict(total), state.updated_at)
    report = FoldReport({v: len(p) for v, p in by_version.items()}, dict(dropped), duplicates, len(waiting))
    return new, report


def _with_servings(versions: Mapping[str, VersionLedger], records: Iterable[ServedRecord]) -> dict[str, VersionLedger]:
    """The ledgers with an entry for every version served in ``records`` and its newest serving time."""
    ledgers = dict(versions)
    for record in records:
        horizon = max(1, (record.target_ts - record.as_of) // 60)
        ledger = ledgers.get(record.version) or VersionLedger(record.kind, horizon=horizon)
        if ledger.last_served_at_ms is None or record.served_at_ms > ledger.last_served_at_ms:
            ledger = dataclasses.replace(ledger, last_served_at_ms=record.served_at_ms)
        ledgers[record.version] = ledger
    return ledgers


def _resolve_uncounted(
    chosen: Mapping[tuple[str, int, str], ServedRecord],
    counted: Mapping[str, Mapping[str, frozenset[int]]],
    bars: Mapping[str, SymbolBars | None],
    now_s: int,
) -> tuple[list[_Scored], list[ServedRecord], Counter[str], int]:
    """Resolve the records not counted before: (scored, still pending, dropped by reason, counted before)."""
    scored: list[_Scored] = []
    waiting: list[ServedRecord] = []
    dropped: Counter[str] = Counter()
    counted_before = 0
    for key, record in chosen.items():
        if key[1] in counted.get(record.symbol, {}).get(record.version, ()):
            counted_before += 1
            continue
        resolution = resolve(record, bars.get(record.symbol), now_s)
        if resolution.outcome == "scored":
            scored.append((record, resolution))
        elif resolution.outcome == "pending":
            waiting.append(record)
        else:
            dropped[resolution.outcome] += 1
    return scored, waiting, dropped, counted_before


def _with_scores(ledger: VersionLedger, pairs: Sequence[_Scored]) -> VersionLedger:
    """The version's ledger with its scored records added to its sums and its target range."""
    sums = ledger.sums.extend(
        [r.model_error**2 for _, r in pairs],
        [r.persistence_error**2 for _, r in pairs],
        [r.covered for _, r in pairs],
    )
    targets = [record.target_ts for record, _ in pairs]
    first = min(targets) if ledger.first_target is None else min(ledger.first_target, *targets)
    last = max(targets) if ledger.last_target is None else max(ledger.last_target, *targets)
    return dataclasses.replace(ledger, sums=sums, first_target=first, last_target=last)


def _counted_after(
    counted: Mapping[str, Mapping[str, frozenset[int]]],
    scored: Iterable[ServedRecord],
    bars: Mapping[str, SymbolBars | None],
) -> dict[str, dict[str, frozenset[int]]]:
    """The counted keys with those of ``scored`` added and those that can never come again forgotten."""
    after = {symbol: dict(by_version) for symbol, by_version in counted.items()}
    for record in scored:
        as_ofs = after.setdefault(record.symbol, {}).get(record.version, frozenset())
        after[record.symbol][record.version] = as_ofs | {record.as_of}
    for symbol, window in bars.items():  # a key whose as_of left latest/ can never be scored again
        if window is not None and symbol in after:
            kept = {v: frozenset(t for t in keys if t >= window.first_ts) for v, keys in after[symbol].items()}
            after[symbol] = {v: keys for v, keys in kept.items() if keys}
    return {symbol: by_version for symbol, by_version in after.items() if by_version}


def _still_waiting(waiting: list[ServedRecord]) -> tuple[tuple[ServedRecord, ...], int]:
    """The records to keep waiting, in target order, and how many were dropped past :data:`MAX_PENDING`."""
    overflow = max(0, len(waiting) - MAX_PENDING)
    if overflow:
        waiting = sorted(waiting, key=lambda record: (record.target_ts, record.symbol, record.version))
        waiting = waiting[-MAX_PENDING:]
    return tuple(sorted(waiting, key=lambda r: (r.target_ts, r.symbol, r.version, r.as_of))), overflow


def _hour_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def advance(state: LedgerState, folded_now: Iterable[str], left: Iterable[str], now: dt.datetime) -> LedgerState:
    """The state with ``folded_now`` marked folded, and the hours that can get no more blobs forgotten.

    An hour is closed :data:`HOUR_OPEN_S` after it ends; a closed hour whose blobs are all folded
    (none ``left``) moves below ``open_from`` and its names leave the state. ``open_from`` never
    moves back, so a forgotten blob is never listed again.
    """
    # hour H is closed once H + 1 h + HOUR_OPEN_S <= now: the first open one is the next hour after that bound
    first_open = _hour_start(now - dt.timedelta(hours=1, seconds=HOUR_OPEN_S)) + dt.timedelta(hours=1)
    candidates = [f"{first_open:%Y-%m-%dT%H}", *(h for h in (served_hour(n) for n in left) if h is not None)]
    open_from = min(candidates)
    if state.open_from is not None and state.open_from > open_from:
        open_from = state.open_from
    folded = frozenset(n for n in (*state.folded, *folded_now) if (served_hour(n) or "") >= open_from)
    return dataclasses.replace(state, open_from=open_from, folded=folded)


# ---- storage ----


@dataclass(frozen=True)
class FoldOutcome:
    """What a tick's ledger duty did."""

    blobs: int  # served blobs folded
    left: int  # served blobs left for the next tick
    report: FoldReport
    skill: SkillDocument


def _truth(container: ContainerClient, symbol: str, window: int, attempts: int, tick: str) -> SymbolBars | None:
    """A symbol's settled true closes from ``latest/`` (repaired from raw/ if corrupt)."""
    table = read_latest(container, symbol, window, attempts, tick).table
    if table is None or table.num_rows == 0:
        return None
    ts = pc.cast(table.column("ts"), "int64").to_pylist()
    return SymbolBars.of(dict(zip(ts, table.column("close").to_pylist(), strict=True)))


class SkillLedger:
    """Folds ``ledger/served/`` into ``ledger/state.json`` and publishes ``ledger/skill.json`` (bars container)."""

    def __init__(self, container: ContainerClient, latest_window: int, latest_attempts: int) -> None:
        self.container = container
        self.latest_window = latest_window
        self.latest_attempts = latest_attempts

    def fold(self, tick: str, now: dt.datetime) -> FoldOutcome:
        """One fold: read, score, write the state if nobody else did meanwhile (else again), publish."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            state, etag = self._read_state(tick)
            listed = self._listed(state)
            unfolded = sorted(name for name in listed if name not in state.folded)
            batch, left = unfolded[:MAX_BLOBS_PER_TICK], unfolded[MAX_BLOBS_PER_TICK:]
            served, unreadable = self._download(batch, tick)
            symbols = sorted({r.symbol for r in (*state.pending, *served)})
            with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(symbols)) or 1) as pool:
                truths = dict(
                    zip(
                        symbols,
                        pool.map(
                            lambda s: _truth(self.container, s, self.latest_window, self.latest_attempts, tick),
                            symbols,
                        ),
                        strict=True,
                    )
                )
            folded, report = fold(state, served, truths, int(now.timestamp()))
            stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            new = advance(folded, batch, left, now)
            dropped = Counter(new.dropped)
            dropped["unreadable_blob"] += unreadable
            new = dataclasses.replace(new, dropped={k: v for k, v in dropped.items() if v}, updated_at=stamp)
            try:
                self._write_state(new, etag)
            except _CONFLICTS:
                log.info("tick=%s ledger state changed concurrently, attempt %d/%d", tick, attempt, MAX_ATTEMPTS)
                continue
            skill = new.skill(stamp)
            # after the state: a crash in between leaves the figures one tick behind, never counts twice
            self.container.upload_blob(SKILL_BLOB, encode_skill(skill), overwrite=True)
            log.info(
                "tick=%s ledger folded %d blobs (%d left): scored %s, dropped %s, duplicates %d, pending %d",
                tick,
                len(batch),
                len(left),
                dict(report.scored),
                dict(report.dropped),
                report.duplicates,
                report.pending,
            )
            self._report(skill, now)
            return FoldOutcome(len(batch), len(left), report, skill)
        raise LedgerConflictError(f"{STATE_BLOB}: still changing after {MAX_ATTEMPTS} attempts")

    def _read_state(self, tick: str) -> tuple[LedgerState, str | None]:
        """The state and its ETag; an unreadable state is quarantined and the ledger starts again from served/."""
        blob = self.container.get_blob_client(STATE_BLOB)
        try:
            downloader = blob.download_blob()
        except ResourceNotFoundError:
            return LedgerState(), None
        data, etag = downloader.readall(), downloader.properties.etag
        try:
            return decode_state(data), etag
        except ValueError as exc:
            name = f"{QUARANTINE_PREFIX}state-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{tick}.json"
            self.container.upload_blob(name, data, overwrite=True)
            log.error(
                "tick=%s %s is unreadable (%s); copied to %s, the ledger starts again", tick, STATE_BLOB, exc, name
            )
            return LedgerState(), etag

    def _write_state(self, state: LedgerState, etag: str | None) -> None:
        """Create the state, or replace it only if it still has ``etag``."""
        blob = self.container.get_blob_client(STATE_BLOB)
        if etag is None:
            blob.upload_blob(encode_state(state), overwrite=False)
        else:
            blob.upload_blob(
                encode_state(state), overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )

    def _listed(self, state: LedgerState) -> list[str]:
        """The served blobs of the hours from ``open_from`` on (all of them before the first fold)."""
        open_from = state.open_from or ""
        names = []
        for item in self.container.walk_blobs(name_starts_with=SERVED_PREFIX, delimiter="/"):
            if not isinstance(item, BlobPrefix) or item.name.removeprefix(SERVED_PREFIX)[5:15] < open_from[:10]:
                continue  # a date folder before open_from's date
            for blob in self.container.list_blobs(name_starts_with=item.name):
                hour = served_hour(blob.name)
                if hour is None:
                    log.warning("ignoring %s: not a served ledger blob name", blob.name)
                elif hour >= open_from:
                    names.append(blob.name)
        return names

    def _download(self, names: Sequence[str], tick: str) -> tuple[list[ServedRecord], int]:
        """The records of the named blobs, and how many blobs were unreadable (skipped for good, with a warning)."""
        if not names:
            return [], 0
        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(names))) as pool:
            contents = list(pool.map(lambda n: self.container.download_blob(n).readall(), names))
        records, unreadable = [], 0
        for name, data in zip(names, contents, strict=True):
            try:
                records.extend(decode_served(data))
            except ValueError as exc:
                log.warning("tick=%s skipping unreadable %s: %s", tick, name, exc)
                unreadable += 1
        return records, unreadable

    @staticmethod
    def _report(skill: SkillDocument, now: dt.datetime) -> None:
        """Gauges of the versions served within :data:`CURRENT_S` that have scored forecasts."""
        since_ms = int(now.timestamp() * 1000) - CURRENT_S * 1000
        for figures in skill.versions.values():
            if figures.n and figures.last_served_at_ms is not None and figures.last_served_at_ms >= since_ms:
                telemetry.live_skill(
                    figures.version, figures.kind, figures.n, figures.ratio_to_persistence, figures.p_worse
                )
