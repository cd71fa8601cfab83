"""The training job end to end on real MLflow (SQLite) and TensorFlow, on tiny data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from devhost.market.feed import FeedConfig, write_bars
from tests.conftest import TINY, mlflow_registry, mlflow_store
from tests.training_job.azureml_mlflow import registry_uri
from training_job import data
from training_job.config import TrainConfig, parse_args
from training_job.forecaster import Forecaster, ForecasterMeta, ForecastInputError
from training_job.registry import CHAMPION, ModelRegistry
from training_job.train import build_windows, decision_bars, input_example, main, prepare_bars, read_evidence, run


@pytest.mark.integration
@pytest.mark.slow
def test_first_run_registers_persistence_then_promotes_a_significantly_better_model(trained):
    """v1 is persistence and the first champion; v2 beats it (DM on per-minute means, p < α/2) and is champion."""
    first = trained.first
    assert (first["version"], first["kind"], first["champion_version"]) == ("2", "lstm_attention", "1")
    assert first["decision"] == "promoted" and first["champion_after"] == {"version": "2", "kind": "lstm_attention"}
    vs = first["tests"]["vs_persistence"]
    assert vs["p_value"] < 0.025 and vs["loss_ratio"] < 1 and vs["n"] == first["n_minutes"] > 100
    assert first["n_decision"] > 2 * first["n_minutes"]  # three symbols share most minutes: one mean per minute
    evidence = first["evidence"]
    assert evidence["first_decision"] is True and evidence["minutes"] == first["n_minutes"]
    assert (evidence["threshold"], evidence["demotion_threshold"]) == (40.0, 20.0)
    assert "first decision, on all" in first["reason"] and "at level 0.025" in first["reason"]
    assert first["tests"]["vs_champion"] == vs and first["tests"]["champion_vs_persistence"] is None
    assert first["metrics"]["model"]["log_rmse"] < first["metrics"]["persistence"]["log_rmse"]
    assert first["metrics"]["champion"] == first["metrics"]["persistence"]  # the champion was persistence
    client = MlflowClient(trained.tracking_uri)
    name = trained.config.model_name
    v1 = client.get_model_version(name, "1")
    assert v1.tags["kind"] == "persistence"


@pytest.mark.integration
@pytest.mark.slow
def test_crippled_second_run_is_retained_and_champion_stays(trained):
    """A crippled v3 is registered as challenger; the champion stays v2; every figure is recorded."""
    second = trained.second
    assert (second["version"], second["decision"], second["champion_version"]) == ("3", "retained", "2")
    assert second["champion_after"] == {"version": "2", "kind": "lstm_attention"} and not second["demoted"]
    client = MlflowClient(trained.tracking_uri)
    name = trained.config.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
    for who in ("model", "champion", "persistence"):
        assert set(second["metrics"][who]) == {"rmse", "log_rmse", "mae", "directional_accuracy"}
        assert math.isfinite(second["metrics"][who]["rmse"]) and math.isfinite(second["metrics"][who]["log_rmse"])
    assert second["metrics"]["persistence"]["directional_accuracy"] is None
    assert 0 <= second["metrics"]["champion"]["directional_accuracy"] <= 1
    for test in ("vs_champion", "vs_persistence", "champion_vs_persistence"):
        assert set(second["tests"][test]) >= {"dm_stat", "p_value", "n", "min_detectable_ratio"}
    assert second["tests"]["champion_vs_persistence"]["p_value"] > 0.05  # the champion still holds up
    # one more day: the decision uses only the minutes after the first decision's watermark
    evidence = second["evidence"]
    assert evidence["first_decision"] is False and 0 < evidence["minutes"] <= second["n_minutes"]
    assert evidence["watermark"] > trained.first["evidence"]["watermark"]


@pytest.mark.integration
@pytest.mark.slow
def test_interval_coverage_is_reported_near_nominal(trained):
    """The job reports split-conformal coverage on the decision slice, near the 90 % level, overall and per tercile."""
    interval = trained.first["interval"]
    assert interval["level"] == 0.9 and len(interval["q"]) == 3 and min(interval["q"]) > 0
    assert len(interval["edges"]) == 2 and 0 < interval["edges"][0] < interval["edges"][1]
    assert abs(interval["coverage"] - 0.9) < 0.05 and abs(interval["persistence_coverage"] - 0.9) < 0.05
    rows = interval["by_volatility"]
    assert [row["tercile"] for row in rows] == ["low", "mid", "high"]
    assert sum(row["n"] for row in rows) == trained.first["n_decision"]
    for row in rows:  # ~300 windows a tercile on the tiny data: a binomial standard error of ~1.7 points
        assert abs(row["coverage"] - 0.9) < 0.08 and abs(row["persistence_coverage"] - 0.9) < 0.08
        assert row["winkler"] > 0 and row["persistence_winkler"] > 0
    assert rows[0]["winkler"] < rows[2]["winkler"]  # calm intervals are narrower than busy ones


@pytest.mark.integration
@pytest.mark.slow
def test_summary_files_match_the_returned_summary(trained):
    """--summary-out writes exactly the decision summary."""
    assert json.loads((trained.home / "first.json").read_text()) == trained.first
    assert json.loads((trained.home / "second.json").read_text()) == trained.second


@pytest.mark.integration
@pytest.mark.slow
def test_run_records_params_metrics_plots_profile_and_tags(trained):
    """The run holds every parameter, per-epoch losses, the figures, both PNGs and the profile."""
    client = MlflowClient(trained.tracking_uri)
    version = client.get_model_version(trained.config.model_name, "3")
    run = client.get_run(version.run_id)
    assert run.data.params["window"] == "20" and run.data.params["learning_rate"] == "5.0"
    assert {
        "model_rmse",
        "model_log_rmse",
        "champion_rmse",
        "persistence_rmse",
        "model_directional_accuracy",
        "vs_persistence_p_value",
        "vs_champion_dm_stat",
        "interval_coverage",
        "interval_coverage_low",
        "interval_persistence_winkler_high",
        "interval_q_2",
        "n_decision",
    } <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    assert run.data.tags["decision"] == "retained" and version.tags["decision"] == "retained"
    assert version.tags["kind"] == "lstm_attention" and float(version.tags["p_vs_champion"]) > 0.05
    evidence = trained.second["evidence"]  # one more day: the minutes after the first decision's watermark
    assert version.tags["n_minutes"] == str(trained.second["n_minutes"])
    tags = version.tags
    assert (tags["fresh_minutes"], tags["evidence_since"]) == (str(evidence["minutes"]), evidence["since"] or "-")
    assert float(tags["e_value"]) == pytest.approx(evidence["e_value"], rel=1e-4)
    assert float(tags["e_champion_worse"]) == pytest.approx(evidence["champion_worse"]["e"], rel=1e-4)
    promoted = client.get_model_version(trained.config.model_name, "2").tags["evidence"]
    assert json.loads(promoted)["champion"] == "self" and json.loads(version.tags["evidence"])["champion"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"data_profile.json", "summary.json", "model", "plots", "decision_forecasts.parquet"} <= artifacts
    assert plots == {"plots/loss_curve.png", "plots/predicted_vs_actual.png"}
    profile = json.loads(Path(client.download_artifacts(run.info.run_id, "data_profile.json")).read_text())
    # v3 trained on five days: four nights, each a gap over the maximum
    assert set(profile["symbols"]) == {"AAA", "BBB", "CCC"} and profile["symbols"]["AAA"]["gaps_over_max"] == 4
    for symbol in profile["symbols"].values():  # each session's last minute has no next minute: at a gap
        dropped = symbol["windows_without_target"]
        assert dropped["at_gap"] == symbol["gaps_over_max"] == 4
        assert 0 < dropped["in_segment"] <= symbol["missing_minutes_within_sessions"]
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/MLmodel", "model/input_example.json", "model/code"} <= model_files


@pytest.mark.integration
@pytest.mark.slow
def test_pyfunc_loads_in_a_fresh_process_and_forecasts_an_unseen_symbol(trained, bars_dir):
    """The registered champion forecasts a ticker it never saw, in a process of its own."""
    code = f"""
