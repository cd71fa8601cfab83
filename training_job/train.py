"""Entry point of the training job: bars → features → LSTM-Attention → decision → MLflow.

``python -m training_job.train --bars PATH [options]``; MLflow comes from ``MLFLOW_TRACKING_URI``
(Azure ML sets it inside a job; locally it is ``sqlite:///…``).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
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
from training_job.forecaster import (
    LSTM_ATTENTION,
    MODEL_CONFIG,
    PERSISTENCE,
    Forecaster,
    ForecasterMeta,
    ForecasterModel,
    ForecastInputError,
    series_from_frame,
)
from training_job.model import FitResult, fit
from training_job.registry import CHALLENGER, CHAMPION, KIND_TAG, ModelRegistry

log = logging.getLogger("training_job")
CODE_DIR = Path(__file__).resolve().parent
# the name of the model's copy of CODE_DIR: the pickled model and score.py import it as this package, while
# in Azure ML CODE_DIR is the uploaded working directory, named otherwise (job.yml links it as training_job)
CODE_PACKAGE = "training_job"


class NotEnoughDataError(SystemExit):
    """No symbol has enough bars: the job exits non-zero with how many it needs."""


SERVING_PACKAGES = (
    "mlflow",
    "tensorflow-cpu",
    "ai-edge-litert",
    "ta-lib",
    "pandas",
    "numpy",
    "orjson",
    "pyarrow",
    "exchange-calendars",
)


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
    for symbol, rows in bars.groupby("symbol", sort=True):
        try:  # one symbol's bad bars must never stop the others from training
            [(ts, ohlcv)] = series_from_frame(rows).values()
            w = symbol_windows(symbol, ts, ohlcv, cfg.window, cfg.horizon, cfg.max_gap_minutes, with_target=True)
        except (ForecastInputError, ValueError, FloatingPointError) as exc:
            log.warning("symbol %s skipped: %s", symbol, exc)
            skipped[symbol] = f"unusable bars: {exc}"
            continue
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


def predicted_returns(forecasts: pd.DataFrame, w: Windows) -> np.ndarray:
    """Predicted log returns aligned with the windows ``w`` (by symbol and as_of); NaN where missing."""
    key = pd.MultiIndex.from_arrays([forecasts["symbol"], data.epoch_seconds(forecasts["as_of"])])
    lookup = pd.Series(forecasts["predicted_return"].to_numpy(dtype=np.float64), index=key)
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    return lookup.reindex(pd.MultiIndex.from_arrays([w.symbol, w.as_of])).to_numpy()


def _plots(fit_loss: list[float], val_loss: list[float], w: Windows, predicted: np.ndarray, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(fit_loss) + 1), fit_loss, label="train")
    ax.plot(range(1, len(val_loss) + 1), val_loss, label="validation")
    ax.set(xlabel="epoch", ylabel="weighted MSE (target std units)", title="Loss (first member)", yscale="log")
    ax.legend()
    loss_png = out / "loss_curve.png"
    fig.savefig(loss_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    symbol = w.symbol[0]
    rows = np.flatnonzero(w.symbol == symbol)[-240:]
    fig, ax = plt.subplots(figsize=(10, 4))
    times = pd.to_datetime(w.target_ts[rows], unit="s", utc=True)
    ax.plot(times, w.target_close[rows], label="actual close", lw=1.2)
    ax.plot(times, w.last_close[rows] * np.exp(predicted[rows]), label="model", lw=1)
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
        symbols_train=train.symbol,
        symbols_val=val.symbol,
        units=cfg.units,
        ar_lags=cfg.ar_lags,
        learning_rate=cfg.learning_rate,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        patience=cfg.patience,
        seed=cfg.seed,
        seeds=cfg.seeds,
        on_epoch=on_epoch,
    )


def interval_scale(forecaster: Forecaster, val: Windows, level: float) -> float:
    """Split-conformal quantile of |error| / window volatility on the validation slice."""
    errors = np.abs(val.y.astype(np.float64) - forecaster.forward(val.x).astype(np.float64))
    return evaluate.conformal_quantile(errors / val.volatility, level)


def skill(model_log_rmse: float, persistence_log_rmse: float, test: evaluate.DMTest | None, n: int) -> dict:
    """What a version showed on its decision slice: log-RMSE ratio to persistence, p-value, n."""
    ratio = model_log_rmse / persistence_log_rmse if persistence_log_rmse > 0 else 1.0
    return {
        "ratio_to_persistence": round(ratio, 6),
        "p_value": None if test is None or test.p_value is None else round(test.p_value, 6),
        "n": int(n),
        "evaluated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def input_example(bars: pd.DataFrame, windows: Windows, meta: ForecasterMeta) -> pd.DataFrame:
    """The bars of the newest window in ``windows``: a request every model of this run accepts.

    Not simply a symbol's last bars: those may end after a gap (a live feed resuming after a
    backfill), which no model scores, and the signature is inferred by scoring the example.
    """
    i = int(np.argmax(windows.as_of))
    rows = bars[bars["symbol"] == windows.symbol[i]]
    rows = rows[data.epoch_seconds(rows["ts"]) <= windows.as_of[i]]
    return data.model_input(rows.tail(meta.bars_needed))


def save_pyfunc(forecaster: Forecaster, example: pd.DataFrame, out: Path) -> Path:
    """Write ``forecaster`` as an MLflow pyfunc folder (model, settings and this package as code)."""
    parts = out.parent / f"{out.name}-parts"
    forecaster_dir = Forecaster.save(forecaster.model, forecaster.meta, parts / "forecaster")
    code = shutil.copytree(CODE_DIR, parts / CODE_PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "mlruns"))
    signature = infer_signature(example, forecaster.predict_frame(example), params={"mode": "latest"})
    mlflow.pyfunc.save_model(
        out,
        python_model=ForecasterModel(),
        artifacts={"forecaster": str(forecaster_dir)},
        model_config=MODEL_CONFIG,
        code_paths=[str(code)],  # MLflow names the copy after the folder
        signature=signature,
        input_example=example,
        pip_requirements=serving_requirements(),
    )
    return out


def register_persistence(
    registry: ModelRegistry, prepared: Prepared, cfg: TrainConfig, run_id: str, artifact_uri: str, tmp: Path
) -> str:
    """Register the "no change" forecaster as a version (tag ``kind=persistence``); return it.

    It carries the same contract and serving path as a trained model, and its intervals come
    from persistence's own validation errors, so the endpoint always has something honest to serve.
    """
    dec = prepared.decision
    meta = ForecasterMeta(
        cfg.window, cfg.horizon, cfg.max_gap_minutes, kind=PERSISTENCE, interval_level=cfg.interval_level
    )
    forecaster = Forecaster.persistence(meta)
    q = interval_scale(forecaster, prepared.validation, cfg.interval_level)
    log_rmse = float(np.sqrt(np.mean(dec.y.astype(np.float64) ** 2)))
    meta = replace(forecaster.meta, interval_q=q, skill=skill(log_rmse, log_rmse, None, len(dec)))
    forecaster = Forecaster.persistence(meta)
    save_pyfunc(forecaster, input_example(prepared.bars, dec, meta), tmp / "persistence")
    mlflow.log_artifacts(str(tmp / "persistence"), "persistence_model")
    version = registry.register(
        f"{artifact_uri}/persistence_model", run_id, {KIND_TAG: PERSISTENCE, "interval_q": f"{q:.6g}"}
    )
    log.info("model=%s registered persistence as version %s", cfg.model_name, version)
    return version


def _score_champion(
    registry: ModelRegistry, version: str, bars: pd.DataFrame, dec: Windows, run_name: str
) -> tuple[np.ndarray | None, str | None]:
    """The champion's predicted returns on the decision windows, or why it could not be scored."""
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{registry.name}/{version}")
        return predicted_returns(champion.predict(data.model_input(bars), params={"mode": "all"}), dec), None
    except Exception as exc:  # a champion that cannot be loaded or scored must not stop training for good
        log.exception("run=%s champion v%s could not be scored", run_name, version)
        return None, f"champion v{version} could not be scored ({type(exc).__name__}: {exc})"


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, test against champion and persistence on the decision slice, register, and decide."""
    prepared = prepare(cfg.bars, cfg)
    bars, windows, skipped = prepared.bars, prepared.windows, prepared.skipped
    train, val, dec = prepared.train, prepared.validation, prepared.decision
    profile = data.profile(bars, cfg.max_gap_minutes)
    mlflow.set_experiment(cfg.experiment)
    run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    registry = ModelRegistry(MlflowClient(), cfg.model_name)
    with mlflow.start_run(run_name=run_name) as active, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_id, artifact_uri = active.info.run_id, active.info.artifact_uri
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

        persistence_version = registry.persistence_version()
        if persistence_version is None:
            persistence_version = register_persistence(registry, prepared, cfg, run_id, artifact_uri, tmp)
            if registry.version_for(CHAMPION) is None:
                registry.assign(CHAMPION, persistence_version)
        champion_version = registry.version_for(CHAMPION) or persistence_version
        champion_kind = registry.kind_of(champion_version)

        def on_epoch(epoch: int, logs: dict) -> None:
            mlflow.log_metrics({"loss": logs["loss"], "val_loss": logs["val_loss"]}, step=epoch + 1)
            log.info("run=%s epoch=%d loss=%.3g val_loss=%.3g", run_name, epoch + 1, logs["loss"], logs["val_loss"])

        result = fit_model(train, val, cfg, on_epoch)
        mlflow.log_metrics({"best_epoch": result.best_epoch, "shrinkage": result.shrinkage, "seeds": result.seeds})
        meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes, interval_level=cfg.interval_level)
        forecaster = Forecaster(result.model, meta)
        q = interval_scale(forecaster, val, cfg.interval_level)
        forecaster.meta = meta = replace(meta, interval_q=q)

        # every predictor is scored through the pyfunc path on the same unseen windows: each window's
        # features come from exactly the bars a live request sends, so this scores what is served
        model_ret = predicted_returns(forecaster.predict_frame(bars, latest_only=False), dec)
        champion_ret, champion_error = np.zeros(len(dec)), None
        if champion_kind != PERSISTENCE:
            champion_ret, champion_error = _score_champion(registry, champion_version, bars, dec, run_name)
        common = np.isfinite(model_ret) & (np.isfinite(champion_ret) if champion_ret is not None else True)
        d = dec.take(np.flatnonzero(common))
        model_ret = model_ret[common]
        y = d.y.astype(np.float64)
        losses = {"model": (model_ret - y) ** 2, "persistence": y**2}
        if champion_ret is not None:
            losses["champion"] = (champion_ret[common] - y) ** 2
        decision = evaluate.gate(
            losses["model"],
            losses["persistence"],
            losses.get("champion"),
            champion_kind == PERSISTENCE,
            cfg.alpha,
            cfg.horizon,
        )
        demoted = decision.demoted or champion_error is not None
        reason = decision.reason if champion_error is None else f"{champion_error}: demoted; {decision.reason}"
        figures = {
            "model": evaluate.metrics(model_ret, y, d.last_close),
            "champion": None
            if champion_ret is None
            else evaluate.metrics(champion_ret[common], y, d.last_close, champion_kind == PERSISTENCE),
            "persistence": evaluate.metrics(np.zeros(len(d)), y, d.last_close, persistence=True),
        }
        half = q * d.volatility
        interval = {"level": cfg.interval_level, "q": q, "coverage": evaluate.coverage(model_ret, y, half)}
        tests = {
            "vs_champion": decision.vs_champion.as_dict() if decision.vs_champion else None,
            "vs_persistence": decision.vs_persistence.as_dict(),
            "champion_vs_persistence": decision.champion_vs_persistence.as_dict()
            if decision.champion_vs_persistence
            else None,
        }
        for who, values in figures.items():
            if values:
                mlflow.log_metrics({f"{who}_{k}": v for k, v in values.items() if v is not None})
        for name, test in tests.items():
            if test:
                mlflow.log_metrics({f"{name}_{k}": v for k, v in test.items() if v is not None})
        mlflow.log_metrics({"interval_coverage": interval["coverage"], "interval_q": q, "n_decision": len(d)})
        for png in _plots(result.loss, result.val_loss, d, model_ret, tmp):
            mlflow.log_artifact(str(png), "plots")
        table = pd.DataFrame(
            {
                "symbol": d.symbol.astype(str),
                "as_of": d.as_of,
                "actual_return": y,
                "model": model_ret,
                "champion": np.nan if champion_ret is None else champion_ret[common],
                "half_width": half,
            }
        )
        table.to_parquet(tmp / "decision_forecasts.parquet")
        mlflow.log_artifact(str(tmp / "decision_forecasts.parquet"))

        forecaster.meta = meta = replace(
            meta,
            skill=skill(
                figures["model"]["log_rmse"], figures["persistence"]["log_rmse"], decision.vs_persistence, len(d)
            ),
        )
        save_pyfunc(forecaster, input_example(bars, d, meta), tmp / "model")
        mlflow.log_artifacts(str(tmp / "model"), "model")
        tags = {
            KIND_TAG: LSTM_ATTENTION,
            "decision": decision.decision,
            "reason": reason[:4000],
            "run_name": run_name,
            "decision_rmse": f"{figures['model']['rmse']:.6g}",
            "decision_log_rmse": f"{figures['model']['log_rmse']:.6g}",
            "persistence_rmse": f"{figures['persistence']['rmse']:.6g}",
            "persistence_log_rmse": f"{figures['persistence']['log_rmse']:.6g}",
            "n_decision": str(len(d)),
            "p_vs_persistence": _fmt(decision.vs_persistence.p_value),
            "p_vs_champion": _fmt(decision.vs_champion.p_value if decision.vs_champion else None),
            "interval_coverage": f"{interval['coverage']:.4f}",
        }
        if figures["champion"]:  # the Function App reports all three figures from the version's tags
            tags["champion_rmse"] = f"{figures['champion']['rmse']:.6g}"
        version = registry.register(f"{artifact_uri}/model", run_id, tags)
        registry.assign(CHALLENGER, version)
        champion_after = champion_version
        if decision.decision == evaluate.PROMOTED:
            champion_after = version
        elif demoted:
            champion_after = persistence_version
        if champion_after != champion_version or registry.version_for(CHAMPION) != champion_after:
            registry.assign(CHAMPION, champion_after)
        after_kind = LSTM_ATTENTION if champion_after == version else registry.kind_of(champion_after)
        mlflow.set_tags(
            {**tags, "model_version": version, "champion_version": champion_version, "champion_after": champion_after}
        )
        summary = {
            "version": version,
            "kind": LSTM_ATTENTION,
            "decision": decision.decision,
            "reason": reason,
            "champion_version": champion_version,
            "champion_after": {"version": champion_after, "kind": after_kind},
            "demoted": demoted,
            "n_decision": len(d),
            "alpha": cfg.alpha,
            "tests": tests,
            "interval": interval,
            "shrinkage": result.shrinkage,
            "metrics": figures,
        }
        mlflow.log_dict(summary, "summary.json")
        log.info(
            "run=%s version=%s decision=%s champion=%s(%s) reason=%s",
            run_name,
            version,
            decision.decision,
            champion_after,
            after_kind,
            reason,
        )
    if cfg.summary_out:
        Path(cfg.summary_out).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


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
