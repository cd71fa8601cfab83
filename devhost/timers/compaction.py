"""Compaction offline: the ``compact`` timer on its schedule under ``devhost up``, and one run over every hour.

Under ``devhost up`` the registered timer function runs on ``COMPACT_SCHEDULE`` as the host would
run it, merging hours closed for ``COMPACT_MARGIN_SECONDS``. ``devhost compact --all`` (and the
demo, once its replays are done) compacts every hour, the current one included: that is safe only
when nothing writes to ``raw/`` any more, so it refuses while ``devhost up`` runs for the home.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable

from azure.storage.blob import ContainerClient
from rich.console import Console
from rich.table import Table

from devhost.app.host import Host
from devhost.timers.orchestrate import COMPACT_TIMER, fire_timer, next_fire
from functions.settings import get_settings
from functions.shared.compaction import CompactionReport, compact

log = logging.getLogger("devhost.compaction")
HOUR_S = 3600.0


def run_timer(host: Host, stop: threading.Event, say: Callable[[str], None]) -> None:
    """Fire the ``compact`` timer function on its schedule until ``stop``; a failed run is said and logged."""
    while not stop.is_set():
        due = next_fire(host, dt.datetime.now(dt.UTC), COMPACT_TIMER)
        if stop.wait(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds())):
            return
        try:
            fire_timer(host, name=COMPACT_TIMER)
        except Exception as exc:  # the next run tries the hour again; nothing is lost meanwhile
            log.exception("compaction at %s failed", due)
            say(f"compaction ({due:%H:%M:%S}) failed: {exc}")


def _run_id() -> str:
    return f"devhost-compact-{uuid.uuid4().hex[:8]}"


def compact_closed(container: ContainerClient) -> CompactionReport:
    """One run as the timer's: the hours closed for ``COMPACT_MARGIN_SECONDS``, at most ``COMPACT_MAX_HOURS``."""
    settings = get_settings()
    return compact(container, time.time(), settings.compact_margin_s, settings.compact_max_hours, _run_id())


def compact_everything(container: ContainerClient, run: str | None = None) -> CompactionReport:
    """Compact every hour of ``raw/``, the current one too (only when no writer is left), as many as there are."""
    run = run or _run_id()
    # an hour counts as closed once it ended margin_s ago: with no writer left, every hour has
    return compact(container, time.time() + HOUR_S, 0.0, 10_000, run)


def show(report: CompactionReport, console: Console) -> None:
    """Print a run's totals: hours by outcome, raw blobs merged and deleted, bytes read and written."""
    table = Table(title=f"compaction {report.run}")
    for column in ("hours", "raw blobs merged", "raw blobs deleted", "unreadable left", "MB read", "MB written"):
        table.add_column(column, justify="right")
    outcomes = ", ".join(f"{n} {o}" for o, n in report.outcomes().items() if n) or "none with work"
    table.add_row(
        outcomes,
        str(report.total("merged")),
        str(report.total("deleted")),
        str(sum(len(h.unreadable) for h in report.hours)),
        f"{report.total('bytes_read') / 1e6:.2f}",
        f"{report.total('bytes_written') / 1e6:.2f}",
    )
    console.print(table)


def settings_summary() -> str:
    """The schedule and margin the timer runs with, for the console."""
    settings = get_settings()
    return f"{settings.compact_schedule} (NCRONTAB), hours closed for {settings.compact_margin_s:.0f}s"
