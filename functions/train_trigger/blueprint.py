"""Timer: every tick does two independent duties, the rollout reconcile and the training submission.

Each duty reads its state from where it lives (the endpoint and the registry; the job record and
that one job), so a tick that fails half way is finished by the next one. A failure of one never
stops the other: each outcome is a metric with its own alert, and a tick that failed either duty
raises at the end, so the invocation shows as failed in the portal with both reasons.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import azure.functions as func

from functions import telemetry
from functions.settings import get_settings
from functions.train_trigger import backends
from functions.train_trigger.ports import Backend
from functions.train_trigger.report import report_models

log = logging.getLogger(__name__)
bp = func.Blueprint()


class TickFailedError(RuntimeError):
    """One or both duties of a tick failed; the message names each failure."""


def reconcile_rollout(backend: Backend, tick: str) -> str | None:
    """The rollout duty: one reconcile, counted; returns the failure's description, or None."""
    try:
        outcome = backend.rollout.reconcile(tick)
    except Exception as exc:
        log.exception("tick=%s rollout failed", tick)
        telemetry.rollout("failed")
        return f"rollout: {type(exc).__name__}: {exc}"
    telemetry.rollout("succeeded")
    log.info("tick=%s rollout: %s", tick, outcome)
    return None


def submit_training(backend: Backend, tick: str, now: dt.datetime) -> str | None:
    """The training duty: single-flight submission, counted; returns the failure's description, or None."""
    try:
        submission = backend.submitter.submit_unless_active(tick, now)
    except Exception as exc:
        log.exception("tick=%s training submission failed", tick)
        telemetry.training_submission("failed")
        return f"training submission: {type(exc).__name__}: {exc}"
    telemetry.training_submission("submitted" if submission.submitted else "active")
    log.info("tick=%s training: %s job=%s", tick, submission.reason, submission.job_name)
    return None


def run_tick(backend: Backend, tick: str, now: dt.datetime) -> list[str]:
    """Both duties, whatever the other did, then the registry report; returns the failures."""
    failures = [f for f in (reconcile_rollout(backend, tick), submit_training(backend, tick, now)) if f]
    try:
        report_models(backend.models, tick)
    except Exception:  # telemetry is best effort: a registry hiccup must not fail the tick
        log.exception("tick=%s could not read the registry for telemetry", tick)
    return failures


@bp.function_name("train_trigger")
@bp.timer_trigger(arg_name="timer", schedule="%TRAIN_SCHEDULE%", use_monitor=True, run_on_startup=False)
def train_trigger(timer: func.TimerRequest) -> None:
    """Reconcile the rollout and submit the training job (single-flight), each whatever the other did."""
    settings = get_settings()
    telemetry.configure(settings)
    tick = f"tick-{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC)
    log.info("tick=%s backend=%s past_due=%s", tick, settings.ml_backend, timer.past_due)
    try:
        backend = backends.create(settings)
    except Exception:  # neither duty can run: both count as failed
        telemetry.rollout("failed")
        telemetry.training_submission("failed")
        raise
    failures = run_tick(backend, tick, now)
    if failures:
        raise TickFailedError(f"tick={tick} " + "; ".join(failures))
