"""Entry point of the training job: bars → features → LSTM-Attention → decision → MLflow.

``python -m training_job.train --bars PATH [options]``; MLflow comes from ``MLFLOW_TRACKING_URI``
(Azure ML sets it inside a job; locally it is ``sqlite:///…``). Where ``TF_CONFIG`` names several
workers (Azure ML's TensorFlow distribution over several nodes), they fit together and the chief
alone does the rest (:mod:`training_job.cluster`).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Sized
from dataclasses import dataclass, field, replace
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

from training_job import data, evaluate, intervals
from training_job.cluster import STOP, Workers
from training_job.config import TrainConfig, parse_args
from training_job.features import (
    FEATURES,
    WARMUP,
    Windows,
    bars_needed,
    concat,
    symbol_windows,
    window_ends,
    with_features,
)
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
from training_job.model import FitResult, WarmStart, WarmStartError, architecture, fingerprint, fit, warm_start_from
from training_job.registry import CHALLENGER, CHAMPION, KIND_TAG, ModelRegistry

log = logging.getLogger("training_job")
CODE_DIR = Path(__file__).resolve().parent
# the name of the model's copy of CODE_DIR: the pickled model and score.py import it as this package, while
# in Azure ML CODE_DIR is the uploaded working directory, named otherwise (job.yml links it as training_job)
CODE_PACKAGE = "training_job"
EVIDENCE_TAG = "evidence"  # the version tag holding the promotion record (evaluate.Evidence as JSON)
# version tags a warm start is decided on: the architecture its weights fit (a hash, and the spec it hashes)
# and the newest minute (unix s) any data its weights learned from reached, over its whole lineage
FINGERPRINT_TAG = "fingerprint"
ARCHITECTURE_TAG = "architecture"
TRAINED_UNTIL_TAG = "trained_until"
WARM, FULL = "warm", "full"
DAY = 86_400


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


@dataclass(frozen=True)
class WindowIndex:
    """Every usable window of the bars without its features, and what :func:`with_features` needs to compute them."""

    windows: Windows  # x is empty: (m, 0, features)
    series: dict[str, tuple[np.ndarray, list[np.ndarray]]]  # per symbol: bar times, and OHLCV as float64
    skipped: dict[str, str]  # symbol: why it gives no window
    without_target: dict[str, dict[str, int]]  # symbol: windows dropped for want of a target bar

    def features(self, idx: np.ndarray, cfg: TrainConfig) -> Windows:
        """The windows at ``idx`` with their features; one with a non-finite feature is left out."""
        return with_features(self.windows.take(idx), self.series, cfg.window)


def index_windows(bars: pd.DataFrame, cfg: TrainConfig) -> WindowIndex:
    """The windows of every usable symbol, their features not yet computed; why each skipped symbol was skipped.

    A window's target is the bar exactly ``cfg.horizon`` minutes after its last one; the windows whose
    target minute has no bar are dropped and counted per symbol: ``in_segment`` (a missing minute while
    the bars go on) and ``at_gap`` (the bars stop for longer than ``max_gap_minutes``: a close, a halt).
    Features are the tick's largest cost, and most windows of a long history are never fitted on
    (the fit samples ``max_train_windows``), so they are computed for the windows kept only.
    """
    parts, series, skipped, without_target = [], {}, {}, {}
    for symbol, rows in bars.groupby("symbol", sort=True):
        try:  # one symbol's bad bars must never stop the others from training
            [(ts, ohlcv)] = series_from_frame(rows).values()
            w = symbol_windows(
                symbol, ts, ohlcv, cfg.window, cfg.horizon, cfg.max_gap_minutes, with_target=True, features=False
            )
        except (ForecastInputError, ValueError, FloatingPointError) as exc:
            log.warning("symbol %s skipped: %s", symbol, exc)
            skipped[symbol] = f"unusable bars: {exc}"
            continue
        ends = window_ends(ts, cfg.window, cfg.horizon, cfg.max_gap_minutes, with_target=True)
        without_target[symbol] = {"in_segment": ends.missing_in_segment, "at_gap": ends.missing_at_gap}
        if len(w) < cfg.min_windows_per_symbol:
            skipped[symbol] = f"{len(ts)} bars give {len(w)} windows, need {cfg.min_windows_per_symbol}"
            continue
        parts.append(w)
        series[symbol] = (ts, [np.ascontiguousarray(col, dtype=np.float64) for col in ohlcv])
    if not parts:
        need = cfg.min_windows_per_symbol + cfg.window + WARMUP + cfg.horizon
        raise NotEnoughDataError(
            f"no symbol has enough data: each needs at least {need} contiguous bars "
            f"({cfg.min_windows_per_symbol} windows of {cfg.window} after {WARMUP} warm-up bars); skipped {skipped}"
        )
    return WindowIndex(concat(parts), series, skipped, without_target)


def build_windows(bars: pd.DataFrame, cfg: TrainConfig) -> tuple[Windows, dict[str, str], dict[str, dict[str, int]]]:
    """Every window of :func:`index_windows` with its features, why each skipped symbol was skipped, and the drops.

    The drops are the windows left out per symbol for want of a target bar (:func:`index_windows`).
    """
    index = index_windows(bars, cfg)
    return index.features(np.arange(len(index.windows)), cfg), index.skipped, index.without_target


def history_start(newest: int, days: int) -> int | None:
    """Where a history of ``days`` trading days ending at the bar ``newest`` (unix s) starts; None: all history.

    Trading days are weekdays, counted on UTC dates with the newest bar's own day as the first (a
    weekend rolls back to Friday): a window holds the same number of sessions whatever the weekday,
    where calendar days would give a Monday tick two sessions fewer than a Friday one. Holidays are
    not known across exchanges, so a window that spans one holds a session fewer.
    """
    if days <= 0:
        return None
    first = np.busday_offset(np.datetime64(int(newest) // DAY, "D"), -(days - 1), roll="backward")
    return int(first.astype("datetime64[s]").astype(np.int64))


@dataclass(frozen=True)
class History:
    """The bars a tick read: the mode that chose the window, its trading days and the span they cover."""

    mode: str
    days: int  # 0: all history
    since: int | None  # unix s: 00:00 UTC of the window's first weekday; None: all history
    until: int  # unix s: the newest bar read
    bars: int

    def as_dict(self) -> dict[str, Any]:
        """The window as plain JSON values (ISO UTC times)."""
        return {
            "days": self.days,
            "since": evaluate.utc_minute(self.since),
            "until": evaluate.utc_minute(self.until),
            "bars": self.bars,
        }


def span(history: History | None) -> tuple[str, str]:
    """The first and last minute a tick's history covers, as logs and params show them ("-" for none)."""
    if history is None:
        return "-", "-"
    return evaluate.utc_minute(history.since), evaluate.utc_minute(history.until)


