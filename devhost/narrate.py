"""What ``devhost up`` says while it runs: the feed's market minutes, the batches ingested, each tick's outcome.

The feed and the trigger report to a :class:`Narrator` (their callbacks only count); its thread
says one line of activity every few seconds when something happened, and one line per training
job once it ends: the version it registered, the decision, the champion after it, the symbols it
skipped and why, and the version the endpoint serves. ``devhost up --quiet`` runs no narrator.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from devhost.jobs.local_jobs import running_job
from devhost.kafka.trigger import BatchDone
from devhost.serving.local_rollout import serving_state


def tick_line(job: str, summary: dict[str, Any] | None, serves: str | None, log_path: Path) -> str:
    """One line for a finished training job: version, decision, champion, skipped symbols, what is served."""
    endpoint = f"endpoint serves v{serves}" if serves else "endpoint serves nothing yet"
    if summary is None:
        return f"tick:        job {job} ended without a decision (see {log_path}); {endpoint}"
    after = summary.get("champion_after") or {}
    if summary.get("version"):
        outcome = f"v{summary['version']} {summary.get('kind', '')} {summary['decision']}".replace("  ", " ")
    else:  # a job that registered nothing says why in its decision and reason
        outcome = f"{summary['decision']}: {summary.get('reason', '')}"
    skipped = summary.get("skipped") or {}
    return (
        f"tick:        job {job}: {outcome}; champion v{after.get('version')} ({after.get('kind')}); "
        + (f"skipped {'; '.join(f'{s} ({why})' for s, why in sorted(skipped.items()))}; " if skipped else "")
        + endpoint
    )


class Narrator:
    """Counts what the feed sends and the trigger ingests; says it, and each ended job, in one line each."""

    def __init__(self, home: Path, say: Callable[[str], None]) -> None:
        self.home = home
        self.say = say
        self._lock = threading.Lock()
        self._minutes: list[dt.datetime] = []
        self._batches = 0
        self._events = 0
        self._forecasts = 0
        self._job: str | None = None
        self._serves: str | None = None

    def on_feed(self, at: dt.datetime, sent: int) -> None:
        """The feed sent the sync of market minute ``at`` (``sent`` messages)."""
        with self._lock:
            self._minutes.append(at)

    def on_batch(self, done: BatchDone) -> None:
        """The trigger stored a batch."""
        with self._lock:
            self._batches += 1
            self._events += done.batch.events

    def on_published(self, count: int) -> None:
        """The forecast stream put ``count`` forecasts on the broker."""
        with self._lock:
            self._forecasts += count

    def activity(self) -> str | None:
        """The line for what happened since the last one (None if nothing did); the counts start again."""
        with self._lock:
            minutes, batches, events, forecasts = self._minutes, self._batches, self._events, self._forecasts
            self._minutes, self._batches, self._events, self._forecasts = [], 0, 0, 0
        if not minutes and not batches and not forecasts:
            return None
        parts = []
        if minutes:
            span = f"{minutes[0]:%H:%M}" if len(minutes) == 1 else f"{minutes[0]:%H:%M}-{minutes[-1]:%H:%M}"
            parts.append(f"market {minutes[-1]:%Y-%m-%d} {span} UTC ({len(minutes)} min)")
        parts.append(f"ingested {batches} batch{'' if batches == 1 else 'es'} ({events} events)")
        if forecasts:
            parts.append(f"published {forecasts} forecast{'' if forecasts == 1 else 's'}")
        return "feed:        " + ", ".join(parts)

    def check_job(self) -> str | None:
        """The line for the training job that ended since the last check, if one did."""
        job = running_job(self.home)
        name = job["name"] if job else None
        ended, self._job = (self._job if self._job != name else None), name
        if ended is None:
            return None
        state = serving_state(self.home)
        path = self.home / "jobs" / f"{ended}.summary.json"
        try:
            summary = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            summary = None
        return tick_line(ended, summary, state["version"] if state else None, self.home / "jobs" / f"{ended}.log")

    def check_rollout(self) -> str | None:
        """The line for a change of the version the endpoint serves, if it changed."""
        state = serving_state(self.home)
        serves = state["version"] if state else None
        changed, before, self._serves = serves != self._serves, self._serves, serves
        if not changed or serves is None:
            return None
        return f"rollout:     endpoint serves v{serves}" + (f" (was v{before})" if before else "")

    def run(self, stop: threading.Event, every: float = 10.0, poll: float = 1.0) -> None:
        """Until ``stop`` is set: each ended job and rollout at once, the activity every ``every`` seconds."""
        state = serving_state(self.home)
        self._serves = state["version"] if state else None
        waited = 0.0
        while not stop.wait(poll):
            waited += poll
            for line in (self.check_job(), self.check_rollout()):
                if line:
                    self.say(line)
            if waited >= every:
                waited = 0.0
                line = self.activity()
                if line:
                    self.say(line)
        line = self.activity()  # what happened since the last line, said on the way out
        if line:
            self.say(line)
