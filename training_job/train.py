"""Entry point of the training job: bars → features → LSTM-Attention → decision → MLflow.

``python -m training_job.train --bars PATH [options]``; MLflow comes from ``MLFLOW_TRACKING_URI``
(Azure ML sets it inside a job; locally it is ``sqlite:///…``).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import orjson
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from training_job import data, evaluate
from training_job.config import TrainConfig, parse_args
from training_job.features import WARMUP, Windows, concat, symbol_windows
from training_job.forecaster import Forecaster, ForecasterMeta, ForecasterModel, series_from_frame
from training_job.model import FitResult, fit
from training_job.registry import CHALLENGER, CHAMPION, ModelRegistry

log = logging.getLogger("training_job")
CODE_DIR = Path(__file__).resolve().parent


class NotEnoughDataError(SystemExit):
    """No symbol has enough bars: the job exits non-zero with how many it needs."""


SERVING_PACKAGES = ("mlflow", "tensorflow-cpu", "ta-lib", "pandas", "numpy", "orjson", "pyarrow")


def serving_requirements() -> list[str]:
    """Pins for the model's environment, from what trained it (saves MLflow's slow inference)."""
    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def build_windows(bars: pd.DataFrame, cfg: TrainConfig) -> tuple[Windows, dict[str, str]]:
    """Windows of every usable symbol, and the reason each skipped symbol was skipped."""
    parts, skipped = [], {}
    for symbol, (ts, ohlcv) in series_from_frame(bars).items():
        w = symbol_windows(symbol, ts, ohlcv, cfg.window, cfg.horizon, cfg.max_gap_minutes, with_target=True)
        if len(w) < cfg.min_windows_per_symbol:
            skipped[symbol] = f"{len(ts)} bars give {len(w)} windows, need {cfg.min_windows_per_symbol}"
            continue
        parts.append(w)
    if not parts:
        need = cfg.min_windows_per_symbol + cfg.window + WARMUP + cfg.horizon
        raise NotEnoughDataError(
            f"no symbol has enough data: each needs at least {need} contiguous bars "
            f"({cfg.min_windows_per_symbol} windows of {cfg.window} after {WARMUP} warm-up bars); skipped {skipped}"
        )
    return concat(parts), skipped


def _join(forecasts: pd.DataFrame, w: Windows) -> np.ndarray:
    """Predicted close aligned with the windows ``w`` (by symbol and as_of)."""
    key = pd.MultiIndex.from_arrays([forecasts["symbol"], data.epoch_seconds(forecasts["as_of"])])
    lookup = pd.Series(forecasts["predicted_close"].to_numpy(), index=key)
    return lookup.reindex(pd.MultiIndex.from_arrays([w.symbol, w.as_of])).to_numpy()


def _plots(fit_loss: list[float], val_loss: list[float], w: Windows, predicted: np.ndarray, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(fit_loss) + 1), fit_loss, label="train")
    ax.plot(range(1, len(val_loss) + 1), val_loss, label="validation")
    ax.set(xlabel="epoch", ylabel="MSE (target std units)", title="Loss", yscale="log")
    ax.legend()
    loss_png = out / "loss_curve.png"
    fig.savefig(loss_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    symbol = w.symbol[0]
    rows = np.flatnonzero(w.symbol == symbol)[-240:]
    fig, ax = plt.subplots(figsize=(10, 4))
    times = pd.to_datetime(w.target_ts[rows], unit="s", utc=True)
    ax.plot(times, w.target_close[rows], label="actual close", lw=1.2)
    ax.plot(times, predicted[rows], label="model", lw=1)
    ax.plot(times, w.last_close[rows], label="persistence", lw=0.8, ls="--")
    ax.set(title=f"{symbol}: predicted vs actual close on the decision slice", ylabel="price")
    ax.legend()
    pred_png = out / "predicted_vs_actual.png"
    fig.savefig(pred_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [loss_png, pred_png]


@dataclass(frozen=True)
class Prepared:
    """Bars turned into windows and split chronologically."""

    bars: pd.DataFrame
    windows: Windows
    split: evaluate.Split
    skipped: dict[str, str]
    train: Windows
    validation: Windows
    decision: Windows


def prepare(bars_folder: Path, cfg: TrainConfig) -> Prepared:
    """Read the true bars, build every usable window and split train / validation / decision."""
    bars = data.read_bars(bars_folder)
    windows, skipped = build_windows(bars, cfg)
    split = evaluate.chronological_split(windows, cfg.validation_fraction, cfg.decision_fraction)
    if min(len(split.train), len(split.validation), len(split.decision)) == 0:
        raise NotEnoughDataError(
            f"not enough time covered: train={len(split.train)} validation={len(split.validation)} "
            f"decision={len(split.decision)} windows"
        )
    parts = (windows.take(i) for i in (split.train, split.validation, split.decision))
    return Prepared(bars, windows, split, skipped, *parts)


def fit_model(train: Windows, val: Windows, cfg: TrainConfig, on_epoch: Any = None) -> FitResult:
    """Train the model with the config's hyper-parameters."""
    return fit(
        train.x,
        train.y,
        val.x,
        val.y,
        units=cfg.units,
        learning_rate=cfg.learning_rate,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        patience=cfg.patience,
        seed=cfg.seed,
        on_epoch=on_epoch,
    )


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate against champion and persistence, register, and decide; return the summary."""
    prepared = prepare(cfg.bars, cfg)
    bars, windows, skipped = prepared.bars, prepared.windows, prepared.skipped
    train, val, dec = prepared.train, prepared.validation, prepared.decision
    profile = data.profile(bars, cfg.max_gap_minutes)
    mlflow.set_experiment(cfg.experiment)
    run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    client = MlflowClient()
    registry = ModelRegistry(client, cfg.model_name)
    with mlflow.start_run(run_name=run_name) as active, tempfile.TemporaryDirectory() as tmp:
        run_id = active.info.run_id
        log.info("run=%s windows train=%d val=%d decision=%d", run_name, len(train), len(val), len(dec))
        mlflow.log_params({k: str(v) for k, v in cfg.__dict__.items()})
        mlflow.log_params(
            {
                "symbols": ",".join(sorted(set(windows.symbol))),
                "windows_train": len(train),
                "windows_validation": len(val),
                "windows_decision": len(dec),
                "skipped_symbols": ",".join(skipped) or "-",
            }
        )
        mlflow.log_dict({**profile, "skipped": skipped}, "data_profile.json")

        def on_epoch(epoch: int, logs: dict) -> None:
            mlflow.log_metrics({"loss": logs["loss"], "val_loss": logs["val_loss"]}, step=epoch + 1)
            log.info("run=%s epoch=%d loss=%.3g val_loss=%.3g", run_name, epoch + 1, logs["loss"], logs["val_loss"])

        result = fit_model(train, val, cfg, on_epoch)
        mlflow.log_metric("best_epoch", result.best_epoch)
        meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes)
        forecaster_dir = Forecaster.save(result.model, meta, Path(tmp) / "forecaster")
        forecaster = Forecaster(result.model, meta)

        # every predictor is scored through the same pyfunc path on the same unseen slice
        model_close = _join(forecaster.predict_frame(bars, latest_only=False), dec)
        champion_version = registry.version_for(CHAMPION)
        champion_close = None
        if champion_version is not None:
            champion = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}/{champion_version}")
            champion_close = _join(champion.predict(data.model_input(bars), params={"mode": "all"}), dec)
        figures = {
            "model": evaluate.metrics(model_close, dec.target_close, dec.last_close),
            "champion": None
            if champion_close is None
            else evaluate.metrics(champion_close, dec.target_close, dec.last_close),
            "persistence": evaluate.metrics(dec.last_close, dec.target_close, dec.last_close),
        }
        decision, reason = evaluate.decide(
            figures["model"], figures["champion"], figures["persistence"], cfg.min_improvement, cfg.baseline_tolerance
        )
        for who, values in figures.items():
            if values:
                mlflow.log_metrics({f"{who}_{k}": v for k, v in values.items()})
        for png in _plots(result.loss, result.val_loss, dec, model_close, Path(tmp)):
            mlflow.log_artifact(str(png), "plots")

        example = (
            bars[bars["symbol"] == dec.symbol[0]].tail(meta.bars_needed)[data.BAR_COLUMNS[:-1]].reset_index(drop=True)
        )
        example["ts"] = example["ts"].dt.tz_convert("UTC").dt.tz_localize(None)  # MLflow schemas: naive UTC
        signature = infer_signature(example, forecaster.predict_frame(example), params={"mode": "latest"})
        model_dir = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            model_dir,
            python_model=ForecasterModel(),
            artifacts={"forecaster": str(forecaster_dir)},
            code_paths=[str(CODE_DIR)],
            signature=signature,
            input_example=example,
            pip_requirements=serving_requirements(),
        )
        mlflow.log_artifacts(str(model_dir), "model")
        tags = {
            "decision": decision,
            "reason": reason,
            "run_name": run_name,
            "decision_rmse": f"{figures['model']['rmse']:.6g}",
            "persistence_rmse": f"{figures['persistence']['rmse']:.6g}",
        }
        if figures["champion"]:  # the Function App reports all three figures from the version's tags
            tags["champion_rmse"] = f"{figures['champion']['rmse']:.6g}"
        version = registry.register(f"{active.info.artifact_uri}/model", run_id, tags)
        registry.assign(CHALLENGER, version)
        if decision == "promoted":
            registry.assign(CHAMPION, version)
        mlflow.set_tags({**tags, "model_version": version, "champion_version": champion_version or "-"})
        summary = {
            "version": version,
            "decision": decision,
            "reason": reason,
            "champion_version": champion_version,
            "metrics": figures,
        }
        mlflow.log_dict(summary, "summary.json")
        log.info("run=%s version=%s decision=%s reason=%s", run_name, version, decision, reason)
    if cfg.summary_out:
        Path(cfg.summary_out).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the job from the command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("mlflow", "absl", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = parse_args(argv)
    try:
        summary = run(cfg)
    except (NotEnoughDataError, data.NoDataError) as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
