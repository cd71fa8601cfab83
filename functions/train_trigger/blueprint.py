"""Timer: every tick reconciles the rollout first, then submits training unless a job is active.

Both steps read their state from where it lives (the endpoint, the registry, the job list or
lock), so a tick that fails half way is finished by the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import azure.functions as func

from functions import telemetry
from functions.settings import get_settings
from functions.train_trigger import backends
from functions.train_trigger.report import report_models

log = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("train_trigger")
@bp.timer_trigger(arg_name="timer", schedule="%TRAIN_SCHEDULE%", use_monitor=True, run_on_startup=False)
def train_trigger(timer: func.TimerRequest) -> None:
    """Reconcile the rollout, then submit the training job (single-flight)."""
    settings = get_settings()
    telemetry.configure(settings)
    tick = f"tick-{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC)
    log.info("tick=%s backend=%s past_due=%s", tick, settings.ml_backend, timer.past_due)
    backend = backends.create(settings)
    rollout = backend.rollout.reconcile(tick)
    log.info("tick=%s rollout: %s", tick, rollout)
    try:
        submission = backend.submitter.submit_unless_active(tick, now)
    except Exception:
        telemetry.training_submission("failed")
        raise
    telemetry.training_submission("submitted" if submission.submitted else "active")
    log.info("tick=%s training: %s job=%s", tick, submission.reason, submission.job_name)
    try:
        report_models(backend.models, tick)
    except Exception:  # telemetry is best effort: a registry hiccup must not fail the tick
        log.exception("tick=%s could not read the registry for telemetry", tick)
