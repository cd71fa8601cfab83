"""Training time at equal split and equal quality, and what each model is worth against persistence.

Data (``--data``): ``synthetic`` (default), 5 symbols x 5 trading days of generated 1-minute bars whose
returns carry a planted AR(1) of ``devhost.market.feed.AUTOCORRELATION``, written by the ingest code; the
oracle that knows the planted coefficient is scored beside the models, so the figures say how much
of the planted signal was found. ``real``: about four weeks of real 1-minute bars of MSFT, AZN.L and
9988.HK (``benchmarks/real_bars.py``), where persistence is usually the honest champion. Either is
split chronologically once: both configurations train on the same
training windows, stop on the same validation windows and are scored on the same newest, unseen
decision slice. Stockcast: LSTM-Attention with the linear AR skip path, early stopping from the
linear starting point, seed averaging and validation shrinkage. Reference (the replaced system):
the plain LSTM-Attention, batch 16, lr 1e-3, 30 epochs without early stopping.

"Equal quality": the reference's time is the time it needed to first reach Stockcast's best
validation loss (or all 30 epochs when it never did), so speed is not bought with a worse model.
Every model is tested against persistence (and Stockcast against the reference) with the same
one-sided Diebold–Mariano test the promotion gate uses. Prints the figures, then one JSON object
as the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.real_bars import write_real_bars
from devhost.market.feed import AUTOCORRELATION, FeedConfig, write_bars
from training_job import evaluate
from training_job.config import TrainConfig
from training_job.features import FEATURES, Windows
from training_job.train import fit_model, prepare

if TYPE_CHECKING:
    from training_job.model import FitResult
    from training_job.train import Prepared


def predicted_returns(model: object, dec: Windows) -> np.ndarray:
    """Predicted log returns on the decision slice."""
    return model(dec.x, training=False).numpy().reshape(-1).astype(np.float64)  # type: ignore[operator]


class EpochClock:
    """Seconds since training began at the end of each epoch, with that epoch's validation loss."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, float]] = []

    def __call__(self, epoch: int, logs: dict) -> None:
        """Record one epoch."""
        self.marks.append((time.perf_counter() - self.start, float(logs["val_loss"])))

    def time_to(self, target: float) -> float | None:
        """Seconds until the validation loss first reached ``target``; None if it never did."""
        return next((t for t, loss in self.marks if loss <= target), None)


def oracle_returns(dec: Windows) -> np.ndarray:
    """What the planted AR(1) predicts: the coefficient times each window's last 1-minute return."""
    return AUTOCORRELATION * dec.x[:, -1, FEATURES.index("ret_1")].astype(np.float64)


class _Times(NamedTuple):
    """Seconds of training: Stockcast's, and the reference's at equal quality and for all its epochs."""

    train_s: float
    reference_s: float  # until it first reached Stockcast's best validation loss, else all its epochs
    reference_full_s: float
    reached: float | None  # when it reached Stockcast's best validation loss; None if it never did


def _fit_stockcast(prepared: Prepared, cfg: TrainConfig) -> tuple[FitResult, float]:
    """Stockcast's model trained on the split, and the seconds it took; prints the split and the fit."""
    train, val, dec = prepared.train, prepared.validation, prepared.decision
    start = time.perf_counter()
    ours = fit_model(train, val, cfg)
    train_s = time.perf_counter() - start
    print(f"bars: {len(prepared.bars)}; windows train/validation/decision: {len(train)}/{len(val)}/{len(dec)}")
    print(
        f"stockcast: {ours.seeds} seeds, batch {cfg.batch_size}, best epoch {ours.best_epoch} of {len(ours.loss)}"
        f" (first member), shrinkage {ours.shrinkage:.3f}: {train_s:.1f}s; best val loss {ours.best_val_loss:.4f}"
    )
    return ours, train_s


def _fit_reference(prepared: Prepared, cfg: TrainConfig, target: float, train_s: float) -> tuple[FitResult, _Times]:
    """The replaced system's model trained on the same split, and the times to compare; prints the fit."""
    reference_cfg = replace(cfg, batch_size=16, epochs=30, learning_rate=1e-3, patience=10**6, seeds=1, ar_lags=0)
    clock = EpochClock()
    reference = fit_model(prepared.train, prepared.validation, reference_cfg, on_epoch=clock)
    reference_full_s = clock.marks[-1][0]
    reached = clock.time_to(target)
    reference_s = reached if reached is not None else reference_full_s
    print(
        f"reference: plain LSTM-Attention, batch 16, 30 epochs: {reference_full_s:.1f}s; best val loss "
        f"{min(loss for _, loss in clock.marks):.4f}; "
        + (f"reached stockcast's val loss after {reached:.1f}s" if reached else "never reached stockcast's")
    )
    return reference, _Times(train_s, reference_s, reference_full_s, reached)


