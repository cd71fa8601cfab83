"""The registered compaction timer on real Azurite: it compacts the closed hours, counts what it did, fails loudly."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest
from croniter import croniter

from devhost.app.host import Host
from functions import telemetry
from functions.compact.blueprint import CompactionFailedError
from functions.settings import Settings, get_settings
from functions.shared.bars import to_parquet
from functions.shared.rebuild import COMPACTED_NAME
from tests.functions.shared.test_compaction import BAD, oracle, read_all, table_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _fires(schedule: str) -> set[int]:
    """The minutes of an hour an NCRONTAB schedule (seconds first) fires at."""
    start = dt.datetime(2026, 11, 2, 14, 0, tzinfo=dt.UTC)
    it = croniter(schedule, start - dt.timedelta(seconds=1), second_at_beginning=True)
    return {t.minute for t in (it.get_next(dt.datetime) for _ in range(8)) if t.hour == 14}


def test_the_timer_is_registered_on_its_schedule_between_the_training_ticks():
    """compact: a timer on %COMPACT_SCHEDULE%, with the schedule monitor, firing 7 minutes after each training tick."""
    fn = Host().function("timerTrigger", "compact")
    trigger = fn.get_trigger()
    assert (trigger.schedule, trigger.use_monitor, trigger.run_on_startup) == ("%COMPACT_SCHEDULE%", True, False)
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    default = Settings.__dataclass_fields__["compact_schedule"].default
    assert sample["COMPACT_SCHEDULE"] == default
    assert (float(sample["COMPACT_MARGIN_SECONDS"]), int(sample["COMPACT_MAX_HOURS"])) == (1800.0, 24)
    assert _fires(default) == {7, 22, 37, 52}
    assert _fires(sample["TRAIN_SCHEDULE"]) == {0, 15, 30, 45}


def _seed(container, now: dt.datetime) -> tuple[str, str, list[list[tuple]]]:
    """Three raw blobs in the hour three hours ago (closed) and one in the current hour (open)."""
    closed = (now - dt.timedelta(hours=3)).strftime("raw/date=%Y-%m-%d/hour=%H/")
    current = now.strftime("raw/date=%Y-%m-%d/hour=%H/")
    t0 = int((now - dt.timedelta(hours=3)).replace(minute=0, second=0, microsecond=0).timestamp())
    batches = [[("AAA", t0 + 60 * (m + j), 10.0 + m + j / 10, j, 1000 * (t0 + j)) for m in range(3)] for j in range(3)]
    for j, rows in enumerate(batches):
        container.upload_blob(f"{closed}b{j}.parquet", to_parquet(table_of(rows)))
    tail = [("AAA", t0 + 9000, 20.0, 1, 1000 * (t0 + 9000))]
    container.upload_blob(f"{current}tail.parquet", to_parquet(table_of(tail)))
    return closed, current, [*batches, tail]


def test_a_tick_compacts_the_closed_hour_and_counts_it(container, recorded):
    """The closed hour becomes one blob, the open one is untouched; hours, blobs and bytes are counted."""
    now = dt.datetime.now(dt.UTC)
    closed, current, batches = _seed(container, now)
    raw_bytes = sum(b.size for b in container.list_blobs(name_starts_with=closed))
    get_settings()  # the runtime's app settings, COMPACT_* at their defaults
    host = Host()
    result = host.invoke(host.function("timerTrigger", "compact"), TimerRequest(past_due=False))
    assert result.attempts == 1
    assert [b.name for b in container.list_blobs(name_starts_with=closed)] == [f"{closed}{COMPACTED_NAME}"]
    assert [b.name for b in container.list_blobs(name_starts_with=current)] == [f"{current}tail.parquet"]
    assert read_all(container) == oracle(batches)
    written = container.get_blob_client(f"{closed}{COMPACTED_NAME}").get_blob_properties().size
    assert recorded.values(telemetry.COMPACTION_HOURS, "outcome") == {
        "compacted": 1,
        "cleaned": 0,
        "unchanged": 0,
        "conflict": 0,
        "failed": 0,
    }
    assert recorded.values(telemetry.COMPACTION_BLOBS, "action") == {"merged": 3, "deleted": 3, "unreadable": 0}
    assert recorded.values(telemetry.COMPACTION_BYTES, "direction") == {"read": raw_bytes, "written": written}


def test_a_failed_hour_fails_the_invocation_and_is_counted(container, recorded):
    """A compacted blob that does not decode: the hour is left as it is, counted failed, the invocation raises."""
    now = dt.datetime.now(dt.UTC)
    closed, _, _ = _seed(container, now)
    container.upload_blob(f"{closed}{COMPACTED_NAME}", BAD)
    host = Host()
    with pytest.raises(CompactionFailedError, match=f"hours failed: {closed}"):
        host.invoke(host.function("timerTrigger", "compact"), TimerRequest(past_due=False))
    assert recorded.values(telemetry.COMPACTION_HOURS, "outcome")["failed"] == 1
    assert len(list(container.list_blobs(name_starts_with=closed))) == 4
