"""What a tick tells App Insights: submission outcomes, the champion's RMSE, the newest decision."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest

from devhost.app.host import Host
from devhost.serving.local_rollout import LocalModels
from devhost.timers.orchestrate import fire_timer
from functions.settings import get_settings, load_settings
from functions.train_trigger import backends
from functions.train_trigger.aml_rollout import AmlModels
from functions.train_trigger.blueprint import TickFailedError
from functions.train_trigger.ports import Backend, ModelSnapshot, ModelVersion, Submission
from functions.train_trigger.report import ModelReport, report_models
from tests.factories import AML_APP_SETTINGS

AML_SETTINGS = load_settings(AML_APP_SETTINGS)


def _decision_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "stockcast.events" and r.getMessage() == "training decision"]


class FixedModels:
    """A registry reader that returns one snapshot."""

    def __init__(self, snapshot: ModelSnapshot) -> None:
        self.value = snapshot

    def snapshot(self) -> ModelSnapshot:
        """The snapshot given."""
        return self.value


def test_aml_models_read_role_and_newest_from_listed_tags():
    """The champion is the highest version tagged role=champion; the newest is the highest version number."""
    calls = []

    def listed(name):
        calls.append(name)
        return [
            SimpleNamespace(version="9", tags={"role": "retired", "decision": "promoted"}),
            SimpleNamespace(version="10", tags={"role": "challenger", "decision": "retained"}),
            SimpleNamespace(version="2", tags={"role": "champion", "decision_rmse": "0.1"}),
            SimpleNamespace(version="1", tags=None),
        ]

    snapshot = AmlModels(SimpleNamespace(models=SimpleNamespace(list=listed)), AML_SETTINGS).snapshot()
    assert calls == ["stockcast-lstm-attention"]
    assert snapshot == ModelSnapshot(
        ModelVersion("2", {"role": "champion", "decision_rmse": "0.1"}),
        ModelVersion("10", {"role": "challenger", "decision": "retained"}),
    )


def test_report_sets_champion_rmse_and_logs_each_new_decision_once(recorded, caplog):
    """Gauge per tick for the champion; the newest version's decision once, again only for a new version."""
    caplog.set_level(logging.INFO, logger="stockcast.events")
    champion = ModelVersion("3", {"decision": "promoted", "decision_rmse": "0.02", "persistence_rmse": "0.025"})
    newest = ModelVersion(
        "4",
        {
            "decision": "retained",
            "reason": "not better than the champion",
            "decision_rmse": "0.03",
            "champion_rmse": "0.02",
            "persistence_rmse": "0.024",
        },
    )
    report = ModelReport()
    report(FixedModels(ModelSnapshot(champion, newest)), "tick-a")
    report(FixedModels(ModelSnapshot(champion, newest)), "tick-b")
    assert recorded.values("stockcast.model.rmse", "predictor", "version") == {
        ("champion", "3"): 0.02,
        ("persistence", "3"): 0.025,
    }
    [record] = _decision_records(caplog)
    assert (record.tick, record.version, record.decision, record.reason) == (
        "tick-a",
        "4",
        "retained",
        "not better than the champion",
    )
    assert (record.rmse_model, record.rmse_champion, record.rmse_persistence) == (0.03, 0.02, 0.024)
    first = ModelVersion("5", {"decision": "promoted", "reason": "first model", "decision_rmse": "0.01"})
    report(FixedModels(ModelSnapshot(first, first)), "tick-c")
    assert [r.version for r in _decision_records(caplog)] == ["4", "5"]
    assert not hasattr(_decision_records(caplog)[-1], "rmse_champion")
    assert recorded.values("stockcast.model.rmse", "predictor", "version")[("champion", "5")] == 0.01


