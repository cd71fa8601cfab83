"""The live skill duty: pure scoring against true bars, idempotent folds, and crash-safe state on real Azurite."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import orjson
import pytest
from azure.core.exceptions import ResourceModifiedError

from functions.predict.live import LedgerWorker
from functions.shared.latest import update_latest
from functions.shared.ledger import (
    SERVED_PREFIX,
    SKILL_BLOB,
    STATE_BLOB,
    ServedRecord,
    decode_served,
    decode_skill,
    encode_served,
    served_blob_name,
)
from functions.train_trigger import live_skill
from functions.train_trigger.live_skill import (
    EXPIRE_S,
    SETTLE_S,
    LedgerState,
    SkillLedger,
    SymbolBars,
    VersionLedger,
    advance,
    decode_state,
    encode_state,
    fold,
    resolve,
)
from tests.functions.shared.test_bars import bars

T0 = 1_793_629_800  # 2026-11-02T14:30:00Z
NOW_S = T0 + 3600


def served(
    minute: int,
    predicted: float,
    last_close: float = 100.0,
    version: str = "2",
    kind: str = "lstm_attention",
    symbol: str = "AAA",
    interval: tuple[float, float] | None = None,
    served_at_ms: int | None = None,
) -> ServedRecord:
    """A forecast served at ``T0 + minute`` minutes for the next minute."""
    as_of = T0 + 60 * minute
    low, high = interval or (None, None)
    return ServedRecord(
        symbol,
        version,
        kind,
        as_of,
        as_of + 60,
        predicted,
        last_close,
        0.9 if interval else None,
        low,
        high,
        served_at_ms if served_at_ms is not None else (as_of + 1) * 1000,
        "get",
        f"req-{minute}",
    )


def window(closes: list[float], start: int = 0) -> SymbolBars:
    """True closes of minutes ``start``, ``start + 1``, … after T0."""
    found = SymbolBars.of({T0 + 60 * (start + i): c for i, c in enumerate(closes)})
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("record", "bars", "now_s", "outcome"),
    [
        pytest.param(served(0, 101.0), window([100.0, 102.0, 102.5]), NOW_S, "scored", id="target-and-a-later-bar"),
        pytest.param(served(0, 101.0), window([100.0, 102.0]), T0 + 120, "pending", id="target-newest-recent"),
        pytest.param(
            served(0, 101.0), window([100.0, 102.0]), T0 + 60 + SETTLE_S, "scored", id="target-newest-settled"
        ),
        pytest.param(served(0, 101.0), window([100.0]), NOW_S, "pending", id="target-not-yet-stored"),
        pytest.param(served(0, 101.0), window([101.0, 102.0], start=5), NOW_S, "outside_window", id="window-moved-on"),
        pytest.param(
            served(0, 101.0),
            SymbolBars({T0: 100.0, T0 + 120: 99.0}, T0, T0 + 120),
            NOW_S,
            "no_target_bar",
            id="no-trade",
        ),
        pytest.param(served(0, 101.0), None, T0 + EXPIRE_S, "pending", id="unknown-symbol-recent"),
        pytest.param(served(0, 101.0), None, T0 + 60 + EXPIRE_S + 1, "expired", id="unknown-symbol-expired"),
        pytest.param(
            served(0, 101.0, last_close=150.0), window([100.0, 102.0, 102.5]), NOW_S, "not_stored_history", id="posted"
        ),
        pytest.param(
            served(0, 101.0, last_close=104.0), window([100.0, 102.0, 102.5]), NOW_S, "scored", id="provisional-close"
        ),
        pytest.param(
            served(0, 101.0),
            SymbolBars({T0 - 60: 100.0, T0 + 60: 102.0, T0 + 120: 101.0}, T0 - 60, T0 + 120),
            NOW_S,
            "not_stored_history",
            id="as-of-not-stored",
        ),
        pytest.param(
            served(0, 101.0, last_close=150.0), window([100.0]), T0 + 60, "not_stored_history", id="posted-never-waits"
        ),
        pytest.param(served(3, 101.0), window([100.0, 101.0]), T0 + 240, "pending", id="as-of-not-yet-stored"),
    ],
)
def test_resolve_scores_waits_or_drops_by_the_true_bars(record, bars, now_s, outcome):
    """A served record is scored once its target bar is stored and settled; otherwise it waits or is dropped, named."""
    assert resolve(record, bars, now_s).outcome == outcome


def test_resolve_errors_are_log_returns_against_the_actual_close():
    """Model: log(predicted/actual); persistence: log(last close/actual); the interval held the close or not."""
    found = resolve(served(0, 101.0, interval=(100.5, 101.5)), window([100.0, 102.0, 102.5]), NOW_S)
    assert found.model_error == pytest.approx(math.log(101.0 / 102.0), rel=1e-15)
    assert found.persistence_error == pytest.approx(math.log(100.0 / 102.0), rel=1e-15)
    assert found.covered is False


def test_fold_hand_computed_ratio_coverage_and_persistence():
    """Three forecasts of v2 and one of persistence v1 against known closes: the figures worked by hand."""
    closes = window([100.0, 101.0, 100.0, 102.0, 102.0])  # minutes 0..4; targets 1, 2, 3 of the forecasts below
    records = [
        served(0, 100.5, 100.0, interval=(100.2, 101.2)),  # actual 101: model 0.5 off, persistence 1.0
        served(1, 100.5, 101.0, interval=(100.1, 101.0)),  # actual 100: model 0.5 off, persistence 1.0; missed
        served(2, 101.0, 100.0),  # actual 102: model 1.0 off, persistence 2.0; no interval
        served(0, 100.0, 100.0, version="1", kind="persistence"),
    ]
    state, report = fold(LedgerState(), records, {"AAA": closes}, NOW_S)
    e_model = [math.log(100.5 / 101), math.log(100.5 / 100), math.log(101 / 102)]
    e_persistence = [math.log(100 / 101), math.log(101 / 100), math.log(100 / 102)]
    v2 = state.skill("now").versions["2"]
    assert (v2.n, v2.interval_n, v2.coverage) == (3, 2, 0.5)
    expected = math.sqrt(sum(e * e for e in e_model) / sum(e * e for e in e_persistence))
    assert v2.ratio_to_persistence == pytest.approx(expected, rel=1e-12)
    assert v2.p_value is not None and v2.p_value + v2.p_worse == pytest.approx(1.0)
    v1 = state.skill("now").versions["1"]
    assert (v1.n, v1.ratio_to_persistence, v1.p_value, v1.p_worse) == (1, 1.0, None, None)
    assert report.scored == {"2": 3, "1": 1} and report.pending == 0
    assert (v2.first_target, v2.last_target) == (T0 + 60, T0 + 180)


def test_the_same_forecast_twice_counts_once_within_and_across_folds():
    """A key served twice in one fold, or again after it was counted, adds nothing (GET caching, two instances)."""
    closes = {"AAA": window([100.0, 101.0, 102.0])}
    first = served(0, 100.5, served_at_ms=5_000)
    again = dataclasses.replace(first, served_at_ms=6_000, request_id="other", predicted_close=100.9)
    state, report = fold(LedgerState(), [again, first], closes, NOW_S)
    assert state.versions["2"].sums.n == 1 and report.duplicates == 1
    # the first served wins, whatever order the blobs came in
    assert state.versions["2"].sums.model_sq == pytest.approx(math.log(100.5 / 101) ** 2, rel=1e-12)
    later, report = fold(state, [first, again], closes, NOW_S)
    assert later.versions["2"].sums == state.versions["2"].sums and report.duplicates == 2


def test_a_waiting_record_is_scored_when_its_bars_arrive_and_keys_leave_with_the_window():
    """Pending records wait for their target to settle; a counted key goes when its as_of leaves latest/."""
    state, report = fold(LedgerState(), [served(0, 100.5)], {"AAA": window([100.0])}, T0 + 60)
    assert (report.pending, state.versions["2"].sums.n) == (1, 0)
    state, report = fold(state, [], {"AAA": window([100.0, 101.0, 101.5])}, NOW_S)
    assert (report.pending, state.versions["2"].sums.n, dict(state.counted)) == (0, 1, {"AAA": {"2": frozenset({T0})}})
    state, _ = fold(state, [], {"AAA": window([101.0, 101.5], start=1)}, NOW_S)
    assert dict(state.counted) == {}


def test_dropped_records_are_counted_by_reason_and_kept_across_folds():
    """Each record given up adds to its reason's count in the state."""
    state, report = fold(LedgerState(), [served(0, 101.0, symbol="NEWCO")], {"NEWCO": None}, T0 + 60 + EXPIRE_S + 1)
    assert report.dropped == {"expired": 1} and state.dropped == {"expired": 1} and state.pending == ()
    state, _ = fold(state, [served(0, 101.0, last_close=300.0)], {"AAA": window([100.0, 101.0, 102.0])}, NOW_S)
    assert state.dropped == {"expired": 1, "not_stored_history": 1}


