"""The training job end to end on real MLflow (SQLite) and TensorFlow, on tiny data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from training_job.config import parse_args
from training_job.train import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_first_run_promotes_and_crippled_second_is_retained(trained):
    """v1 becomes champion; a crippled v2 is registered as challenger and champion stays v1."""
    assert (trained.first["version"], trained.first["decision"], trained.first["champion_version"]) == (
        "1",
        "promoted",
        None,
    )
    assert trained.first["metrics"]["champion"] is None
    assert (trained.second["version"], trained.second["decision"], trained.second["champion_version"]) == (
        "2",
        "retained",
        "1",
    )
    client = MlflowClient(trained.tracking_uri)
    name = trained.config.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    for who in ("model", "champion", "persistence"):
        assert set(trained.second["metrics"][who]) == {"rmse", "mae", "directional_accuracy"}
        assert math.isfinite(trained.second["metrics"][who]["rmse"])


def test_summary_files_match_the_returned_summary(trained):
    """--summary-out writes exactly the decision summary."""
    assert json.loads((trained.home / "first.json").read_text()) == trained.first
    assert json.loads((trained.home / "second.json").read_text()) == trained.second


def test_run_records_params_metrics_plots_profile_and_tags(trained):
    """The run holds every parameter, per-epoch losses, the figures, both PNGs and the profile."""
    client = MlflowClient(trained.tracking_uri)
    version = client.get_model_version(trained.config.model_name, "2")
    run = client.get_run(version.run_id)
    assert run.data.params["window"] == "20" and run.data.params["learning_rate"] == "5.0"
    assert {"model_rmse", "champion_rmse", "persistence_rmse", "model_directional_accuracy"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    assert run.data.tags["decision"] == "retained" and version.tags["decision"] == "retained"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"data_profile.json", "summary.json", "model", "plots"} <= artifacts
    assert plots == {"plots/loss_curve.png", "plots/predicted_vs_actual.png"}
    profile = json.loads(Path(client.download_artifacts(run.info.run_id, "data_profile.json")).read_text())
    assert set(profile["symbols"]) == {"AAA", "BBB", "CCC"} and profile["symbols"]["AAA"]["gaps_over_max"] == 1
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/MLmodel", "model/input_example.json", "model/code"} <= model_files


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


def test_no_usable_data_exits_nonzero_with_how_many_bars_are_needed(tmp_path, bars_dir, caplog):
    """Too little data per symbol: exit 2, naming the bars needed."""
    assert main(["--bars", str(bars_dir), "--min-windows-per-symbol", "100000"]) == 2
    assert "each needs at least 100071 contiguous bars" in caplog.text


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