def test_report_of_an_empty_registry_records_nothing(recorded, caplog):
    """No versions yet: no gauge value and no decision line."""
    caplog.set_level(logging.INFO, logger="stockcast.events")
    assert ModelReport()(FixedModels(ModelSnapshot(None, None)), "tick-a") == ModelSnapshot(None, None)
    assert recorded.points("stockcast.model.rmse") == [] and _decision_records(caplog) == []


@pytest.mark.integration
def test_local_models_read_the_trained_registry(runtime, trained):
    """v2 promoted over persistence (v1) is champion; v3 (retained) is the newest and carries all figures as tags."""
    settings = dataclasses.replace(
        get_settings(), mlflow_tracking_uri=trained.tracking_uri, model_name=trained.config.model_name
    )
    snapshot = LocalModels(settings).snapshot()
    assert (snapshot.champion.version, snapshot.newest.version) == ("2", "3")
    assert snapshot.champion.tags["decision"] == "promoted" and snapshot.champion.tags["kind"] == "lstm_attention"
    assert float(snapshot.champion.tags["p_vs_persistence"]) < 0.05
    figures = trained.second["metrics"]
    assert {k: snapshot.newest.tags[k] for k in ("decision", "decision_rmse", "champion_rmse", "persistence_rmse")} == {
        "decision": "retained",
        "decision_rmse": f"{figures['model']['rmse']:.6g}",
        "champion_rmse": f"{figures['champion']['rmse']:.6g}",
        "persistence_rmse": f"{figures['persistence']['rmse']:.6g}",
    }


class StubRollout:
    """The rollout's part of a tick is not under test here."""

    def reconcile(self, tick_id: str) -> str:
        """Nothing to do."""
        return "no champion yet"


class ScriptedSubmitter:
    """Submits, then finds the job active, then fails to reach the job service."""

    def __init__(self) -> None:
        self.script = [Submission(True, "job-1", "submitted"), Submission(False, "job-1", "job job-1 is still active")]

    def submit_unless_active(self, tick_id, now):
        """The next scripted answer; raises once the script is done."""
        if not self.script:
            raise ConnectionError("job service unreachable")
        return self.script.pop(0)


@pytest.mark.integration
def test_timer_ticks_count_outcomes_and_report_the_registry(runtime, trained, recorded, caplog, monkeypatch):
    """Three ticks through the registered timer: submitted, active, failed; the champion's RMSE and v3's decision."""
    caplog.set_level(logging.INFO, logger="stockcast.events")
    settings = dataclasses.replace(
        get_settings(), mlflow_tracking_uri=trained.tracking_uri, model_name=trained.config.model_name
    )
    backend = Backend(ScriptedSubmitter(), StubRollout(), LocalModels(settings))
    monkeypatch.setattr(backends, "create", lambda s: backend)
    monkeypatch.setattr(report_models, "last_decision", None)
    host = Host()
    fire_timer(host)
    fire_timer(host)
    with pytest.raises(TickFailedError, match="training submission: ConnectionError: job service unreachable"):
        fire_timer(host)
    assert recorded.values("stockcast.training.submissions", "outcome") == {"submitted": 1, "active": 1, "failed": 1}
    assert recorded.values("stockcast.rollout", "outcome") == {"succeeded": 3}
    first, second = trained.first["metrics"], trained.second["metrics"]
    assert recorded.values("stockcast.model.rmse", "predictor", "version") == {
        ("champion", "2"): pytest.approx(first["model"]["rmse"], rel=1e-5),
        ("persistence", "2"): pytest.approx(first["persistence"]["rmse"], rel=1e-5),
    }
    [record] = _decision_records(caplog)
    assert (record.version, record.decision) == ("3", "retained")
    assert record.rmse_champion == pytest.approx(second["champion"]["rmse"], rel=1e-5)
    tests = trained.second["tests"]
    assert record.p_vs_champion == pytest.approx(tests["vs_champion"]["p_value"], rel=1e-3)
    assert record.p_vs_persistence == pytest.approx(tests["vs_persistence"]["p_value"], rel=1e-3)
    assert record.n_decision == trained.second["n_decision"]
