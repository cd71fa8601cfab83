"""Chronological splits, error metrics and the promotion rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training_job.features import Windows


@dataclass(frozen=True)
class Split:
    """Row indices of the three slices, and the times that separate them."""

    train: np.ndarray
    validation: np.ndarray
    decision: np.ndarray
    validation_start: int
    decision_start: int


def chronological_split(w: Windows, validation_fraction: float, decision_fraction: float) -> Split:
    """Split by time, newest last.

    A window belongs to a slice only if every bar it reads, its target included, lies inside
    that slice, so no decision window overlaps a training one.
    """
    times = np.unique(np.concatenate([w.start, w.target_ts]))
    decision_start = int(times[int(len(times) * (1 - decision_fraction))])
    validation_start = int(times[int(len(times) * (1 - decision_fraction - validation_fraction))])
    train = np.flatnonzero(w.target_ts < validation_start)
    validation = np.flatnonzero((w.start >= validation_start) & (w.target_ts < decision_start))
    decision = np.flatnonzero(w.start >= decision_start)
    return Split(train, validation, decision, validation_start, decision_start)


def metrics(predicted_close: np.ndarray, actual_close: np.ndarray, last_close: np.ndarray) -> dict[str, float]:
    """RMSE and MAE of the predicted close, and how often the predicted direction was right."""
    err = predicted_close - actual_close
    direction = np.sign(predicted_close - last_close) == np.sign(actual_close - last_close)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "directional_accuracy": float(np.mean(direction)),
    }


def decide(
    model: dict[str, float],
    champion: dict[str, float] | None,
    persistence: dict[str, float],
    min_improvement: float,
    baseline_tolerance: float,
) -> tuple[str, str]:
    """Apply the promotion rule: returns (``promoted``|``retained``, reason)."""
    ceiling = persistence["rmse"] * (1 + baseline_tolerance)
    if model["rmse"] > ceiling:
        return "retained", (
            f"rmse {model['rmse']:.6g} is worse than persistence {persistence['rmse']:.6g} "
            f"beyond the {baseline_tolerance:.1%} tolerance"
        )
    if champion is None:
        return (
            "promoted",
            f"first model: rmse {model['rmse']:.6g} within tolerance of persistence {persistence['rmse']:.6g}",
        )
    needed = champion["rmse"] * (1 - min_improvement)
    if model["rmse"] < needed:
        return "promoted", f"rmse {model['rmse']:.6g} beats champion {champion['rmse']:.6g} (needed < {needed:.6g})"
    return "retained", f"rmse {model['rmse']:.6g} does not beat champion {champion['rmse']:.6g} (needed < {needed:.6g})"
