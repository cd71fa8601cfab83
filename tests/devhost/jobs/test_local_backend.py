"""The local backend for real: the timer submits one job at a time, and the rollout serves the champion."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import pytest
from mlflow.tracking import MlflowClient

from devhost.app.host import Host
from devhost.jobs.local_jobs import LocalSubmitter, running_job
from devhost.kafka.replay import make_batches, replay
from devhost.market.feed import FeedConfig, generate
from devhost.serving.local_rollout import LocalRollout, serving_state, stop_serving
from devhost.shared.processes import free_port
from functions.settings import get_settings
from functions.shared.storage import bars_container

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_ticks_one_job_then_rollout_follows_the_champion(container, runtime, monkeypatch):
    """Tick 1 starts the job, tick 2 finds it running; the rollout serves the promoted version, then a rollback."""
    # a lenient gate (the feed's returns carry a real AR signal): the job registers persistence (v1) and promotes v2
    tiny = "--epochs 1 --units 4 --window 20 --min-windows-per-symbol 50 --seeds 1"
    monkeypatch.setenv("TRAIN_ARGS", f"{tiny} --alpha 0.5")
    monkeypatch.setenv("SCORING_PORT", str(free_port()))  # the session's champion server keeps its own port
    get_settings.cache_clear()
    try:
        replay(
            Host(retry_wait_cap=0.01),
            make_batches(list(generate(FeedConfig(symbols=("AAA", "BBB"), days=2))), 2, 64, 0),
        )
        settings = get_settings()
        submitter = LocalSubmitter(settings, bars_container(settings))
        now = dt.datetime.now(dt.UTC)
        first = submitter.submit_unless_active("tick-aaaa", now)
        second = submitter.submit_unless_active("tick-bbbb", now)
        assert first.submitted and not second.submitted
        assert second.job_name == first.job_name == running_job(runtime.home)["name"]
        deadline = time.monotonic() + 240
        while submitter.active() and time.monotonic() < deadline:
            time.sleep(0.5)
        summary = submitter.summary(first.job_name)
        assert summary is not None, (submitter.jobs / f"{first.job_name}.log").read_text()[-2000:]
        assert (summary["version"], summary["champion_version"], summary["decision"]) == ("2", "1", "promoted")
        assert summary["champion_after"] == {"version": "2", "kind": "lstm_attention"}
        assert len(list((submitter.jobs / "inputs" / "bars" / "raw").rglob("*.parquet"))) >= 1

        rollout = LocalRollout(settings)
        assert rollout.reconcile("tick-cccc") == "rolled out v2"
        info = httpx.get(f"http://127.0.0.1:{settings.scoring_port}/score", timeout=5).json()
        assert info["model"] == {"name": settings.model_name, "version": "2", "kind": "lstm_attention"}
        assert rollout.reconcile("tick-dddd") == "serving v2"  # nothing to do, nothing restarted
        assert serving_state(runtime.home)["version"] == "2"

        # `champion` moved back to persistence (a demotion): the served version follows
        MlflowClient(str(settings.mlflow_tracking_uri)).set_registered_model_alias(settings.model_name, "champion", "1")
        assert LocalRollout(get_settings()).reconcile("tick-eeee") == "rolled out v1"
        info = httpx.get(f"http://127.0.0.1:{settings.scoring_port}/score", timeout=5).json()
        assert info["model"] == {"name": settings.model_name, "version": "1", "kind": "persistence"}
        assert serving_state(runtime.home)["version"] == "1"
    finally:
        stop_serving(runtime.home)
        get_settings.cache_clear()
