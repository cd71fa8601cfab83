"""Forecast intervals: split-conformal, normalised by volatility, calibrated per volatility tercile.

A window's interval is its predicted log return ± ``q_b × vol``: ``vol`` is the window's volatility
(:func:`training_job.features.window_volatility`, known at its last bar, computed from the bars a
request sends) and ``q_b`` the split-conformal quantile of ``|error| / vol`` among the calibration
windows of its volatility bin ``b`` (Mondrian conformal prediction, Vovk et al. 2005, with the
locally weighted score of Lei et al. 2018). The bins are the terciles of ``vol`` on the calibration
slice, fixed there and carried with the model, so each bin covers at its level on its own: one
quantile for all would be too narrow when calm and too wide when busy, since a noisy ``vol``
understates the volatility of the windows that look calm and overstates that of the ones that look
busy. The calibration slice is time the model never trained on, stopped on or shrank on. Nothing
here imports TensorFlow: serving calls :meth:`IntervalScale.half_width` exactly as evaluation does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BINS = 3  # volatility bins of the calibration (terciles)
TERCILES = ("low", "mid", "high")  # the volatility thirds the figures are reported by


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ⌈(n+1)·level⌉-th smallest finite score (infinite if n is too small)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(scores)
    k = math.ceil((n + 1) * level)
    return float("inf") if n == 0 or k > n else float(scores[k - 1])


def coverage(predicted_return: np.ndarray, actual_return: np.ndarray, half_width: np.ndarray) -> float:
    """Share of actual returns inside predicted ± half width."""
    return float(np.mean(np.abs(actual_return - predicted_return) <= half_width))


def winkler(predicted_return: np.ndarray, actual_return: np.ndarray, half_width: np.ndarray, level: float) -> float:
    """Mean interval (Winkler) score in log-return units: width, plus 2/(1 − level) × each miss's distance outside.

    Lower is better; unlike coverage, it rewards a narrower interval that still covers.
    """
    miss = np.maximum(np.abs(np.asarray(actual_return) - np.asarray(predicted_return)) - half_width, 0.0)
    return float(np.mean(2.0 * half_width + 2.0 / (1.0 - level) * miss))


@dataclass(frozen=True)
class IntervalScale:
    """What a version needs to draw its intervals: the level, the volatility bins and each bin's quantile."""

    level: float = 0.9
    edges: tuple[float, ...] = ()  # volatility between bins, ascending: bin b holds edges[b-1] <= vol < edges[b]
    q: tuple[float, ...] = (float("inf"),)  # conformal quantile of |error| / vol within each bin

    def __post_init__(self) -> None:
        if len(self.q) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} volatility edges need {len(self.edges) + 1} quantiles, got {self.q}")

    def bins(self, volatility: np.ndarray) -> np.ndarray:
        """Bin index of each volatility."""
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), volatility, side="right")

    def half_width(self, volatility: np.ndarray) -> np.ndarray:
        """Half width of each interval in log-return units: its bin's quantile × its volatility (inf: no interval)."""
        volatility = np.asarray(volatility, dtype=np.float64)
        return np.asarray(self.q, dtype=np.float64)[self.bins(volatility)] * volatility


def calibrate(abs_error: np.ndarray, volatility: np.ndarray, level: float, bins: int = BINS) -> IntervalScale:
    """The interval scale from calibration windows' absolute errors and volatilities (Mondrian split conformal).

    The edges are the calibration volatility's quantiles at 1/bins, 2/bins, …; where a bin would be
    empty or too small for a finite quantile at ``level``, every window shares one bin instead.
    """
    abs_error = np.asarray(abs_error, dtype=np.float64)
    volatility = np.asarray(volatility, dtype=np.float64)
    scores = abs_error / volatility
    if bins > 1 and len(volatility):
        edges = tuple(float(e) for e in np.quantile(volatility, np.arange(1, bins) / bins))
        binned = IntervalScale(level, edges, (0.0,) * bins).bins(volatility)
        q = tuple(conformal_quantile(scores[binned == b], level) for b in range(bins))
        if all(math.isfinite(v) for v in q):
            return IntervalScale(level, edges, q)
    return IntervalScale(level, (), (conformal_quantile(scores, level),))


def volatility_terciles(volatility: np.ndarray) -> np.ndarray:
    """Tercile (0 low, 1 mid, 2 high) of each window's volatility among the windows given."""
    volatility = np.asarray(volatility, dtype=np.float64)
    if len(volatility) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(volatility, [1 / 3, 2 / 3])
    return np.searchsorted(edges, volatility, side="right")


def by_volatility(
    volatility: np.ndarray,
    actual_return: np.ndarray,
    level: float,
    model: tuple[np.ndarray, np.ndarray],
    persistence: tuple[np.ndarray, np.ndarray],
) -> list[dict[str, float | int | str | None]]:
    """Coverage and Winkler score per volatility tercile of the windows given, for the model and persistence.

    ``model`` and ``persistence`` are each (predicted log returns, half widths); a tercile without
    windows reports None.
    """
    tercile = volatility_terciles(volatility)
    rows: list[dict[str, float | int | str | None]] = []
    for b, name in enumerate(TERCILES):
        mask = tercile == b
        row: dict[str, float | int | str | None] = {"tercile": name, "n": int(np.count_nonzero(mask))}
        for prefix, (predicted, half) in (("", model), ("persistence_", persistence)):
            predicted, half = np.asarray(predicted)[mask], np.asarray(half)[mask]
            y = np.asarray(actual_return)[mask]
            row[f"{prefix}coverage"] = coverage(predicted, y, half) if mask.any() else None
            row[f"{prefix}winkler"] = winkler(predicted, y, half, level) if mask.any() else None
        rows.append(row)
    return rows
