"""Timer: every tick does three independent duties: the rollout reconcile, the training submission, the live skill.

Each duty reads its state from where it lives (the endpoint and the registry; the job record and
that one job; the ledger's state blob), so a tick that fails half way is finished by the next one.
A failure of one never stops the others: each outcome is a metric with its own alert, and a tick
that failed any duty raises at the end, so the invocation shows as failed in the portal with every
reason. The live skill fold needs storage only, so it runs even when the ML backend cannot be built.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Protocol

import azure.functions as func

from functions import telemetry
from functions.settings import get_settings
from functions.shared.storage import bars_container
from functions.train_trigger import backends
from functions.train_trigger.live_skill import FoldOutcome, SkillLedger
from functions.train_trigger.ports import Backend
from functions.train_trigger.report import report_models

log = logging.getLogger(__name__)
bp = func.Blueprint()


class TickFailedError(RuntimeError):
    """Duties of a tick failed; the message names each failure."""


class LiveLedger(Protocol):
    """Scores the forecasts served (:class:`functions.train_trigger.live_skill.SkillLedger`)."""

    def fold(self, tick: str, now: dt.datetime) -> FoldOutcome:
        """One fold of the served forecasts into the live figures."""
        ...


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


def fold_live_skill(ledger: LiveLedger, tick: str, now: dt.datetime) -> str | None:
    """The live skill duty: one fold of the served forecasts, counted; returns the failure's description, or None."""
    try:
        outcome = ledger.fold(tick, now)
    except Exception as exc:
        log.exception("tick=%s live skill fold failed", tick)
        telemetry.live_fold("failed")
        return f"live skill: {type(exc).__name__}: {exc}"
    telemetry.live_fold("succeeded")
    log.info("tick=%s live skill: %d served blobs folded, %d pending", tick, outcome.blobs, outcome.report.pending)
    return None


def run_tick(backend: Backend, ledger: LiveLedger, tick: str, now: dt.datetime) -> list[str]:
    """The three duties, whatever the others did, then the registry report; returns the failures."""
    duties = (reconcile_rollout(backend, tick), submit_training(backend, tick, now), fold_live_skill(ledger, tick, now))
    failures = [f for f in duties if f]
    try:
        report_models(backend.models, tick)
    except Exception:  # telemetry is best effort: a registry hiccup must not fail the tick
        log.exception("tick=%s could not read the registry for telemetry", tick)
    return failures


@bp.function_name("train_trigger")
@bp.timer_trigger(arg_name="timer", schedule="%TRAIN_SCHEDULE%", use_monitor=True, run_on_startup=False)
def train_trigger(timer: func.TimerRequest) -> None:
    """Reconcile the rollout, submit training (single-flight), fold the live skill: each whatever the others did."""
    settings = get_settings()
    telemetry.configure(settings)
    tick = f"tick-{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC)
    log.info("tick=%s backend=%s past_due=%s", tick, settings.ml_backend, timer.past_due)
    ledger = SkillLedger(bars_container(settings), settings.latest_window, settings.latest_max_attempts)
    try:
        backend = backends.create(settings)
    except Exception:  # neither ML duty can run: both count as failed; the ledger needs storage only
        telemetry.rollout("failed")
        telemetry.training_submission("failed")
        fold_live_skill(ledger, tick, now)
        raise
    failures = run_tick(backend, ledger, tick, now)
    if failures:
        raise TickFailedError(f"tick={tick} " + "; ".join(failures))