import glob, math, mlflow, pandas as pd, pyarrow.parquet as pq
mlflow.set_tracking_uri({trained.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/{trained.config.model_name}@champion")
bars = pq.read_table(sorted(glob.glob({str(bars_dir)!r} + "/*.parquet"))[-1]).to_pandas()
bars = bars[bars.symbol == "AAA"].tail(80)[["symbol", "ts", "open", "high", "low", "close", "volume"]]
bars["symbol"] = "NEWCO"
bars["ts"] = bars["ts"].dt.tz_localize(None)
out = model.predict(bars)
row = out.iloc[0]
assert list(out["symbol"]) == ["NEWCO"], out
assert math.isfinite(row.predicted_close) and abs(row.predicted_close / bars.close.iloc[-1] - 1) < 0.05
print("OK", row.predicted_close)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=trained.home, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("OK")


@pytest.mark.integration
@pytest.mark.slow
def test_no_usable_data_exits_nonzero_with_how_many_bars_are_needed(tmp_path, bars_dir, caplog):
    """Too little data per symbol: exit 2, naming the bars needed."""
    assert main(["--bars", str(bars_dir), "--min-windows-per-symbol", "100000"]) == 2
    assert "each needs at least 100071 contiguous bars" in caplog.text


@pytest.mark.integration
@pytest.mark.slow
def test_skill_travels_inside_the_served_model(trained):
    """The registered version carries its decision-slice skill and interval scale for the endpoint."""
    client = MlflowClient(trained.tracking_uri)
    run_id = client.get_model_version(trained.config.model_name, "2").run_id
    folder = Path(client.download_artifacts(run_id, "model/artifacts/forecaster"))
    meta = Forecaster.load(folder).meta
    first = trained.first
    assert meta.kind == "lstm_attention" and list(meta.interval_q) == pytest.approx(first["interval"]["q"])
    assert list(meta.interval_edges) == pytest.approx(first["interval"]["edges"])
    ratio = first["metrics"]["model"]["log_rmse"] / first["metrics"]["persistence"]["log_rmse"]
    assert meta.skill["ratio_to_persistence"] == pytest.approx(ratio, abs=1e-6)
    assert meta.skill["p_value"] == pytest.approx(first["tests"]["vs_persistence"]["p_value"], abs=1e-6)
    assert meta.skill["n"] == first["n_decision"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_committed_decision_whose_roles_never_moved_is_completed_by_the_next_job(tmp_path, bars_dir, monkeypatch):
    """A version registered with its record commits its decision: a job stopped before moving the role is completed."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    more = tmp_path / "bars-more"  # one more day: the second job has windows after the first decision
    write_bars(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=5, seed=3), more)
    with mlflow_store(f"sqlite:///{tmp_path}/mlflow.db"), mlflow_registry(registry_uri(tmp_path / "mlflow.db")):
        cfg = TrainConfig(bars=bars_dir, experiment="tests", **TINY)
        first = run(cfg)
        registry = ModelRegistry(MlflowClient(), cfg.model_name)
        registry.assign(CHAMPION, "1")  # the role as it stood had the job stopped right after registering v2
        evidence = read_evidence(registry)
        second = run(replace(cfg, bars=more))
        roles = {v: registry.role_of(v) for v in ("1", "2", "3")}
        # the same bars again: no window after the last decision, so nothing is trained or registered
        third = run(replace(cfg, bars=more, summary_out=tmp_path / "third.json"))
        versions = sorted(int(v.version) for v in registry._versions())  # every page of the registry's answer
    assert first["champion_after"]["version"] == "2" and evidence.champion == "2"
    assert evidence.watermark == int(pd.Timestamp(first["evidence"]["watermark"]).timestamp())
    assert (second["champion_version"], second["champion_after"]["version"], second["decision"]) == (
        "2",
        "2",
        "retained",
    )
    assert roles == {"1": "retired", "2": "champion", "3": "challenger"}
    assert (third["version"], third["decision"], third["champion_after"]) == (
        None,
        "skipped",
        {"version": "2", "kind": "lstm_attention"},
    )
    assert third["reason"].startswith(f"no window after {second['evidence']['watermark']}, ")
    assert versions == [1, 2, 3] and json.loads((tmp_path / "third.json").read_text()) == third


@pytest.mark.integration
@pytest.mark.slow
def test_the_summary_names_the_mode_history_windows_and_why_there_was_no_warm_start(trained):
    """Both runs read all their (fewer than history_days) days and fit every window; v3's narrower units cold-start."""
    first, second = trained.first["training"], trained.second["training"]
    assert first["mode"] == second["mode"] == "warm"
    assert first["history"] == {
        "days": 10,
        "since": "2026-10-23T00:00:00Z",  # ten weekdays back, Thursday 2026-11-05 the first
        "until": "2026-11-05T20:59:00Z",
        "bars": first["history"]["bars"],
    }
    assert second["history"]["until"] == "2026-11-06T20:59:00Z" and second["history"]["bars"] > first["history"]["bars"]
    windows = first["windows"]
    assert windows["train"] == windows["train_available"] > 0 and windows["max_train_windows"] == 20_000
    assert windows["validation"] == windows["validation_available"] > 0
    assert first["warm_start"] == {
        "used": False,
        "from": None,
        "reason": "champion v1 is persistence: no weights to start from",
    }
    assert second["warm_start"] == {
        "used": False,
        "from": None,
        "reason": "champion v2's architecture differs: units 8 → 2",
    }
    assert second["epochs"] == {"max": 1, "run": 1, "best": second["epochs"]["best"]}
    assert first["fingerprint"] != second["fingerprint"] and first["trained_until"] < second["trained_until"]
    client = MlflowClient(trained.tracking_uri)
    tags = client.get_model_version(trained.config.model_name, "2").tags
    assert (tags["mode"], tags["fingerprint"], tags["warm_start_from"]) == ("warm", first["fingerprint"], "-")
    assert tags["trained_until"] == str(int(pd.Timestamp(first["trained_until"]).timestamp()))


def test_every_option_has_a_default():
    """Only --bars is required; the rest come from the config object."""
    cfg = parse_args(["--bars", "x", "--epochs", "3", "--learning-rate", "0.01"])
    assert (str(cfg.bars), cfg.epochs, cfg.learning_rate, cfg.window, cfg.model_name) == (
        "x",
        3,
        0.01,
        30,
        "stockcast-lstm-attention",
    )


def test_the_input_example_is_the_newest_window_not_bars_after_a_gap(bars_dir):
    """A symbol whose last bars follow a gap (a live feed after a backfill) still gives a scorable example."""
    bars = data.read_bars(bars_dir)
    last = bars[bars["symbol"] == "AAA"].iloc[-1]
    resumed = pd.DataFrame([last] * 3).reset_index(drop=True)
    resumed["ts"] = last["ts"] + pd.to_timedelta([120, 121, 122], unit="min")
    bars = pd.concat([bars, resumed], ignore_index=True)
    cfg = TrainConfig(bars=bars_dir, **TINY)
    windows, skipped, _ = build_windows(bars, cfg)
    meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes)
    persistence = Forecaster.persistence(meta)
    with pytest.raises(ForecastInputError, match="without a gap"):  # what a symbol's last bars gave
        persistence.predict_frame(data.model_input(bars[bars["symbol"] == "AAA"].tail(meta.bars_needed)))
    example = input_example(bars, windows, meta)
    newest = int(windows.as_of.max())
    assert skipped == {} and len(example) == meta.bars_needed
    assert data.epoch_seconds(example["ts"])[-1] == newest
    assert list(persistence.predict_frame(example)["symbol"]) == [windows.symbol[windows.as_of.argmax()]]


@pytest.mark.parametrize("cap", [0, 500])
def test_prepared_slices_hold_exactly_the_features_every_window_would_have(bars_dir, cap):
    """The slices prepare_bars computes features for alone equal, to the bit, those windows built with all the rest."""
    bars = data.read_bars(bars_dir)
    cfg = TrainConfig(bars=bars_dir, **TINY, max_train_windows=cap)
    every, _, _ = build_windows(bars, cfg)
    position = {(s, int(t)): i for i, (s, t) in enumerate(zip(every.symbol, every.as_of, strict=True))}
    prepared = prepare_bars(bars, cfg)
    fitted = len(prepared.train) + len(prepared.validation)
    assert fitted < len(every) and (cap == 0 or len(prepared.train) == cap)
    assert prepared.windows.x.shape == (len(every), 0, every.x.shape[2])  # the index: no features kept
    for name in ("train", "validation", "calibration", "decision"):
        part = getattr(prepared, name)
        rows = [position[(s, int(t))] for s, t in zip(part.symbol, part.as_of, strict=True)]
        assert np.array_equal(part.x, every.x[rows]) and np.array_equal(part.y, every.y[rows]), name


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_decision_bars_give_the_decision_windows_exactly_their_features(bars_dir, share):
    """Cut to what the decision windows read, the bars give those windows the same features and no earlier window."""
    bars = data.read_bars(bars_dir)
    cfg = TrainConfig(bars=bars_dir, **TINY)
    windows, _, _ = build_windows(bars, cfg)
    cut_at = np.quantile(windows.as_of, 1 - share)
    dec = windows.take(np.flatnonzero(windows.as_of >= cut_at))
    cut = decision_bars(bars, dec, cfg.window)
    again, _, _ = build_windows(cut, replace(cfg, min_windows_per_symbol=1))
    assert len(cut) < len(bars)
    assert list(zip(again.symbol, again.as_of, strict=True)) == list(zip(dec.symbol, dec.as_of, strict=True))
    assert np.array_equal(again.x, dec.x) and np.array_equal(again.y, dec.y)
