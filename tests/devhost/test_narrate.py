"""What `devhost up` narrates: the activity line and each ended job's line, from what the feed and trigger report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from devhost.kafka.trigger import Batch, BatchDone
from devhost.narrate import Narrator, tick_line

SUMMARY = {
    "version": "3",
    "kind": "lstm_attention",
    "decision": "retained",
    "champion_after": {"version": "1", "kind": "persistence"},
    "skipped": {"ZZZ": "30 bars give 0 windows, need 50", "AAA": "unusable bars: no close"},
}
PROMOTED = {"decision": "promoted", "champion_after": {"version": "3", "kind": "lstm_attention"}, "skipped": {}}
SKIPPED = {"version": None, "decision": "skipped", "reason": "no new windows"}


@pytest.mark.parametrize(
    ("summary", "serves", "expected"),
    [
        (
            SUMMARY,
            "1",
            "tick:        job j1: v3 lstm_attention retained; champion v1 (persistence); "
            "skipped AAA (unusable bars: no close); ZZZ (30 bars give 0 windows, need 50); endpoint serves v1",
        ),
        (
            {**SUMMARY, **PROMOTED},
            None,
            "tick:        job j1: v3 lstm_attention promoted; champion v3 (lstm_attention); "
            "endpoint serves nothing yet",
        ),
        (
            {**SKIPPED, "champion_after": SUMMARY["champion_after"]},
            "1",
            "tick:        job j1: skipped: no new windows; champion v1 (persistence); endpoint serves v1",
        ),
        (None, "2", "tick:        job j1 ended without a decision (see /h/jobs/j1.log); endpoint serves v2"),
    ],
)
def test_a_tick_line_holds_version_decision_champion_skipped_symbols_and_what_is_served(
    summary: dict | None, serves: str | None, expected: str
) -> None:
    """One line per ended job, with the skipped symbols and their reasons."""
    assert tick_line("j1", summary, serves, Path("/h/jobs/j1.log")) == expected


def _done(events: int) -> BatchDone:
    return BatchDone(Batch("p0-0-1", 0, 0, events - 1, [0] * events), 1, True, 0.0)


def test_the_activity_line_counts_market_minutes_and_batches_then_starts_again(tmp_path: Path) -> None:
    """The line covers the minutes sent and batches stored since the last one; with nothing new there is none."""
    said: list[str] = []
    narrator = Narrator(tmp_path, said.append)
    for minute in (31, 32, 33):
        narrator.on_feed(dt.datetime(2026, 11, 5, 14, minute, tzinfo=dt.UTC), 5)
    for events in (5, 10):
        narrator.on_batch(_done(events))
    line = "feed:        market 2026-11-05 14:31-14:33 UTC (3 min), ingested 2 batches (15 events)"
    assert narrator.activity() == line
    narrator.on_batch(_done(4))
    assert narrator.activity() == "feed:        ingested 1 batch (4 events)"
    assert (narrator.activity(), narrator.check_job(), said) == (None, None, [])


@pytest.mark.parametrize(
    ("published", "line"),
    [
        ((1,), "feed:        ingested 1 batch (4 events), published 1 forecast"),
        ((2, 3), "feed:        ingested 1 batch (4 events), published 5 forecasts"),
        ((), "feed:        ingested 1 batch (4 events)"),
    ],
)
def test_the_activity_line_counts_the_forecasts_the_stream_published(tmp_path: Path, published, line) -> None:
    """The stream's acked forecasts since the last line join it; none published says nothing of them."""
    narrator = Narrator(tmp_path, [].append)
    narrator.on_batch(_done(4))
    for count in published:
        narrator.on_published(count)
    assert narrator.activity() == line
    narrator.on_published(2)
    assert narrator.activity() == "feed:        ingested 0 batches (0 events), published 2 forecasts"
