"""A tick's two duties: the rollout and the training submission each run, and count, whatever the other did."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from functions.settings import get_settings
from functions.train_trigger import backends, blueprint
from functions.train_trigger.blueprint import TickFailedError, run_tick
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


class Models:
    """An empty registry."""

    def snapshot(self) -> ModelSnapshot:
        """Nothing registered."""
        return ModelSnapshot(None, None)


@pytest.mark.parametrize(
    ("rollout_error", "submit_error", "rollouts", "submissions", "failures"),
    [
        (None, None, {"succeeded": 1}, {"submitted": 1}, []),
        (
            RuntimeError("deployment rejected: quota"),
            None,
            {"failed": 1},
            {"submitted": 1},
            ["rollout: RuntimeError: deployment rejected: quota"],
        ),
        (
            None,
            ConnectionError("503 from the job service"),
            {"succeeded": 1},
            {"failed": 1},
            ["training submission: ConnectionError: 503 from the job service"],
        ),
        (
            RuntimeError("endpoint 500"),
            ConnectionError("reset"),
            {"failed": 1},
            {"failed": 1},
            ["rollout: RuntimeError: endpoint 500", "training submission: ConnectionError: reset"],
        ),
    ],
)
def test_each_duty_runs_and_counts_whatever_the_other_did(
    recorded, rollout_error, submit_error, rollouts, submissions, failures
):
    """A failing rollout never stops the submission, nor a failing submission the rollout; each outcome is counted."""
    rollout, submitter = Rollout(rollout_error), Submitter(submit_error)
    found = run_tick(Backend(submitter, rollout, Models()), "tick-1", NOW)
    assert (rollout.calls, submitter.calls) == (["tick-1"], ["tick-1"])
    assert found == failures
    assert recorded.values("stockcast.rollout", "outcome") == rollouts
    assert recorded.values("stockcast.training.submissions", "outcome") == submissions


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


def test_the_timer_fails_after_both_duties_naming_each_failure(recorded, monkeypatch, aml_environ):
    """The registered function runs both duties, then raises one error naming both (a failed tick in the portal)."""
    rollout, submitter = Rollout(RuntimeError("rejected")), Submitter(TimeoutError("job service"))
    monkeypatch.setattr(backends, "create", lambda settings: Backend(submitter, rollout, Models()))
    with pytest.raises(TickFailedError, match=r"rollout: RuntimeError: rejected; training submission: TimeoutError"):
        blueprint.train_trigger(TimerRequest())
    assert len(rollout.calls) == len(submitter.calls) == 1
    assert recorded.values("stockcast.rollout", "outcome") == {"failed": 1}


def test_a_backend_that_cannot_be_built_fails_both_duties(recorded, monkeypatch, aml_environ):
    """No MLClient: both duties count as failed and the error surfaces."""

    def broken(settings):
        raise ValueError("no credential")

    monkeypatch.setattr(backends, "create", broken)
    with pytest.raises(ValueError, match="no credential"):
        blueprint.train_trigger(TimerRequest())
    assert recorded.values("stockcast.rollout", "outcome") == {"failed": 1}
    assert recorded.values("stockcast.training.submissions", "outcome") == {"failed": 1}