def read_history(folder: Path, cfg: TrainConfig, now: float | None = None) -> tuple[pd.DataFrame, History]:
    """The true bars of the tick's history window: the last ``history_days`` (``full_history_days`` in full mode).

    The window ends at the newest bar, not the clock, so a replay of old bars trains as live ones do.
    """
    days = cfg.full_history_days if cfg.mode == FULL else cfg.history_days
    hint = data.newest_bar_hint(folder, now) if days > 0 else None
    bars = data.read_bars(folder, now=now, since=None if hint is None else history_start(hint, days))
    ts = data.epoch_seconds(bars["ts"])
    newest = int(ts.max())
    since = history_start(newest, days)
    if since is not None and (ts < since).any():  # the hint fell short of the newest bar: more was read
        bars = bars[ts >= since].reset_index(drop=True)
    return bars, History(cfg.mode, max(days, 0), since, newest, len(bars))


def fair_shares(counts: np.ndarray, cap: int) -> np.ndarray:
    """How many of each group's ``counts`` items to keep so that at most ``cap`` are kept, as evenly as they allow.

    Water filling: a group with fewer items than an equal share keeps all of them, and what it
    leaves is shared among the others.
    """
    counts = np.asarray(counts, dtype=np.int64)
    shares = np.zeros_like(counts)
    left = int(cap)
    order = np.argsort(counts, kind="stable")
    for i, group in enumerate(order):
        shares[group] = min(int(counts[group]), left // (len(order) - i))
        left -= int(shares[group])
    return shares


def sample_windows(symbols: np.ndarray, as_of: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices of at most ``cap`` windows, shared evenly across symbols and spread evenly over each one's time.

    Each symbol's share (:func:`fair_shares`) takes one window from each of as many equal runs of
    its windows in time order, at a position drawn from ``seed`` and the symbol's name: the same
    bars and seed give the same sample, and a symbol's sample does not move when another is added.
    ``cap`` of 0, or no more windows than it: every window.
    """
    n = len(symbols)
    if cap <= 0 or n <= cap:
        return np.arange(n)
    names, inverse = np.unique(np.asarray(symbols).astype(str), return_inverse=True)
    shares = fair_shares(np.bincount(inverse, minlength=len(names)), cap)
    picked = []
    for k, name in enumerate(names):
        rows = np.flatnonzero(inverse == k)
        rows = rows[np.argsort(np.asarray(as_of)[rows], kind="stable")]
        share = int(shares[k])
        if share >= len(rows):
            picked.append(rows)
            continue
        if share == 0:
            continue
        edges = np.floor(np.linspace(0, len(rows), share + 1)).astype(np.int64)  # each run holds ≥ 1 window
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        offsets = np.floor(rng.random(share) * (edges[1:] - edges[:-1])).astype(np.int64)
        picked.append(rows[edges[:-1] + offsets])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class WarmPlan:
    """Whether this tick's members start from the champion's weights, and why (or why not)."""

    use: bool
    source: str | None  # the champion version whose weights start the fit
    reason: str
    source_trained_until: int | None = None  # the newest minute its lineage's data reached


def plan_warm_start(
    mode: str,
    champion: str,
    champion_kind: str,
    tags: dict[str, str],
    spec: dict[str, Any],
    unseen_from: int,
) -> WarmPlan:
    """Start from ``champion``'s weights only where it is trained, of this architecture, and never saw these slices.

    ``tags`` are the champion's version tags; ``spec`` is this run's :func:`training_job.model.architecture`.
    Honesty first: a decision judges a challenger only on minutes it has not seen, and the intervals
    are calibrated on errors of unseen windows, so the weights it starts from must have learned from
    data (over their whole lineage) older than ``unseen_from``, the first minute of this tick's
    calibration slice, which the decision slice follows; otherwise, as on any doubt, from scratch.
    """
    if mode == FULL:
        return WarmPlan(False, None, "full retrain: from scratch")
    if champion_kind == PERSISTENCE:
        return WarmPlan(False, None, f"champion v{champion} is persistence: no weights to start from")
    found = tags.get(FINGERPRINT_TAG)
    if found is None:
        return WarmPlan(False, None, f"champion v{champion} records no architecture (registered before warm starts)")
    if found != fingerprint(spec):
        return WarmPlan(False, None, f"champion v{champion}'s architecture differs: {_differences(tags, spec)}")
    try:
        until = int(tags[TRAINED_UNTIL_TAG])
    except (KeyError, ValueError):
        return WarmPlan(False, None, f"champion v{champion} does not record when its training data ends")
    if until >= unseen_from:
        return WarmPlan(
            False,
            None,
            f"champion v{champion}'s weights learned from data up to {evaluate.utc_minute(until)}, not before "
            f"this tick's calibration and decision slices (from {evaluate.utc_minute(unseen_from)})",
        )
    return WarmPlan(
        True,
        champion,
        f"champion v{champion} has the same architecture and its weights learned from data up to "
        f"{evaluate.utc_minute(until)}, before this tick's calibration and decision slices "
        f"(from {evaluate.utc_minute(unseen_from)})",
        until,
    )


def _differences(tags: dict[str, str], spec: dict[str, Any]) -> str:
    """Which architecture settings differ, where the champion's spec is readable; else its fingerprint."""
    try:
        theirs = json.loads(tags[ARCHITECTURE_TAG])
    except (KeyError, ValueError):
        return f"fingerprint {tags.get(FINGERPRINT_TAG)} against {fingerprint(spec)}"
    changed = [f"{key} {theirs.get(key)} → {spec[key]}" for key in spec if theirs.get(key) != spec[key]]
    return ", ".join(changed) or f"fingerprint {tags.get(FINGERPRINT_TAG)} against {fingerprint(spec)}"


def lineage_trained_until(own: int, source: int | None) -> int:
    """The newest minute the data behind a version's weights reached: its own fit's, or its source's if later."""
    return own if source is None else max(own, source)


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
    windows: Windows  # every window the split cut, without features (x is (m, 0, features)): the slices have them
    split: evaluate.Split
    skipped: dict[str, str]
    train: Windows
    validation: Windows  # early stopping and shrinkage
    calibration: Windows  # the intervals' conformal calibration, and nothing else
    decision: Windows
    without_target: dict[str, dict[str, int]]  # windows dropped per symbol: no bar at the target minute
    history: History | None = None  # the window of bars read (None: bars handed in, not read)
    # windows the fit uses of those the split gave: {"train", "train_available", "validation", "validation_available"}
    sampled: dict[str, int] = field(default_factory=dict)


def prepare(bars_folder: Path, cfg: TrainConfig) -> Prepared:
    """Read the tick's history window of true bars (:func:`read_history`) and prepare them (:func:`prepare_bars`)."""
    bars, history = read_history(bars_folder, cfg)
    return prepare_bars(bars, cfg, history)


def prepare_bars(bars: pd.DataFrame, cfg: TrainConfig, history: History | None = None) -> Prepared:
    """Build every usable window of ``bars``, split train / validation / calibration / decision, and cap the fit's.

    At most ``max_train_windows`` training windows (:func:`sample_windows`), and validation windows
    in the same proportion, so a tick's fit costs the same however many symbols there are; the
    calibration and decision slices keep every window, so every symbol is judged.
    """
    index = index_windows(bars, cfg)
    windows = index.windows
    split = evaluate.chronological_split(
        windows, cfg.validation_fraction, cfg.decision_fraction, cfg.calibration_fraction
    )
    _enough_time(split.train, split.validation, split.calibration, split.decision)
    train, val = split.train, split.validation
    if 0 < cfg.max_train_windows < len(train):
        share = cfg.max_train_windows / len(train)
        train = train[sample_windows(windows.symbol[train], windows.as_of[train], cfg.max_train_windows, cfg.seed)]
        val_cap = max(1, math.ceil(share * len(val)))
        val = val[sample_windows(windows.symbol[val], windows.as_of[val], val_cap, cfg.seed + 1)]
    slices = [index.features(idx, cfg) for idx in (train, val, split.calibration, split.decision)]
    _enough_time(*slices)
    sampled = {
        "train": len(slices[0]),
        "train_available": len(split.train),
        "validation": len(slices[1]),
        "validation_available": len(split.validation),
    }
    return Prepared(bars, windows, split, index.skipped, *slices, index.without_target, history, sampled)


def _enough_time(train: Sized, validation: Sized, calibration: Sized, decision: Sized) -> None:
    """Raise NotEnoughDataError when a slice has no window."""
    if min(len(train), len(validation), len(calibration), len(decision)) == 0:
        raise NotEnoughDataError(
            f"not enough time covered: train={len(train)} validation={len(validation)} "
            f"calibration={len(calibration)} decision={len(decision)} windows"
        )


def fit_settings(cfg: TrainConfig, warm: bool) -> dict[str, Any]:
    """The config's hyper-parameters as :func:`training_job.model.fit` takes them; fewer epochs when ``warm``."""
    return {
        "units": cfg.units,
        "ar_lags": cfg.ar_lags,
        "learning_rate": cfg.learning_rate,
        "epochs": max_epochs(cfg, warm),
        "batch_size": cfg.batch_size,
        "patience": cfg.patience,
        "seed": cfg.seed,
        "seeds": cfg.seeds,
    }


def fit_model(
    train: Windows,
    val: Windows,
    cfg: TrainConfig,
    on_epoch: Any = None,
    warm: WarmStart | None = None,
    workers: Workers | None = None,
    run_name: str = "-",
) -> FitResult:
    """Train the model with the config's hyper-parameters; from ``warm`` for fewer epochs (:func:`max_epochs`).

    With several ``workers`` the chief first shares what the fit learns from (:class:`FitInputs`),
    and every worker fits on exactly that, together.
    """
    inputs = FitInputs.of(train, val, cfg, warm, run_name)
    if workers is None or workers.single:
        return inputs.fit(on_epoch)
    workers.share(*inputs.shared())
    try:
        result = inputs.fit(on_epoch, workers)
    except WarmStartError:  # the others met it at the same point, before any epoch: they wait for the next fit
        workers.awaiting = True
        raise
    # no collective runs after the fit: TensorFlow's later report that the others stopped sending
    # heartbeats ("tasks are unhealthy") touches nothing the chief still does
    log.info("run=%s fitted on %d workers; the others exit now, the chief goes on alone", run_name, workers.role.count)
    return result


@dataclass(frozen=True)
class FitInputs:
    """What a fit learns from, as the chief shares it with the other workers (symbols as numbers, JSON settings)."""

    x_train: np.ndarray
    y_train: np.ndarray
    symbols_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    symbols_val: np.ndarray
    settings: dict[str, Any]  # fit's keyword arguments (fit_settings)
    warm: WarmStart | None
    run_name: str

    @classmethod
    def of(cls, train: Windows, val: Windows, cfg: TrainConfig, warm: WarmStart | None, run_name: str) -> FitInputs:
        """The inputs of a fit on ``train`` and ``val`` with ``cfg``, from ``warm`` where given."""
        # symbol weights only group windows by symbol, so a symbol's number weighs exactly as its name does
        _, codes = np.unique(np.concatenate([train.symbol, val.symbol]).astype(str), return_inverse=True)
        fitted = (train.x, train.y, codes[: len(train)], val.x, val.y, codes[len(train) :])
        return cls(*fitted, fit_settings(cfg, warm is not None), warm, run_name)

    def shared(self) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The header and arrays that carry these inputs to the other workers (:meth:`Workers.share`)."""
        warm = self.warm
        header = {
            "run_name": self.run_name,
            "settings": self.settings,
            "warm": None if warm is None else {"y_scale": warm.y_scale, "members": [len(m) for m in warm.members]},
        }
        members = [] if warm is None else [w for member in warm.members for w in member]
        arrays = [self.x_train, self.y_train, self.symbols_train, self.x_val, self.y_val, self.symbols_val]
        return header, [*arrays, *members]

    @classmethod
    def received(cls, header: dict[str, Any], arrays: list[np.ndarray]) -> FitInputs:
        """The inputs :meth:`shared` sent."""
        fitted, weights = arrays[:6], arrays[6:]
        warm = None
        if header["warm"] is not None:
            counts = header["warm"]["members"]
            members = [list(weights[end - n : end]) for n, end in zip(counts, np.cumsum(counts), strict=True)]
            warm = WarmStart(members, float(header["warm"]["y_scale"]))
        return cls(*fitted, header["settings"], warm, header["run_name"])

    def fit(self, on_epoch: Any, workers: Workers | None = None) -> FitResult:
        """Fit on these inputs: in this process alone, or on every one of ``workers`` at once."""
        return fit(
            self.x_train,
            self.y_train,
            self.x_val,
            self.y_val,
            symbols_train=self.symbols_train,
            symbols_val=self.symbols_val,
            **self.settings,
            on_epoch=on_epoch,
            warm=self.warm,
            workers=workers,
        )


def follow_chief(workers: Workers) -> dict[str, Any]:
    """A worker other than the chief: fit with it whenever it shares a fit, until it has one; nothing else.

    The chief alone reads bars and MLflow, registers and writes the summary; this returns what the
    worker did. A warm start whose weights do not fit fails on every worker at the same point,
    before any epoch, and the chief then shares the fit from scratch.
    """
    while True:
        header, arrays = workers.share()
        if STOP in header:
            log.info("worker=%s run=%s the chief fits nothing: %s", workers.role, header.get("run_name", "-"), header)
            return {"worker": str(workers.role), "trained": False, "reason": header.get("reason")}
        inputs = FitInputs.received(header, arrays)
        try:
            result = inputs.fit(None, workers)
        except WarmStartError as exc:
            log.warning("worker=%s run=%s the warm start failed (%s): from scratch", workers.role, inputs.run_name, exc)
            continue
        log.info(
            "worker=%s run=%s trained %d members with the chief (%d epochs of the first); the chief registers",
            workers.role,
            inputs.run_name,
            result.seeds,
            len(result.loss),
        )
        return {"worker": str(workers.role), "run_name": inputs.run_name, "trained": True, "epochs": len(result.loss)}


def max_epochs(cfg: TrainConfig, warm: bool) -> int:
    """Most epochs a fit runs: a warm start needs fewer, never more than a cold one."""
    return min(cfg.warm_epochs, cfg.epochs) if warm else cfg.epochs


def config_architecture(cfg: TrainConfig) -> dict[str, Any]:
    """The architecture this config trains (what a champion's weights must fit to start from them)."""
    return architecture(
        window=cfg.window,
        horizon=cfg.horizon,
        units=cfg.units,
        ar_lags=cfg.ar_lags,
        seeds=cfg.seeds,
        features=FEATURES,
    )


def fitted_until(*slices: Windows) -> int:
    """The newest target minute (unix s) of the windows a fit learned from or stopped and shrank on."""
    return max(int(w.target_ts.max()) for w in slices if len(w))


def interval_scale(forecaster: Forecaster, cal: Windows, level: float) -> intervals.IntervalScale:
    """The forecaster's interval scale, calibrated on the calibration windows ``cal`` (see training_job.intervals).

    Per tercile of window volatility, the split-conformal quantile of |error| / volatility: windows
    no fit has seen (not trained on, not stopped on, not shrunk on), so the quantile is honest.
    """
    errors = np.abs(cal.y.astype(np.float64) - forecaster.forward(cal.x).astype(np.float64))
    return intervals.calibrate(errors, cal.volatility, level)


def with_interval(meta: ForecasterMeta, scale: intervals.IntervalScale) -> ForecasterMeta:
    """``meta`` carrying the interval scale ``scale``."""
    return replace(meta, interval_level=scale.level, interval_q=scale.q, interval_edges=scale.edges)


def _fmt_q(scale: intervals.IntervalScale) -> str:
    return ",".join(f"{q:.6g}" for q in scale.q)


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
    from persistence's own calibration errors, so the endpoint always has something honest to serve.
    """
    dec = prepared.decision
    meta = ForecasterMeta(
        cfg.window, cfg.horizon, cfg.max_gap_minutes, kind=PERSISTENCE, interval_level=cfg.interval_level
    )
    forecaster = Forecaster.persistence(meta)
    scale = interval_scale(forecaster, prepared.calibration, cfg.interval_level)
    log_rmse = float(np.sqrt(np.mean(dec.y.astype(np.float64) ** 2)))
    meta = replace(with_interval(forecaster.meta, scale), skill=skill(log_rmse, log_rmse, None, len(dec)))
    forecaster = Forecaster.persistence(meta)
    save_pyfunc(forecaster, input_example(prepared.bars, dec, meta), tmp / "persistence")
    mlflow.log_artifacts(str(tmp / "persistence"), "persistence_model")
    tags = {
        KIND_TAG: PERSISTENCE,
        "interval_q": _fmt_q(scale),
        # no weights: the newest data it was fitted on is what calibrated its interval scale
        TRAINED_UNTIL_TAG: str(fitted_until(prepared.calibration)),
    }
    version = registry.register(f"{artifact_uri}/persistence_model", run_id, tags)
    log.info("model=%s registered persistence as version %s", cfg.model_name, version)
    return version


def _load_champion(registry: ModelRegistry, version: str, run_name: str) -> tuple[Any, str | None]:
    """The champion's pyfunc (loaded once: its weights may start the fit, its forecasts are scored), or why not."""
    try:
        return mlflow.pyfunc.load_model(f"models:/{registry.name}/{version}"), None
    except Exception as exc:  # a champion that cannot be loaded must not stop training for good
        log.exception("run=%s champion v%s could not be loaded", run_name, version)
        return None, f"champion v{version} could not be scored ({type(exc).__name__}: {exc})"


def _score_champion(
    champion: Any, version: str, bars: pd.DataFrame, dec: Windows, run_name: str
) -> tuple[np.ndarray | None, str | None]:
    """The loaded champion's predicted returns on the decision windows, or why it could not be scored."""
    try:
        return predicted_returns(champion.predict(data.model_input(bars), params={"mode": "all"}), dec), None
    except Exception as exc:  # a champion that cannot be scored must not stop training for good
        log.exception("run=%s champion v%s could not be scored", run_name, version)
        return None, f"champion v{version} could not be scored ({type(exc).__name__}: {exc})"


def warm_start(
    plan: WarmPlan, champion: Any, load_error: str | None, cfg: TrainConfig, run_name: str
) -> tuple[WarmStart | None, WarmPlan]:
    """The champion's weights to start from where ``plan`` says so and they can be read; else None and why not."""
    if not plan.use:
        return None, plan
    if champion is None:
        return None, replace(plan, use=False, source=None, reason=f"{load_error}: from scratch")
    try:
        model = champion.unwrap_python_model().forecaster.model
        return warm_start_from(model, cfg.seeds), plan
    except (AttributeError, WarmStartError) as exc:
        log.warning("run=%s champion v%s cannot start the fit: %s", run_name, plan.source, exc)
        reason = f"champion v{plan.source}'s weights cannot start this fit ({exc}): from scratch"
        return None, replace(plan, use=False, source=None, reason=reason)


@dataclass(frozen=True)
class Job:
    """One run of the job as the chief runs it: its config, registry, workers and MLflow run, and a scratch folder."""

    cfg: TrainConfig
    registry: ModelRegistry
    workers: Workers
    run_name: str
    run_id: str
    artifact_uri: str
    tmp: Path


@dataclass(frozen=True)
class Roles:
    """What this run is judged against: persistence's version, and the champion's version, kind, tags and model."""

    persistence: str
    champion: str
    kind: str
    tags: dict[str, str]
    model: Any  # the champion's loaded pyfunc; None for persistence or where it could not be loaded
    error: str | None  # why the champion could not be loaded
    evidence: evaluate.Evidence  # the record the last committed decision left


@dataclass(frozen=True)
class Fitted:
    """The fit of this run: its result, the warm start it used (or why not), and the summary's ``training``."""

    result: FitResult
    plan: WarmPlan
    warm: bool
    trained_until: int
    spec: dict[str, Any]
    training: dict[str, Any]


@dataclass(frozen=True)
class Calibrated:
    """The trained forecaster with its interval scale, and persistence's scale on the same calibration windows."""

    forecaster: Forecaster
    scale: intervals.IntervalScale
    persistence_scale: intervals.IntervalScale


@dataclass(frozen=True)
class Judged:
    """The decision slice's verdict: the windows every predictor scored, their forecasts, the tests and the figures."""

    windows: Windows  # the decision windows that every compared predictor forecast
    y: np.ndarray
    model_ret: np.ndarray
    champion_ret: np.ndarray | None  # None: no trained champion could be scored
    tested: evaluate.Decision
    verdict: evaluate.Verdict
    reason: str
    evidence: dict[str, Any]  # the verdict's figures (the summary's "evidence")
    figures: dict[str, Any]  # the summary's "metrics"


def run(cfg: TrainConfig, workers: Workers | None = None) -> dict[str, Any]:
    """Train, test against champion and persistence on the decision slice, register, and decide.

    With several ``workers`` (:mod:`training_job.cluster`) the chief does all that and the others
    only fit with it (:func:`follow_chief`); alone, the job is the chief.
    """
    workers = workers or Workers()
    if not workers.chief:
        return follow_chief(workers)
    with workers.leading():
        return lead(cfg, workers)


def lead(cfg: TrainConfig, workers: Workers) -> dict[str, Any]:
    """The chief's run: prepare, fit, calibrate, judge, register and summarise; or skip when nothing is new."""
    prepared = prepare(cfg.bars, cfg)
    profile = data.profile(prepared.bars, cfg.max_gap_minutes)
    for symbol, dropped in prepared.without_target.items():
        profile["symbols"][symbol]["windows_without_target"] = dropped
    mlflow.set_experiment(cfg.experiment)
    run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    registry = ModelRegistry(MlflowClient(), cfg.model_name)
    log_history(run_name, cfg, prepared)
    last = read_evidence(registry)
    dec = prepared.decision
    if last.watermark is not None and not evaluate.fresh_windows(dec.as_of, last.watermark, cfg.horizon).any():
        return nothing_new(cfg, registry, last, prepared.skipped, prepared.history)
    with mlflow.start_run(run_name=run_name) as active, tempfile.TemporaryDirectory() as tmp_name:
        job = Job(cfg, registry, workers, run_name, active.info.run_id, active.info.artifact_uri, Path(tmp_name))
        log_inputs(job, prepared, profile)
        roles = settle_roles(job, prepared)
        fitted = fit_members(job, prepared, roles)
        calibrated = calibrate(job, prepared, fitted.result)
        judged = judge(job, prepared, roles, calibrated.forecaster)
        # not named `interval`: tests/infra/test_docs.py reads the summary's interval keys off that dict literal
        interval_summary = interval_figures(cfg, judged, calibrated)
        log_judgement(job, fitted.result, judged, interval_summary, calibrated)
        summary = register_and_summarise(job, prepared, roles, fitted, calibrated, judged, interval_summary)
    if cfg.summary_out:
        Path(cfg.summary_out).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def log_history(run_name: str, cfg: TrainConfig, prepared: Prepared) -> None:
    """Log the window of bars this tick read."""
    history = prepared.history
    log.info(
        "run=%s mode=%s history %s..%s (%s trading days, %d bars)",
        run_name,
        cfg.mode,
        *span(history),
        history.days if history and history.days else "all",
        len(prepared.bars),
    )


def log_inputs(job: Job, prepared: Prepared, profile: dict[str, Any]) -> None:
    """Log and record what the run learns from: the windows of each slice, those dropped, the config, the profile."""
    train, val, history, skipped = prepared.train, prepared.validation, prepared.history, prepared.skipped
    sampled = prepared.sampled
    log.info(
        "run=%s windows train=%d of %d val=%d of %d calibration=%d decision=%d",
        job.run_name,
        len(train),
        sampled["train_available"],
        len(val),
        sampled["validation_available"],
        len(prepared.calibration),
        len(prepared.decision),
    )
    for symbol, dropped in prepared.without_target.items():
        if dropped["in_segment"] or dropped["at_gap"]:
            log.info(
                "run=%s symbol=%s windows without a bar at their target minute: %d in a segment, %d at a gap",
                job.run_name,
                symbol,
                dropped["in_segment"],
                dropped["at_gap"],
            )
    mlflow.log_params({k: str(v) for k, v in job.cfg.__dict__.items()})
    mlflow.log_params(
        {
            "symbols": ",".join(sorted(set(prepared.windows.symbol))),
            "windows_train": len(train),
            "windows_train_available": sampled["train_available"],
            "windows_validation": len(val),
            "windows_validation_available": sampled["validation_available"],
            **dict(zip(("history_since", "history_until"), span(history), strict=True)),
            "windows_calibration": len(prepared.calibration),
            "windows_decision": len(prepared.decision),
            "skipped_symbols": ",".join(skipped) or "-",
            "workers": job.workers.role.count,
        }
    )
    mlflow.log_dict({**profile, "skipped": skipped}, "data_profile.json")


def settle_roles(job: Job, prepared: Prepared) -> Roles:
    """Persistence's version (registered first where there is none) and the champion the record names, loaded."""
    registry, cfg = job.registry, job.cfg
    persistence_version = registry.persistence_version()
    if persistence_version is None:
        persistence_version = register_persistence(registry, prepared, cfg, job.run_id, job.artifact_uri, job.tmp)
        if registry.version_for(CHAMPION) is None:
            registry.assign(CHAMPION, persistence_version)
    evidence = read_evidence(registry)  # what the last committed decision left; its champion is the champion
    champion_version = evidence.champion or registry.version_for(CHAMPION) or persistence_version
    champion_tags = registry.tags_of(champion_version)
    champion_kind = champion_tags.get(KIND_TAG, LSTM_ATTENTION)
    champion, champion_error = None, None
    if champion_kind != PERSISTENCE:
        champion, champion_error = _load_champion(registry, champion_version, job.run_name)
    return Roles(
        persistence_version, champion_version, champion_kind, champion_tags, champion, champion_error, evidence
    )


def fit_members(job: Job, prepared: Prepared, roles: Roles) -> Fitted:
    """Fit the members, from the champion's weights where the warm-start plan allows; record how it went."""
    cfg, run_name = job.cfg, job.run_name
    spec = config_architecture(cfg)
    plan = plan_warm_start(cfg.mode, roles.champion, roles.kind, roles.tags, spec, prepared.split.calibration_start)
    warm, plan = warm_start(plan, roles.model, roles.error, cfg, run_name)
    log.info("run=%s %s: %s", run_name, "warm start" if warm else "from scratch", plan.reason)
    result, warm, plan = _fit_or_start_over(job, prepared, warm, plan)
    train, val = prepared.train, prepared.validation
    trained_until = lineage_trained_until(fitted_until(train, val), plan.source_trained_until if warm else None)
    training = {
        "mode": cfg.mode,
        "history": prepared.history.as_dict() if prepared.history else None,
        "windows": {**prepared.sampled, "max_train_windows": cfg.max_train_windows},
        "warm_start": {"used": warm is not None, "from": plan.source if warm else None, "reason": plan.reason},
        "epochs": {"max": max_epochs(cfg, warm is not None), "run": len(result.loss), "best": result.best_epoch},
        "trained_until": evaluate.utc_minute(trained_until),
        "fingerprint": fingerprint(spec),
        "workers": job.workers.role.count,
    }
    mlflow.log_params({"warm_start_from": plan.source if warm else "-", FINGERPRINT_TAG: fingerprint(spec)})
    mlflow.log_metrics(
        {
            "best_epoch": result.best_epoch,
            "shrinkage": result.shrinkage,
            "seeds": result.seeds,
            "initial_val_loss": result.initial_val_loss,
            "warm_start": float(warm is not None),
        }
    )
    return Fitted(result, plan, warm is not None, trained_until, spec, training)


def _fit_or_start_over(
    job: Job, prepared: Prepared, warm: WarmStart | None, plan: WarmPlan
) -> tuple[FitResult, WarmStart | None, WarmPlan]:
    """Fit from ``warm``; where its weights do not fit these members, from scratch: (result, warm used, plan)."""
    cfg, run_name = job.cfg, job.run_name

    def on_epoch(epoch: int, logs: dict) -> None:
        mlflow.log_metrics({"loss": logs["loss"], "val_loss": logs["val_loss"]}, step=epoch + 1)
        log.info("run=%s epoch=%d loss=%.3g val_loss=%.3g", run_name, epoch + 1, logs["loss"], logs["val_loss"])

    train, val, workers = prepared.train, prepared.validation, job.workers
    try:
        return fit_model(train, val, cfg, on_epoch, warm, workers, run_name), warm, plan
    except WarmStartError as exc:  # raised before any epoch: the fit starts again from scratch
        log.warning("run=%s champion v%s cannot start the fit: %s", run_name, plan.source, exc)
        reason = f"champion v{plan.source}'s weights cannot start this fit ({exc}): from scratch"
        plan = replace(plan, use=False, source=None, reason=reason)
        return fit_model(train, val, cfg, on_epoch, None, workers, run_name), None, plan


def calibrate(job: Job, prepared: Prepared, result: FitResult) -> Calibrated:
    """The trained forecaster with its interval scale, calibrated on windows no fit saw; persistence's likewise."""
    cfg, cal = job.cfg, prepared.calibration
    meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes, interval_level=cfg.interval_level)
    forecaster = Forecaster(result.model, meta)
    scale = interval_scale(forecaster, cal, cfg.interval_level)
    forecaster.meta = meta = with_interval(meta, scale)
    persistence_scale = interval_scale(Forecaster.persistence(meta), cal, cfg.interval_level)
    return Calibrated(forecaster, scale, persistence_scale)


def decision_bars(bars: pd.DataFrame, dec: Windows, window: int) -> pd.DataFrame:
    """The bars the decision windows read: per symbol, from ``bars_needed(window) - 1`` bars before its first one.

    A window's features come from exactly its own ``bars_needed`` bars (training_job.features), so
    scoring these bars gives the decision windows exactly the forecasts scoring all of them would,
    at the cost of the decision slice alone rather than of the whole history read.
    """
    firsts = pd.Series(dec.as_of).groupby(pd.Series(dec.symbol)).min()
    need = bars_needed(window)
    kept = []
    for symbol, rows in bars.groupby("symbol", sort=True):
        if symbol not in firsts.index:
            continue
        ts = data.epoch_seconds(rows["ts"])
        first = int(np.searchsorted(ts, int(firsts[symbol])))
        kept.append(rows.iloc[max(0, first - need + 1) :])
    return pd.concat(kept, ignore_index=True) if kept else bars.iloc[:0]


def judge(job: Job, prepared: Prepared, roles: Roles, forecaster: Forecaster) -> Judged:
    """Score the model, the champion and persistence on the decision slice, test them and decide."""
    cfg, dec = job.cfg, prepared.decision
    bars = decision_bars(prepared.bars, dec, cfg.window)
    persistence_champion = roles.kind == PERSISTENCE
    # every predictor is scored through the pyfunc path on the same unseen windows: each window's
    # features come from exactly the bars a live request sends, so this scores what is served
    model_ret = predicted_returns(forecaster.predict_frame(bars, latest_only=False), dec)
    champion_ret, champion_error = np.zeros(len(dec)), roles.error
    if not persistence_champion:
        champion_ret = None
        if roles.model is not None:
            champion_ret, champion_error = _score_champion(roles.model, roles.champion, bars, dec, job.run_name)
    common = np.isfinite(model_ret) & (np.isfinite(champion_ret) if champion_ret is not None else True)
    d = dec.take(np.flatnonzero(common))
    model_ret = model_ret[common]
    champion_ret = None if champion_ret is None else champion_ret[common]
    y = d.y.astype(np.float64)
    tested = evaluate.gate(  # the slice's Diebold–Mariano tests on per-minute means: the figures each tick reports
        (model_ret - y) ** 2,
        y**2,
        None if champion_ret is None else (champion_ret - y) ** 2,
        persistence_champion,
        cfg.alpha,
        cfg.horizon,
        as_of=d.as_of,
    )
    # the decision: the first one on the whole slice, every later one on minutes no decision has used
    verdict = evaluate.decide(
        roles.evidence,
        d.as_of,
        y,
        model_ret,
        champion_ret,
        d.volatility**2,
        roles.champion,
        persistence_champion,
        roles.persistence,
        cfg.alpha,
        cfg.horizon,
    )
    reason = verdict.reason if champion_error is None else f"{champion_error}: demoted; {verdict.reason}"
    figures = {
        "model": evaluate.metrics(model_ret, y, d.last_close),
        "champion": None
        if champion_ret is None
        else evaluate.metrics(champion_ret, y, d.last_close, persistence_champion),
        "persistence": evaluate.metrics(np.zeros(len(d)), y, d.last_close, persistence=True),
    }
    return Judged(d, y, model_ret, champion_ret, tested, verdict, reason, verdict.figures(cfg.alpha), figures)


def interval_figures(cfg: TrainConfig, judged: Judged, calibrated: Calibrated) -> dict[str, Any]:
    """The forecast interval on the decision slice: its scale, coverage and Winkler score, persistence's beside."""
    d, y, model_ret = judged.windows, judged.y, judged.model_ret
    half = calibrated.forecaster.half_width(d)  # exactly what serving computes for these windows
    persistence_half = calibrated.persistence_scale.half_width(d.volatility)
    scale, still = calibrated.scale, np.zeros(len(d))
    interval = {
        "level": cfg.interval_level,
        "q": list(scale.q),
        "edges": list(scale.edges),
        "coverage": intervals.coverage(model_ret, y, half),
        "winkler": intervals.winkler(model_ret, y, half, cfg.interval_level),
        "persistence_coverage": intervals.coverage(still, y, persistence_half),
        "persistence_winkler": intervals.winkler(still, y, persistence_half, cfg.interval_level),
        "by_volatility": intervals.by_volatility(
            d.volatility, y, cfg.interval_level, (model_ret, half), (still, persistence_half)
        ),
    }
    return interval


def test_figures(tested: evaluate.Decision) -> dict[str, dict[str, Any] | None]:
    """The slice's three Diebold–Mariano tests as the summary holds them (None where not run)."""
    return {
        "vs_champion": tested.vs_champion.as_dict() if tested.vs_champion else None,
        "vs_persistence": tested.vs_persistence.as_dict(),
        "champion_vs_persistence": tested.champion_vs_persistence.as_dict() if tested.champion_vs_persistence else None,
    }


def log_judgement(
    job: Job, result: FitResult, judged: Judged, interval: dict[str, Any], calibrated: Calibrated
) -> None:
    """Log the decision's figures as run metrics, and its plots and forecasts as artifacts."""
    d, evidence, scale = judged.windows, judged.evidence, calibrated.scale
    records = ("vs_persistence", "vs_champion", "champion_worse")
    mlflow.log_metrics(
        {
            "e_value": evidence["e_value"],
            "fresh_minutes": judged.verdict.minutes,
            "n_minutes": judged.tested.vs_persistence.n,
            **{f"e_{name}": evidence[name]["e"] for name in records if evidence[name]},
        }
    )
    for who, values in judged.figures.items():
        if values:
            mlflow.log_metrics({f"{who}_{k}": v for k, v in values.items() if v is not None})
    for name, test in test_figures(judged.tested).items():
        if test:
            mlflow.log_metrics({f"{name}_{k}": v for k, v in test.items() if v is not None})
    mlflow.log_metrics(
        {
            "interval_coverage": interval["coverage"],
            "interval_winkler": interval["winkler"],
            "n_decision": len(d),
            **{f"interval_q_{b}": q for b, q in enumerate(scale.q)},
            **{
                f"interval_{prefix}{key}_{row['tercile']}": row[f"{prefix}{key}"]
                for row in interval["by_volatility"]
                for prefix in ("", "persistence_")
                for key in ("coverage", "winkler")
                if row[f"{prefix}{key}"] is not None
            },
        }
    )
    log_decision_artifacts(job, result, judged, calibrated.forecaster.half_width(d))


def log_decision_artifacts(job: Job, result: FitResult, judged: Judged, half_width: np.ndarray) -> None:
    """The loss and forecast plots, and every decision window's forecast and interval half-width as Parquet."""
    d, tmp = judged.windows, job.tmp
    for png in _plots(result.loss, result.val_loss, d, judged.model_ret, tmp):
        mlflow.log_artifact(str(png), "plots")
    table = pd.DataFrame(
        {
            "symbol": d.symbol.astype(str),
            "as_of": d.as_of,
            "actual_return": judged.y,
            "model": judged.model_ret,
            "champion": np.nan if judged.champion_ret is None else judged.champion_ret,
            "half_width": half_width,
        }
    )
    table.to_parquet(tmp / "decision_forecasts.parquet")
    mlflow.log_artifact(str(tmp / "decision_forecasts.parquet"))


def save_model(job: Job, prepared: Prepared, forecaster: Forecaster, judged: Judged) -> None:
    """Write the forecaster, carrying its decision-slice skill, as the run's ``model`` artifact."""
    figures, d = judged.figures, judged.windows
    model_skill = skill(
        figures["model"]["log_rmse"], figures["persistence"]["log_rmse"], judged.tested.vs_persistence, len(d)
    )
    forecaster.meta = meta = replace(forecaster.meta, skill=model_skill)
    save_pyfunc(forecaster, input_example(prepared.bars, d, meta), job.tmp / "model")
    mlflow.log_artifacts(str(job.tmp / "model"), "model")


def version_tags(job: Job, fitted: Fitted, judged: Judged, interval: dict[str, Any]) -> dict[str, str]:
    """The tags the version is registered with: its decision, figures, record and what a warm start reads."""
    figures, tested, evidence, spec = judged.figures, judged.tested, judged.evidence, fitted.spec
    tags = {
        KIND_TAG: LSTM_ATTENTION,
        "decision": judged.verdict.decision,
        "reason": judged.reason[:4000],
        "run_name": job.run_name,
        "decision_rmse": f"{figures['model']['rmse']:.6g}",
        "decision_log_rmse": f"{figures['model']['log_rmse']:.6g}",
        "persistence_rmse": f"{figures['persistence']['rmse']:.6g}",
        "persistence_log_rmse": f"{figures['persistence']['log_rmse']:.6g}",
        "n_decision": str(len(judged.windows)),
        "p_vs_persistence": _fmt(tested.vs_persistence.p_value),
        "p_vs_champion": _fmt(tested.vs_champion.p_value if tested.vs_champion else None),
        "n_minutes": str(tested.vs_persistence.n),
        "fresh_minutes": str(judged.verdict.minutes),
        "e_value": _fmt(evidence["e_value"]),
        "e_vs_champion": _fmt(evidence["vs_champion"] and evidence["vs_champion"]["e"]),
        "e_champion_worse": _fmt(evidence["champion_worse"] and evidence["champion_worse"]["e"]),
        "evidence_since": evidence["since"] or "-",
        # the record the next tick decides from: registering this version with it commits the decision
        EVIDENCE_TAG: judged.verdict.evidence.to_tag(),
        "interval_coverage": f"{interval['coverage']:.4f}",
        # what the next tick's warm start is decided on (plan_warm_start)
        "mode": job.cfg.mode,
        FINGERPRINT_TAG: fingerprint(spec),
        ARCHITECTURE_TAG: json.dumps(spec, separators=(",", ":")),
        TRAINED_UNTIL_TAG: str(fitted.trained_until),
        "warm_start_from": fitted.plan.source if fitted.warm else "-",
    }
    if figures["champion"]:  # the Function App reports all three figures from the version's tags
        tags["champion_rmse"] = f"{figures['champion']['rmse']:.6g}"
    return tags


def register_version(job: Job, roles: Roles, judged: Judged, tags: dict[str, str]) -> tuple[str, str, str]:
    """Register the model (committing the decision) and move the roles: (version, champion after, its kind)."""
    registry = job.registry
    version = registry.register(f"{job.artifact_uri}/model", job.run_id, tags)
    registry.assign(CHALLENGER, version)
    verdict = judged.verdict
    champion_after = version if verdict.champion == evaluate.SELF else verdict.champion
    # the roles follow the committed record; a job that stopped before moving them is completed here
    if champion_after != roles.champion or registry.version_for(CHAMPION) != champion_after:
        registry.assign(CHAMPION, champion_after)
    after_kind = LSTM_ATTENTION if champion_after == version else registry.kind_of(champion_after)
    mlflow.set_tags(
        {**tags, "model_version": version, "champion_version": roles.champion, "champion_after": champion_after}
    )
    return version, champion_after, after_kind


def register_and_summarise(
    job: Job,
    prepared: Prepared,
    roles: Roles,
    fitted: Fitted,
    calibrated: Calibrated,
    judged: Judged,
    interval: dict[str, Any],
) -> dict[str, Any]:
    """Save and register the model, move the roles, and log the decision summary (what --summary-out writes)."""
    save_model(job, prepared, calibrated.forecaster, judged)
    version, champion_after, after_kind = register_version(
        job, roles, judged, version_tags(job, fitted, judged, interval)
    )
    verdict, tested = judged.verdict, judged.tested
    summary = {
        "version": version,
        "kind": LSTM_ATTENTION,
        "decision": verdict.decision,
        "reason": judged.reason,
        "champion_version": roles.champion,
        "champion_after": {"version": champion_after, "kind": after_kind},
        "demoted": verdict.demoted,
        "n_decision": len(judged.windows),
        "n_minutes": tested.vs_persistence.n,
        "alpha": job.cfg.alpha,
        "evidence": judged.evidence,
        "tests": test_figures(tested),
        "interval": interval,
        "shrinkage": fitted.result.shrinkage,
        "metrics": judged.figures,
        "skipped": prepared.skipped,  # symbol -> why it gave no windows (devhost up says it in the tick's line)
        "training": fitted.training,
    }
    mlflow.log_dict(summary, "summary.json")
    log_decision(job, prepared, fitted, summary)
    return summary


def log_decision(job: Job, prepared: Prepared, fitted: Fitted, summary: dict[str, Any]) -> None:
    """The run's one-line account: version, decision, champion, mode, history, windows, warm start and why."""
    history, warm_start = fitted.training["history"], fitted.training["warm_start"]
    log.info(
        "run=%s version=%s decision=%s champion=%s(%s) mode=%s history=%s..%s windows train=%d/%d "
        "validation=%d/%d warm_start=%s (%s) workers=%d reason=%s",
        job.run_name,
        summary["version"],
        summary["decision"],
        summary["champion_after"]["version"],
        summary["champion_after"]["kind"],
        job.cfg.mode,
        history and history["since"],
        history and history["until"],
        len(prepared.train),
        prepared.sampled["train_available"],
        len(prepared.validation),
        prepared.sampled["validation_available"],
        f"v{warm_start['from']}" if warm_start["used"] else "no",
        warm_start["reason"],
        job.workers.role.count,
        summary["reason"],
    )


def nothing_new(
    cfg: TrainConfig,
    registry: ModelRegistry,
    last: evaluate.Evidence,
    skipped: dict[str, str],
    history: History | None = None,
) -> dict[str, Any]:
    """The summary of a job with no window after the last decision's watermark: nothing trained or registered."""
    champion = last.champion or registry.version_for(CHAMPION)
    reason = (
        f"no window after {evaluate.utc_minute(last.watermark)}, the newest minute the last decision used: "
        "nothing new to decide on, so nothing was trained or registered"
    )
    outcome = {
        "version": None,
        "kind": None,
        "decision": "skipped",
        "reason": reason,
        "champion_version": champion,
        "champion_after": {"version": champion, "kind": registry.kind_of(champion) if champion else None},
        "skipped": skipped,
        # nothing was fitted: the window that was read, and no windows or warm start
        "training": {
            "mode": cfg.mode,
            "history": history.as_dict() if history else None,
            "windows": None,
            "warm_start": None,
        },
    }
    log.info(
        "decision=skipped champion=%s mode=%s history=%s..%s reason=%s",
        champion,
        cfg.mode,
        *span(history),
        reason,
    )
    if cfg.summary_out:
        Path(cfg.summary_out).write_bytes(orjson.dumps(outcome, option=orjson.OPT_INDENT_2))
    return outcome


def read_evidence(registry: ModelRegistry) -> evaluate.Evidence:
    """The promotion record the last committed decision left: the ``evidence`` tag of the newest version carrying one.

    Registering a version, with all its tags in one call, commits its decision: a job that stopped
    before that left no record (its minutes count as unused), and one that stopped after it, before
    moving the roles, left a decision the next job completes.
    """
    found = registry.newest_tagged(EVIDENCE_TAG)
    return evaluate.Evidence() if found is None else evaluate.Evidence.from_tag(found[1][EVIDENCE_TAG], found[0])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    """Run the job from the command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # tensorflow: MultiWorkerMirroredStrategy logs every collective it sets up at INFO
    for noisy in ("mlflow", "absl", "urllib3", "alembic", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = parse_args(argv)
    try:
        workers = Workers.join(os.environ.get("TF_CONFIG"))  # first: before any other TensorFlow operation
        summary = run(cfg, workers)
    except (NotEnoughDataError, data.NoDataError) as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
