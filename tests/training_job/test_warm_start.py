"""Warm starts on real TensorFlow, tiny data: a fit starts from a champion's weights, or from scratch if they differ."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from devhost.market.feed import FeedConfig, write_bars
from tests.conftest import TINY, mlflow_registry, mlflow_store
from tests.training_job.azureml_mlflow import registry_uri
from training_job.config import TrainConfig
from training_job.features import FEATURES
from training_job.model import WarmStartError, fit, warm_start_from
from training_job.train import FINGERPRINT_TAG, TRAINED_UNTIL_TAG, run

WINDOW = 12
SMALL = dict(ar_lags=5, batch_size=64, patience=2, seed=7)


@pytest.fixture(scope="module")
def windows() -> dict[str, np.ndarray]:
    """Train and validation windows whose next return is linear in the last one and not in the one before.

    The linear part is what a fit starts from (its ridge AR path); the other is what training adds.
    """
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(900, WINDOW, len(FEATURES))) * 1e-3).astype(np.float32)
    y = 0.3 * x[:, -1, 0] + 0.8 * (np.abs(x[:, -2, 0]) - 0.8e-3) + rng.normal(size=900) * 0.5e-3
    y = y.astype(np.float32)
    symbols = np.array(["AAA", "BBB", "CCC"] * 300, dtype=object)
    return {"x": x[:600], "y": y[:600], "s": symbols[:600], "xv": x[600:], "yv": y[600:], "sv": symbols[600:]}


def _fit(w: dict[str, np.ndarray], **options: object):
    settings = {"units": 4, "learning_rate": 3e-3, "epochs": 2, "seeds": 2, **SMALL, **options}
    return fit(w["x"], w["y"], w["xv"], w["yv"], symbols_train=w["s"], symbols_val=w["sv"], **settings)


def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False)).reshape(-1)


@pytest.fixture(scope="module")
def champion(windows):
    """A trained two-member model, better than its linear start: the champion the warm starts below start from."""
    trained = _fit(windows, learning_rate=1e-2)
    assert trained.best_epoch > 0 and trained.best_val_loss < trained.initial_val_loss
    return trained


@pytest.mark.slow
def test_a_warm_start_begins_exactly_where_the_champion_ended(windows, champion):
    """Before any update the warm members are the champion's: same validation loss, same forecasts."""
    warm = warm_start_from(champion.model, 2)
    frozen = _fit(windows, warm=warm, learning_rate=0.0, epochs=1)  # one epoch that moves nothing
    assert warm.y_scale == pytest.approx(float(np.std(windows["y"])), rel=1e-6)
    assert frozen.warm and frozen.initial_val_loss == pytest.approx(champion.best_val_loss, rel=1e-4)
    assert frozen.shrinkage == pytest.approx(champion.shrinkage, rel=1e-5)
    np.testing.assert_allclose(
        _predict(frozen.model, windows["xv"]), _predict(champion.model, windows["xv"]), rtol=1e-5, atol=1e-9
    )


@pytest.mark.slow
def test_a_cold_start_begins_from_the_linear_model_not_the_champion(windows, champion):
    """From scratch the first member starts at its ridge AR path: another validation loss than the champion's."""
    cold = _fit(windows, epochs=1)
    warm = _fit(windows, warm=warm_start_from(champion.model, 2), epochs=1)
    assert not cold.warm and warm.warm
    assert abs(cold.initial_val_loss - champion.best_val_loss) > 1e-3 * champion.best_val_loss
    assert warm.initial_val_loss == pytest.approx(champion.best_val_loss, rel=1e-4)
    assert warm.best_val_loss <= warm.initial_val_loss  # early stopping never ends worse than the champion


@pytest.mark.slow
def test_weights_of_another_architecture_never_start_a_fit(windows, champion):
    """More members than the champion has, or wider ones, or no AR path: WarmStartError, before any epoch."""
    with pytest.raises(WarmStartError, match="not a model of 3 members"):
        warm_start_from(champion.model, 3)
    with pytest.raises(WarmStartError, match="shapes"):
        _fit(windows, units=6, warm=warm_start_from(champion.model, 2))
    with pytest.raises(WarmStartError, match="2 members to start from, 1 to train"):
        _fit(windows, seeds=1, warm=warm_start_from(champion.model, 2))
    plain = _fit(windows, ar_lags=0, epochs=1, seeds=1)
    with pytest.raises(WarmStartError, match="with an AR path"):
        warm_start_from(plain.model, 1)


@pytest.mark.integration
@pytest.mark.slow
def test_the_job_warm_starts_only_from_a_matching_champion_that_never_saw_the_slice(tmp_path, bars_dir, monkeypatch):
    """Cold after persistence; warm from v2 a day later; cold again when v2's data reaches into the unseen slices."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    more, most = tmp_path / "bars-more", tmp_path / "bars-most"
    write_bars(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=5, seed=3), more)
    write_bars(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=6, seed=3), most)
    with mlflow_store(f"sqlite:///{tmp_path}/mlflow.db"), mlflow_registry(registry_uri(tmp_path / "mlflow.db")):
        cfg = TrainConfig(bars=bars_dir, experiment="tests", **TINY)
        first = run(cfg)
        second = run(replace(cfg, bars=more))
        # a six-day window whose decision slice is the newest 60 %: its unseen slices start before v2's data ends
        third = run(replace(cfg, bars=most, history_days=6, decision_fraction=0.6))
        client = MlflowClient()
        tags = {v: client.get_model_version(cfg.model_name, v).tags for v in ("1", "2", "3", "4")}
    assert first["champion_after"]["version"] == "2" and second["champion_version"] == "2"
    assert first["training"]["warm_start"] == {
        "used": False,
        "from": None,
        "reason": "champion v1 is persistence: no weights to start from",
    }
    warm = second["training"]["warm_start"]
    assert (warm["used"], warm["from"]) == (True, "2") and warm["reason"].startswith("champion v2 has the same")
    assert second["training"]["epochs"]["max"] == min(TrainConfig().warm_epochs, TINY["epochs"])
    assert tags["3"]["warm_start_from"] == "2" and tags["3"][FINGERPRINT_TAG] == tags["2"][FINGERPRINT_TAG]
    # the lineage rule: v3's data ends at the later of its own fit's and v2's
    own = int(pd.Timestamp(second["training"]["trained_until"]).timestamp())
    assert int(tags["3"][TRAINED_UNTIL_TAG]) == max(own, int(tags["2"][TRAINED_UNTIL_TAG])) == own
    assert int(tags["1"][TRAINED_UNTIL_TAG]) > 0 and json.loads(tags["2"]["architecture"])["units"] == TINY["units"]
    champion = third["champion_version"]
    cold = third["training"]["warm_start"]
    assert cold["used"] is False and cold["from"] is None and third["training"]["history"]["days"] == 6
    assert cold["reason"].startswith(f"champion v{champion}'s weights learned from data up to ")
    assert "not before this tick's calibration and decision slices (from " in cold["reason"]
    assert tags["4"]["warm_start_from"] == "-" and third["training"]["epochs"]["max"] == TINY["epochs"]