def _decision_figures(
    ours: FitResult, reference: FitResult, dec: Windows
) -> tuple[dict[str, dict[str, float]], dict[str, evaluate.DMTest]]:
    """Each model's metrics on the decision slice, and the Diebold–Mariano tests between them."""
    y = dec.y.astype(np.float64)
    mine, theirs = predicted_returns(ours.model, dec), predicted_returns(reference.model, dec)
    loss = {"stockcast": (mine - y) ** 2, "reference": (theirs - y) ** 2, "persistence": y**2}
    figures = {
        name: evaluate.metrics(pred, y, dec.last_close, name == "persistence")
        for name, pred in (("stockcast", mine), ("reference", theirs), ("persistence", np.zeros(len(y))))
    }
    tests = {
        "stockcast_vs_persistence": evaluate.diebold_mariano(loss["stockcast"], loss["persistence"]),
        "reference_vs_persistence": evaluate.diebold_mariano(loss["reference"], loss["persistence"]),
        "stockcast_vs_reference": evaluate.diebold_mariano(loss["stockcast"], loss["reference"]),
    }
    return figures, tests


def _oracle_ratio(dec: Windows, base: float) -> float:
    """The planted AR(1)'s log-RMSE over persistence's (``base``) on the decision slice; prints it."""
    oracle = evaluate.metrics(oracle_returns(dec), dec.y.astype(np.float64), dec.last_close)
    oracle_ratio = oracle["log_rmse"] / base
    print(f"oracle (the planted AR({AUTOCORRELATION}) itself): log-RMSE ratio to persistence {oracle_ratio:.4f}")
    return oracle_ratio


def _print_decision(figures: dict[str, dict[str, float]], tests: dict[str, evaluate.DMTest], base: float) -> None:
    """Each model's errors on the decision slice, then each test."""
    for name, m in figures.items():
        print(
            f"decision slice {name:>11}: RMSE {m['rmse']:.6f}  log-RMSE {m['log_rmse']:.4e} "
            f"(ratio to persistence {m['log_rmse'] / base:.4f})"
        )
    for name, t in tests.items():
        print(
            f"DM {name}: log-RMSE ratio {math.sqrt(t.loss_ratio):.4f}, stat {t.dm_stat:+.2f}, "
            f"one-sided p {t.p_value:.4g} (n={t.n})"
        )


def _json_figures(
    data: str,
    prepared: Prepared,
    oracle_ratio: float | None,
    times: _Times,
    figures: dict[str, dict[str, float]],
    tests: dict[str, evaluate.DMTest],
) -> dict[str, Any]:
    """The last line's JSON object."""
    base = figures["persistence"]["log_rmse"]
    return {
        "data": data,
        "symbols": sorted(set(prepared.windows.symbol.astype(str))),
        "planted_ar1": AUTOCORRELATION if data == "synthetic" else None,
        "oracle_log_rmse_ratio": None if oracle_ratio is None else round(oracle_ratio, 4),
        "train_s": round(times.train_s, 2),
        "reference_train_s": round(times.reference_s, 2),
        "reference_full_train_s": round(times.reference_full_s, 2),
        "reference_reached_quality": times.reached is not None,
        "speedup": round(times.reference_s / times.train_s, 1),
        "rmse": round(figures["stockcast"]["rmse"], 6),
        "reference_rmse": round(figures["reference"]["rmse"], 6),
        "persistence_rmse": round(figures["persistence"]["rmse"], 6),
        "log_rmse_ratio": round(figures["stockcast"]["log_rmse"] / base, 4),
        "reference_log_rmse_ratio": round(figures["reference"]["log_rmse"] / base, 4),
        "p_vs_persistence": float(f"{tests['stockcast_vs_persistence'].p_value:.3g}"),
        "reference_p_vs_persistence": float(f"{tests['reference_vs_persistence'].p_value:.3g}"),
        "p_vs_reference": float(f"{tests['stockcast_vs_reference'].p_value:.3g}"),
        "n_decision": len(prepared.decision),
    }


def main(argv: list[str] | None = None) -> None:
    """Train both configurations on the same split and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    data = parser.parse_args(argv).data
    cfg = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        if data == "synthetic":
            write_bars(FeedConfig(days=5, seed=11), tmp)
        else:
            write_real_bars(tmp)
        prepared = prepare(Path(tmp), cfg)
        ours, train_s = _fit_stockcast(prepared, cfg)
        reference, times = _fit_reference(prepared, cfg, ours.best_val_loss, train_s)
        figures, tests = _decision_figures(ours, reference, prepared.decision)
        base = figures["persistence"]["log_rmse"]
        oracle_ratio = _oracle_ratio(prepared.decision, base) if data == "synthetic" else None
        _print_decision(figures, tests, base)
        print(f"speedup at equal quality: {times.reference_s / times.train_s:.1f}x")
        print(json.dumps(_json_figures(data, prepared, oracle_ratio, times, figures, tests)))


if __name__ == "__main__":
    main()
