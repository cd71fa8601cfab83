"""Drive the timer the way the host would, and wait for what it started (``devhost train``)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from azure.functions.timer import TimerRequest
from croniter import croniter

from devhost.app.host import Host, resolve_path
from devhost.jobs.local_jobs import LocalSubmitter
from devhost.serving.local_rollout import LocalRollout
from devhost.serving.mlflow_store import check_store
from functions.settings import get_settings
from functions.shared.storage import bars_container


@dataclass
class TrainResult:
    """What one ``devhost train`` did."""

    job_name: str | None
    summary: dict | None
    log_path: str | None
    rollout: str


TRAIN_TIMER = "train_trigger"
COMPACT_TIMER = "compact"


def fire_timer(host: Host, past_due: bool = False, name: str = TRAIN_TIMER) -> None:
    """Invoke the registered timer function ``name`` once."""
    host.invoke(host.function("timerTrigger", name), TimerRequest(past_due=past_due))


def next_fire(host: Host, after: dt.datetime, name: str = TRAIN_TIMER) -> dt.datetime:
    """When timer ``name``'s NCRONTAB schedule (six fields, seconds first) fires next after ``after``."""
    schedule = resolve_path(host.function("timerTrigger", name).get_trigger().schedule, os.environ, after)
    return croniter(schedule, after, second_at_beginning=True).get_next(dt.datetime)


def train(host: Host, on_wait: Callable[[str], None] | None = None, timeout: float = 900.0) -> TrainResult:
    """Fire the timer, wait for the local job it started (or found running), then reconcile the rollout.

    A damaged MLflow store stops it before the timer fires (:class:`StoreDamagedError`, saying what to do):
    neither duty could do anything but fail on it.
    """
    settings = get_settings()
    check_store(str(settings.mlflow_tracking_uri))
    submitter = LocalSubmitter(settings, bars_container(settings))
    fire_timer(host)
    running = submitter.active()
    name = running["name"] if running else None
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        if on_wait:
            on_wait(running["name"])
        time.sleep(0.5)
        running = submitter.active()
    if running:
        raise TimeoutError(f"training job {name} still running after {timeout:.0f}s")
    rollout = LocalRollout(settings).reconcile("devhost-train")
    log_path = str(submitter.jobs / f"{name}.log") if name else None
    return TrainResult(name, submitter.summary(name) if name else None, log_path, rollout)
