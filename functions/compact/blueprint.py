"""Timer: compact the closed hours of ``raw/``, oldest first, a bounded number per run.

The work is :func:`functions.shared.compaction.compact`; this handler reads the settings, names the
run, counts what it did and fails the invocation when an hour failed, so the portal shows it (the
hour is left as it was, and the next run tries it again).
"""

from __future__ import annotations

import logging
import time
import uuid

import azure.functions as func

from functions import telemetry
from functions.settings import get_settings
from functions.shared.compaction import CompactionReport, compact
from functions.shared.storage import bars_container

log = logging.getLogger(__name__)
bp = func.Blueprint()


class CompactionFailedError(RuntimeError):
    """Hours of a compaction run failed; the message names them."""


def record(report: CompactionReport) -> None:
    """Count a run's hours by outcome, its blobs by action and its bytes by direction."""
    telemetry.compaction(
        report.outcomes(),
        {
            "merged": report.total("merged"),
            "deleted": report.total("deleted"),
            "unreadable": sum(len(h.unreadable) for h in report.hours),
        },
        {"read": report.total("bytes_read"), "written": report.total("bytes_written")},
    )


@bp.function_name("compact")
@bp.timer_trigger(arg_name="timer", schedule="%COMPACT_SCHEDULE%", use_monitor=True, run_on_startup=False)
def compact_raw(timer: func.TimerRequest) -> None:
    """Compact the oldest closed hours of raw/ that have work left; fail the invocation if one failed."""
    settings = get_settings()
    telemetry.configure(settings)
    run = f"compact-{uuid.uuid4().hex[:12]}"
    log.info(
        "run=%s past_due=%s margin_s=%.0f max_hours=%d",
        run,
        timer.past_due,
        settings.compact_margin_s,
        settings.compact_max_hours,
    )
    report = compact(bars_container(settings), time.time(), settings.compact_margin_s, settings.compact_max_hours, run)
    record(report)
    failed = [h.hour for h in report.hours if h.outcome == "failed"]
    if failed:
        raise CompactionFailedError(f"run={run} hours failed: {', '.join(failed)}")