def _names(*hours: str) -> list[str]:
    return [f"{SERVED_PREFIX}date={h[:10]}/hour={h[11:13]}/inst-{i:08d}.parquet" for i, h in enumerate(hours)]


@pytest.mark.parametrize(
    ("now", "left", "open_from", "kept"),
    [
        pytest.param("2026-11-02T16:30", [], "2026-11-02T15", 1, id="hour-ended-over-an-hour-ago-forgotten"),
        pytest.param("2026-11-02T15:59", [], "2026-11-02T14", 2, id="hour-still-open"),
        pytest.param("2026-11-02T18:00", ["2026-11-02T14"], "2026-11-02T14", 2, id="blobs-left-keep-the-hour"),
    ],
)
def test_advance_forgets_closed_hours_whose_blobs_are_folded(now, left, open_from, kept):
    """Hours closed an hour after they end leave the folded set once none of their blobs is left."""
    folded = _names("2026-11-02T14", "2026-11-02T15")
    moment = dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC)
    state = advance(LedgerState(), folded, _names(*left), moment)
    assert state.open_from == open_from and len(state.folded) == kept
    assert advance(dataclasses.replace(state, open_from="2026-11-02T20"), [], [], moment).open_from == "2026-11-02T20"


def test_state_round_trips_and_bad_state_is_named():
    """The state document decodes to what was encoded; a damaged one is a ValueError saying what is wrong."""
    state, _ = fold(LedgerState(), [served(0, 100.5), served(9, 100.0)], {"AAA": window([100.0, 101.0, 102.0])}, NOW_S)
    state = advance(state, _names("2026-11-02T14"), [], dt.datetime(2026, 11, 2, 15, tzinfo=dt.UTC))
    assert decode_state(encode_state(state)) == state
    doc = orjson.loads(encode_state(state))
    for change, message in [
        ({"schema": 9}, "schema"),
        ({"folded": "x"}, "folded"),
        ({"pending": [[1]]}, "13 values"),
        ({"dropped": {"x": "y"}}, "dropped"),
        ({"versions": {"2": {"kind": "lstm_attention"}}}, "kind and sums"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_state(orjson.dumps({**doc, **change}))


# ---- on Azurite ----

NOW = dt.datetime.fromtimestamp(T0 + 3600, dt.UTC)


def _store_closes(container, closes: list[float], symbol: str = "AAA") -> None:
    rows = [(symbol, T0 + 60 * i, c, 100, 1) for i, c in enumerate(closes)]
    update_latest(container, bars(rows), 512, 8, "test")


def _doc(minute: int, predicted: float, last_close: float, version: str = "2") -> dict:
    iso = dt.datetime.fromtimestamp(T0 + 60 * minute, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    target = dt.datetime.fromtimestamp(T0 + 60 * minute + 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "symbol": "AAA",
        "as_of": iso,
        "target_ts": target,
        "predicted_close": predicted,
        "last_close": last_close,
        "interval": {"level": 0.9, "low": last_close - 1, "high": last_close + 1},
        "model": {"name": "m", "version": version, "kind": "lstm_attention"},
    }


def _serve(container, docs: list[dict], instance: str = "inst-a") -> LedgerWorker:
    """Record the documents as predict does and flush them to ledger/served/ (one blob)."""
    worker = LedgerWorker(lambda: container, instance=instance, clock=lambda: NOW)
    for doc in docs:
        worker.record(doc, "get", "req")
    assert worker.flush() == len({(d["as_of"], d["model"]["version"]) for d in docs})
    worker.close(0)
    return worker


def _state(container) -> LedgerState:
    return decode_state(container.download_blob(STATE_BLOB).readall())


def _skill_n(container, version: str = "2") -> int:
    return decode_skill(container.download_blob(SKILL_BLOB).readall()).versions[version].n


@pytest.mark.integration
def test_fold_on_azurite_scores_served_blobs_once_and_publishes_the_figures(container, recorded):
    """Served blobs from two instances (one forecast in both) are scored once; a second fold adds nothing."""
    _store_closes(container, [100.0, 101.0, 100.0, 102.0, 102.5])
    _serve(container, [_doc(0, 100.5, 100.0), _doc(1, 100.5, 101.0)], "inst-a")
    _serve(container, [_doc(1, 100.5, 101.0), _doc(2, 101.0, 100.0)], "inst-b")  # minute 1 again: one forecast
    ledger = SkillLedger(container, 512, 8)
    outcome = ledger.fold("tick-1", NOW)
    assert (outcome.blobs, outcome.report.scored, outcome.report.duplicates) == (2, {"2": 3}, 1)
    assert _skill_n(container) == 3 and _state(container).folded
    again = ledger.fold("tick-2", NOW)
    assert (again.blobs, _skill_n(container)) == (0, 3)
    # served (by the wall clock) within the last hour of NOW: a current version, so its gauge is set
    figures = outcome.skill.versions["2"]
    assert recorded.values("stockcast.live.skill_ratio", "version", "kind", "n") == {
        ("2", "lstm_attention", 3): pytest.approx(figures.ratio_to_persistence)
    }
    assert recorded.values("stockcast.live.worse_than_persistence", "version", "n") == {
        ("2", 3): pytest.approx(figures.p_worse)
    }


@pytest.mark.integration
def test_a_crash_before_the_state_is_written_counts_nothing_and_the_next_fold_counts_once(container, monkeypatch):
    """Fold, then die before the state write: nothing is marked folded or counted; the next run counts each once."""
    _store_closes(container, [100.0, 101.0, 100.0, 102.0, 102.5])
    _serve(container, [_doc(0, 100.5, 100.0), _doc(1, 100.5, 101.0)])
    ledger = SkillLedger(container, 512, 8)

    def crash(self, state, etag):
        raise SystemExit("killed between the fold and the write")

    with monkeypatch.context() as patched:
        patched.setattr(SkillLedger, "_write_state", crash)
        with pytest.raises(SystemExit):
            ledger.fold("tick-1", NOW)
    assert not container.get_blob_client(STATE_BLOB).exists()
    ledger.fold("tick-2", NOW)
    assert _state(container).versions["2"].sums.n == 2 and _skill_n(container) == 2


@pytest.mark.integration
def test_a_crash_between_the_state_and_the_figures_leaves_them_a_tick_behind_never_double(container, monkeypatch):
    """The state is written, the figures are not: the next fold publishes them, counting nothing again."""
    _store_closes(container, [100.0, 101.0, 100.0, 102.0, 102.5])
    _serve(container, [_doc(0, 100.5, 100.0), _doc(1, 100.5, 101.0)])
    ledger = SkillLedger(container, 512, 8)
    upload = type(container).upload_blob

    def failing_figures(self, name, data, **kwargs):
        if name == SKILL_BLOB:
            raise SystemExit("killed before skill.json")
        return upload(self, name, data, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(type(container), "upload_blob", failing_figures)
        with pytest.raises(SystemExit):
            ledger.fold("tick-1", NOW)
    assert _state(container).versions["2"].sums.n == 2 and not container.get_blob_client(SKILL_BLOB).exists()
    _serve(container, [_doc(1, 100.5, 101.0), _doc(2, 101.0, 100.0)], "inst-b")
    ledger.fold("tick-2", NOW)
    assert _state(container).versions["2"].sums.n == 3 and _skill_n(container) == 3


@pytest.mark.integration
def test_a_concurrent_tick_that_writes_first_makes_the_other_fold_again(container, monkeypatch):
    """Two ticks fold the same blobs: the one whose ETag is stale folds again from the new state, counting once."""
    _store_closes(container, [100.0, 101.0, 100.0, 102.0, 102.5])
    _serve(container, [_doc(0, 100.5, 100.0), _doc(1, 100.5, 101.0)])
    ledger = SkillLedger(container, 512, 8)
    write = SkillLedger._write_state
    conflicts = []

    def racing(self, state, etag):
        if not conflicts:  # the other tick writes first, with the same blobs folded
            conflicts.append(etag)
            write(self, state, etag)
        return write(self, state, etag)

    monkeypatch.setattr(SkillLedger, "_write_state", racing)
    outcome = ledger.fold("tick-1", NOW)
    assert len(conflicts) == 1 and outcome.blobs == 0  # the retry found them folded
    assert _state(container).versions["2"].sums.n == 2


@pytest.mark.integration
def test_a_state_always_changing_fails_the_duty(container, monkeypatch):
    """Losing every attempt is a LedgerConflictError (the tick counts the duty as failed)."""

    def always_conflicts(self, state, etag):
        raise ResourceModifiedError("changed")

    monkeypatch.setattr(SkillLedger, "_write_state", always_conflicts)
    with pytest.raises(live_skill.LedgerConflictError, match="attempts"):
        SkillLedger(container, 512, 8).fold("tick-1", NOW)


@pytest.mark.integration
def test_unreadable_served_blobs_and_state_are_set_aside(container):
    """A served blob that is not Parquet is skipped and counted; a damaged state is quarantined and rebuilt."""
    _store_closes(container, [100.0, 101.0, 100.0, 102.0, 102.5])
    container.upload_blob(served_blob_name(NOW, "junk", 1), b"not parquet")
    _serve(container, [_doc(0, 100.5, 100.0)])
    ledger = SkillLedger(container, 512, 8)
    ledger.fold("tick-1", NOW)
    assert _state(container).dropped == {"unreadable_blob": 1} and _skill_n(container) == 1
    container.upload_blob(STATE_BLOB, b"{broken", overwrite=True)
    ledger.fold("tick-2", NOW)
    assert [b.name for b in container.list_blobs("ledger/quarantine/")] != []
    assert _skill_n(container) == 1  # served/ is read again from the start: the same forecast, counted once


def test_version_ledger_figures_leave_out_p_values_for_persistence():
    """Persistence against itself has no test: its p-values are None, as on its decision slice."""
    sums = VersionLedger("persistence").sums.extend([1e-6] * 5, [1e-6] * 5)
    figures = VersionLedger("persistence", sums).figures("1")
    assert (figures.ratio_to_persistence, figures.p_value, figures.p_worse) == (1.0, None, None)


def test_served_blobs_round_trip_through_parquet():
    """A flush's records decode to what was encoded."""
    records = [served(0, 100.5, interval=(99.0, 101.0)), served(1, 99.0, version="1", kind="persistence")]
    assert decode_served(encode_served(records)) == records


def test_a_version_forecasting_two_minutes_ahead_is_tested_at_horizon_two():
    """The HLN correction uses the version's horizon, read from its records' as_of → target."""
    records = [dataclasses.replace(served(m, 100.0 + m), target_ts=T0 + 60 * (m + 2)) for m in range(4)]
    state, _ = fold(LedgerState(), records, {"AAA": window([100.0, 101.0, 100.5, 102.0, 101.0, 100.0, 99.0])}, NOW_S)
    ledger = state.versions["2"]
    assert ledger.horizon == 2 and ledger.sums.n == 4
    assert ledger.figures("2").p_value == ledger.sums.dm(2).p_better != ledger.sums.dm(1).p_better
    assert decode_state(encode_state(state)).versions["2"].horizon == 2
