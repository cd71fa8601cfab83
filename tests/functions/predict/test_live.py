"""Predict's side of the ledger on real Azurite: buffered records flushed as served blobs, live figures read back."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import orjson
import pytest
from azure.core.exceptions import ServiceRequestError

from functions.predict import forecasts, live
from functions.predict.live import LedgerWorker
from functions.settings import load_settings
from functions.shared.ledger import (
    SERVED_PREFIX,
    SKILL_BLOB,
    LiveFigures,
    SkillDocument,
    decode_served,
    encode_skill,
)
from tests.factories import LOCAL_APP_SETTINGS

pytestmark = pytest.mark.integration
NOW = dt.datetime(2026, 11, 2, 15, 7, tzinfo=dt.UTC)
MODEL = {"name": "stockcast-lstm-attention", "version": "2", "kind": "lstm_attention"}


def _doc(as_of: str = "2026-11-02T15:00:00Z", target: str | None = "2026-11-02T15:01:00Z", **model: str) -> dict:
    """A 200 answer document as predict makes it."""
    return {
        "symbol": "AAA",
        "as_of": as_of,
        "target_ts": target,
        "predicted_close": 101.0,
        "last_close": 100.0,
        "interval": {"level": 0.9, "low": 100.5, "high": 101.5},
        "session_closed": target is None,
        "model": {**MODEL, **model},
    }


def _served(container, instance: str | None = None) -> dict[str, list]:
    """The served blobs, of one instance if given (another test's process-wide worker may flush beside it)."""
    return {
        b.name: decode_served(container.download_blob(b.name).readall())
        for b in container.list_blobs(SERVED_PREFIX)
        if instance is None or b.name.rsplit("/", 1)[-1].startswith(f"{instance}-")
    }


def test_forecasts_are_buffered_once_per_key_and_flushed_as_one_served_blob(container):
    """Two answers of one forecast, a closed session and an unknown version: one record, one blob."""
    worker = LedgerWorker(lambda: container, instance="inst", clock=lambda: NOW)
    worker.record(_doc(), "get", "req-1")
    worker.record(_doc(), "get", "req-2")  # the cached forecast answered again
    worker.record(_doc(target=None), "get", "req-3")  # session closed: nothing to score
    worker.record(_doc(version="unknown"), "post", "req-4")  # an endpoint that does not say its version
    worker.record(_doc(as_of="2026-11-02T15:01:00Z", target="2026-11-02T15:02:00Z"), "post", "req-5")
    assert worker.flush() == 2 and worker.flush() == 0
    blobs = _served(container, "inst")
    assert list(blobs) == [f"{SERVED_PREFIX}date=2026-11-02/hour=15/inst-00000001.parquet"]
    [(first, second)] = blobs.values()
    assert (first.symbol, first.version, first.kind, first.as_of, first.target_ts) == (
        "AAA",
        "2",
        "lstm_attention",
        1_793_631_600,
        1_793_631_660,
    )
    assert (first.predicted_close, first.last_close, first.interval_low, first.interval_high) == (
        101,
        100,
        100.5,
        101.5,
    )
    assert (first.source, first.request_id, second.source, second.request_id) == ("get", "req-1", "post", "req-5")
    worker.record(_doc(), "get", "req-6")  # recorded lately: not buffered again after the flush either
    assert worker.flush() == 0


class Flaky:
    """A container that refuses the first ``failures`` uploads as an unreachable storage would."""

    def __init__(self, container: Any, failures: int) -> None:
        self.container, self.failures = container, failures

    def upload_blob(self, *args: Any, **kwargs: Any) -> Any:
        """Fail while failures are left, then upload."""
        if self.failures:
            self.failures -= 1
            raise ServiceRequestError("connection refused")
        return self.container.upload_blob(*args, **kwargs)


def test_a_failed_flush_keeps_its_records_for_the_next(container, caplog):
    """Storage down at a flush: the records stay buffered and go out in the next flush, with those added since."""
    flaky = Flaky(container, failures=1)
    worker = LedgerWorker(lambda: flaky, instance="inst", clock=lambda: NOW)
    worker.record(_doc(), "get", "req-1")
    assert worker.flush() == 0 and "kept for the next flush" in caplog.text
    worker.record(_doc(as_of="2026-11-02T15:01:00Z", target="2026-11-02T15:02:00Z"), "get", "req-2")
    assert worker.flush() == 2
    [records] = _served(container, "inst").values()
    assert [r.request_id for r in records] == ["req-1", "req-2"]


def test_a_full_buffer_drops_new_records_and_counts_them(container, monkeypatch, caplog):
    """Past MAX_BUFFER records (storage down for long) new forecasts are dropped, counted, never blocking."""
    monkeypatch.setattr(live, "MAX_BUFFER", 2)
    worker = LedgerWorker(lambda: container, instance="inst", clock=lambda: NOW)
    for minute in range(4):
        worker.record(_doc(as_of=f"2026-11-02T15:0{minute}:00Z", target=f"2026-11-02T15:0{minute + 1}:00Z"), "get", "r")
    assert (worker.dropped, worker.flush()) == (2, 2)
    assert "ledger buffer full: 2 forecasts were not recorded" in caplog.text


def _figures(version: str, n: int, ratio: float) -> LiveFigures:
    return LiveFigures(version, "lstm_attention", n, ratio, 0.2, 0.8, 0.9, n, 1, 2, 3)


def test_live_figures_are_read_by_etag_and_change_their_generation(container):
    """The worker reads ledger/skill.json; an unchanged blob keeps the generation, a new one bumps it."""
    worker = LedgerWorker(lambda: container, instance="inst")
    assert worker.refresh() is True and worker._live == (1, {})  # no figures yet: every version gets null
    document = SkillDocument("2026-11-02T15:15:00Z", {"2": _figures("2", 120, 0.97), "1": _figures("1", 0, 1.0)})
    container.upload_blob(SKILL_BLOB, encode_skill(document), overwrite=True)
    assert worker.refresh() is True and worker.refresh() is False
    generation, figures = worker._live
    assert generation == 2 and figures == {
        "2": {
            "ratio_to_persistence": 0.97,
            "p_value": 0.2,
            "n": 120,
            "coverage": 0.9,
            "updated_at": document.updated_at,
        }
    }


class _Slow:
    """The container, each storage call from another thread slowed by 0.3 s (a remote store's round trip)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.3)
        return getattr(self._container, name)


def test_the_background_thread_refreshes_at_start_and_flushes_within_its_interval(container):
    """The first use starts the thread: it reads the figures at once and writes the buffer every flush_s."""
    container.upload_blob(
        SKILL_BLOB, encode_skill(SkillDocument("2026-11-02T15:15:00Z", {"2": _figures("2", 5, 1.1)})), overwrite=True
    )
    worker = LedgerWorker(lambda: _Slow(container), flush_s=0.2, instance="bg")
    try:
        expected = (1, {**_figures("2", 5, 1.1).api("2026-11-02T15:15:00Z")})
        assert worker.live("2") == (0, None)  # never waits for the (slow) read it starts
        deadline = time.monotonic() + 10
        while worker.live("2")[1] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.live("2") == expected
        worker.record(_doc(), "get", "req-1")
        while not _served(container, "bg") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_served(container, "bg")) == 1
    finally:
        worker.close()


def test_closing_flushes_what_is_buffered(container):
    """Stopping the worker (as at exit) writes the buffer once more."""
    worker = LedgerWorker(lambda: container, flush_s=3600, instance="exit")
    worker.record(_doc(), "get", "req-1")
    worker.close()
    assert [len(records) for records in _served(container, "exit").values()] == [1]


def test_an_answer_is_made_even_when_recording_fails(monkeypatch, caplog):
    """A ledger that raises on record never fails the forecast: the body is answered, the failure logged."""

    class Broken:
        def live(self, version: str) -> tuple[int, dict | None]:
            return 3, {"ratio_to_persistence": 0.9, "p_value": 0.01, "n": 400, "coverage": 0.91, "updated_at": "t"}

        def record(self, doc: dict, source: str, request_id: str) -> None:
            raise RuntimeError("buffer broken")

    monkeypatch.setattr(forecasts, "ledger_worker", lambda settings: Broken())
    scored = {
        "forecasts": [{**_doc(), "predicted_return": 0.01}],
        "model": MODEL,
        "skill": {"ratio_to_persistence": 0.95, "p_value": 0.02, "n": 1400, "evaluated_at": "2026-11-01T21:05:00Z"},
    }
    body, generation = forecasts.answer(
        "AAA",
        scored,
        100.0,
        load_settings(LOCAL_APP_SETTINGS | {"BarsStorage": "UseDevelopmentStorage=true"}),
        "req-9",
        "get",
    )
    assert generation == 3 and "not recorded in the ledger" in caplog.text
    assert orjson.loads(body)["skill"]["live"] == Broken().live("2")[1]
    assert orjson.loads(body)["skill"]["n"] == 1400
