"""A tick's three duties: the rollout, the training submission and the live skill fold each run and count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from functions.settings import get_settings
from functions.shared.ledger import SkillDocument
from functions.train_trigger import backends, blueprint
from functions.train_trigger.blueprint import TickFailedError, run_tick
from functions.train_trigger.live_skill import FoldOutcome, FoldReport
from functions.train_trigger.ports import Backend, ModelSnapshot, Submission
from tests.factories import AML_APP_SETTINGS

NOW = dt.datetime(2026, 11, 3, 15, 30, tzinfo=dt.UTC)


class Rollout:
    """A rollout that answers, or raises what it was given; records its calls."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[str] = []

    def reconcile(self, tick_id: str) -> str:
        """Raise the error, or say what was done."""
        self.calls.append(tick_id)
        if self.error:
            raise self.error
        return "done: serving v2"


class Submitter:
    """A submitter that submits, or raises what it was given; records its calls."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[str] = []

    def submit_unless_active(self, tick_id: str, now: dt.datetime) -> Submission:
        """Raise the error, or submit."""
        self.calls.append(tick_id)
        if self.error:
            raise self.error
        return Submission(True, "job-1", "submitted")


class Ledger:
    """A live skill ledger that folds nothing, or raises what it was given; records its calls."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[str] = []

    def fold(self, tick: str, now: dt.datetime) -> FoldOutcome:
        """Raise the error, or fold nothing."""
        self.calls.append(tick)
        if self.error:
            raise self.error
        return FoldOutcome(0, 0, FoldReport({}, {}, 0, 0), SkillDocument("2026-11-03T15:30:00Z", {}))


class Models:
    """An empty registry."""

    def snapshot(self) -> ModelSnapshot:
        """Nothing registered."""
        return ModelSnapshot(None, None)


@pytest.mark.parametrize(
    ("rollout_error", "submit_error", "fold_error", "rollouts", "submissions", "folds", "failures"),
    [
        (None, None, None, {"succeeded": 1}, {"submitted": 1}, {"succeeded": 1}, []),
        (
            RuntimeError("deployment rejected: quota"),
            None,
            None,
            {"failed": 1},
            {"submitted": 1},
            {"succeeded": 1},
            ["rollout: RuntimeError: deployment rejected: quota"],
        ),
        (
            None,
            ConnectionError("503 from the job service"),
            None,
            {"succeeded": 1},
            {"failed": 1},
            {"succeeded": 1},
            ["training submission: ConnectionError: 503 from the job service"],
        ),
        (
            None,
            None,
            TimeoutError("storage"),
            {"succeeded": 1},
            {"submitted": 1},
            {"failed": 1},
            ["live skill: TimeoutError: storage"],
        ),
        (
            RuntimeError("endpoint 500"),
            ConnectionError("reset"),
            ValueError("state"),
            {"failed": 1},
            {"failed": 1},
            {"failed": 1},
            [
                "rollout: RuntimeError: endpoint 500",
                "training submission: ConnectionError: reset",
                "live skill: ValueError: state",
            ],
        ),
    ],
)
def test_each_duty_runs_and_counts_whatever_the_others_did(
    recorded, rollout_error, submit_error, fold_error, rollouts, submissions, folds, failures
):
    """No failing duty stops another (rollout, submission, live skill fold); each outcome is counted."""
    rollout, submitter, ledger = Rollout(rollout_error), Submitter(submit_error), Ledger(fold_error)
    found = run_tick(Backend(submitter, rollout, Models()), ledger, "tick-1", NOW)
    assert (rollout.calls, submitter.calls, ledger.calls) == (["tick-1"], ["tick-1"], ["tick-1"])
    assert found == failures
    assert recorded.values("stockcast.rollout", "outcome") == rollouts
    assert recorded.values("stockcast.training.submissions", "outcome") == submissions
    assert recorded.values("stockcast.live.folds", "outcome") == folds


@pytest.fixture
def aml_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The Azure app settings as the process environment, read afresh."""
    for key, value in AML_APP_SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BarsStorage", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class TimerRequest:
    """What the host passes the timer."""

    past_due = False


def test_the_timer_fails_after_every_duty_naming_each_failure(recorded, monkeypatch, aml_environ):
    """The registered function runs the three duties, then raises one error naming each (a failed tick)."""
    rollout, submitter = Rollout(RuntimeError("rejected")), Submitter(TimeoutError("job service"))
    ledger = Ledger(ConnectionError("storage"))
    monkeypatch.setattr(backends, "create", lambda settings: Backend(submitter, rollout, Models()))
    monkeypatch.setattr(blueprint, "SkillLedger", lambda *args: ledger)
    with pytest.raises(
        TickFailedError,
        match=r"rollout: RuntimeError: rejected; training submission: TimeoutError: job service; "
        r"live skill: ConnectionError: storage",
    ):
        blueprint.train_trigger(TimerRequest())
    assert len(rollout.calls) == len(submitter.calls) == len(ledger.calls) == 1
    assert recorded.values("stockcast.rollout", "outcome") == {"failed": 1}
    assert recorded.values("stockcast.live.folds", "outcome") == {"failed": 1}


def test_a_backend_that_cannot_be_built_fails_both_ml_duties_but_the_ledger_folds(recorded, monkeypatch, aml_environ):
    """No MLClient: rollout and submission count as failed, the live skill fold still runs, the error surfaces."""

    def broken(settings):
        raise ValueError("no credential")

    ledger = Ledger()
    monkeypatch.setattr(backends, "create", broken)
    monkeypatch.setattr(blueprint, "SkillLedger", lambda *args: ledger)
    with pytest.raises(ValueError, match="no credential"):
        blueprint.train_trigger(TimerRequest())
    assert recorded.values("stockcast.rollout", "outcome") == {"failed": 1}
    assert recorded.values("stockcast.training.submissions", "outcome") == {"failed": 1}
    assert len(ledger.calls) == 1 and recorded.values("stockcast.live.folds", "outcome") == {"succeeded": 1}
