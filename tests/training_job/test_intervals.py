"""Volatility-adaptive conformal intervals: bins, per-bin quantiles, Winkler score and the per-tercile report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training_job.intervals import (
    TERCILES,
    IntervalScale,
    by_volatility,
    calibrate,
    conformal_quantile,
    coverage,
    volatility_terciles,
    winkler,
)


@pytest.mark.parametrize(
    ("volatility", "expected_bin"),
    [(0.5, 0), (0.999, 0), (1.0, 1), (1.5, 1), (2.0, 2), (7.0, 2)],  # an edge belongs to the bin above it
)
def test_a_volatility_falls_in_the_bin_its_edges_say(volatility, expected_bin):
    """Bin b holds edges[b-1] <= vol < edges[b]."""
    assert IntervalScale(0.9, (1.0, 2.0), (3.0, 2.0, 1.0)).bins(np.array([volatility])).tolist() == [expected_bin]


@pytest.mark.parametrize(
    ("scale", "volatility", "expected"),
    [
        (IntervalScale(0.9, (1.0, 2.0), (3.0, 2.0, 1.5)), [0.5, 1.5, 4.0], [1.5, 3.0, 6.0]),
        (IntervalScale(0.9, (), (2.0,)), [0.5, 1.5, 4.0], [1.0, 3.0, 8.0]),  # one bin: q × vol
        (IntervalScale(0.8), [0.5], [math.inf]),  # never calibrated: no interval
    ],
)
def test_the_half_width_is_the_bins_quantile_times_the_volatility(scale, volatility, expected):
    """The half width is q[bin(vol)] × vol."""
    assert scale.half_width(np.array(volatility)).tolist() == expected


@pytest.mark.parametrize(("edges", "q"), [((1.0,), (1.0,)), ((), (1.0, 2.0)), ((1.0, 2.0), (1.0, 2.0))])
def test_edges_and_quantiles_must_fit(edges, q):
    """Edges and quantiles must fit: k edges need k + 1 quantiles."""
    with pytest.raises(ValueError, match="volatility edges need"):
        IntervalScale(0.9, edges, q)


@pytest.mark.parametrize(
    ("actual", "half", "expected"),
    [
        (0.5, 1.0, 2.0),  # inside: the width
        (1.0, 1.0, 2.0),  # on the bound: inside
        (1.5, 1.0, 2.0 + 20.0 * 0.5),  # above by 0.5: width + 2/(1 - 0.9) × 0.5
        (-3.0, 1.0, 2.0 + 20.0 * 2.0),  # below by 2
        (0.0, 0.0, 0.0),  # zero width, hit
    ],
)
def test_winkler_score_is_width_plus_the_penalised_miss(actual, half, expected):
    """Winkler = 2·half + 2/α · distance outside, at level 0.9 (α = 0.1)."""
    got = winkler(np.array([0.0]), np.array([actual]), np.array([half]), 0.9)
    assert got == pytest.approx(expected, rel=1e-12)


def test_coverage_counts_the_bounds_as_inside():
    """Coverage: share with |actual − predicted| <= half width."""
    assert coverage(np.zeros(4), np.array([-1.0, 1.0, 1.01, 0.0]), np.ones(4)) == 0.75


def test_calibration_fixes_tercile_edges_and_takes_each_bins_order_statistic():
    """Three bins of 30: edges at the volatility terciles, q_b the 28th smallest |error| / vol of bin b."""
    volatility = np.repeat([1.0, 2.0, 4.0], 30) * np.tile(1.0 + np.arange(30) / 300, 3)
    ratio = np.tile(np.arange(1, 31, dtype=float), 3) * np.repeat([1.0, 0.5, 0.25], 30)
    scale = calibrate(ratio * volatility, volatility, 0.9)
    assert scale.level == 0.9 and len(scale.edges) == 2
    assert volatility[29] <= scale.edges[0] <= volatility[30] and volatility[59] <= scale.edges[1] <= volatility[60]
    # ceil(31 × 0.9) = 28: the 28th smallest of 1..30, scaled per bin
    assert scale.q == pytest.approx((28.0, 14.0, 7.0), rel=1e-12)
    assert scale.half_width(np.array([1.0, 2.5, 5.0])).tolist() == pytest.approx([28.0, 35.0, 35.0])


@pytest.mark.parametrize(("n", "bins"), [(26, 1), (27, 3)])  # 9 per bin is the least with a finite 90 % quantile
def test_too_few_calibration_windows_share_one_bin(n, bins):
    """Where a bin's quantile would be infinite, every window shares one bin (the plain normalised conformal)."""
    volatility = 1.0 + np.arange(n) / n
    scale = calibrate(volatility * np.arange(1, n + 1), volatility, 0.9)
    assert len(scale.q) == bins and all(math.isfinite(q) for q in scale.q)
    if bins == 1:
        assert scale.q == (conformal_quantile(np.arange(1, n + 1, dtype=float), 0.9),) == (25.0,)


def test_volatility_terciles_split_the_windows_in_thirds():
    """Terciles of the windows given: low, mid, high by their own quantiles."""
    assert volatility_terciles(np.array([6.0, 1.0, 5.0, 2.0, 4.0, 3.0])).tolist() == [2, 0, 2, 0, 1, 1]
    assert volatility_terciles(np.zeros(0)).tolist() == []


def test_by_volatility_reports_each_tercile_for_the_model_and_persistence():
    """Per tercile: n, coverage and Winkler of both forecasters, on a hand-checked example."""
    volatility = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    actual = np.array([0.5, 2.0, 0.0, 1.0, -1.0, 0.0])
    model = (np.zeros(6), np.ones(6))
    persistence = (np.zeros(6), np.full(6, 0.5))
    rows = by_volatility(volatility, actual, 0.9, model, persistence)
    assert [row["tercile"] for row in rows] == list(TERCILES) and [row["n"] for row in rows] == [2, 2, 2]
    low, mid, high = rows
    assert (low["coverage"], low["winkler"]) == (0.5, pytest.approx((2.0 + 2.0 + 20.0) / 2))
    assert (low["persistence_coverage"], low["persistence_winkler"]) == (0.5, pytest.approx((1.0 + 1.0 + 30.0) / 2))
    assert (mid["coverage"], mid["persistence_coverage"]) == (1.0, 0.5)
    assert (high["coverage"], high["winkler"]) == (1.0, pytest.approx(2.0))
    assert high["persistence_winkler"] == pytest.approx((1.0 + 10.0 + 1.0) / 2)


def test_by_volatility_has_no_figures_for_an_empty_tercile():
    """No windows at all: every tercile reports n 0 and None."""
    empty = (np.zeros(0), np.zeros(0))
    rows = by_volatility(np.zeros(0), np.zeros(0), 0.9, empty, empty)
    assert [(row["n"], row["coverage"], row["persistence_winkler"]) for row in rows] == [(0, None, None)] * 3


def _noisy_scale_errors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Errors whose true scale varies, and a noisy estimate of it (as a short window's volatility is)."""
    rng = np.random.default_rng(seed)
    true = np.exp(rng.normal(0.0, 0.3, n))
    estimate = true * np.exp(rng.normal(0.0, 0.35, n))
    return true * rng.standard_t(6, n), estimate


@pytest.mark.parametrize("seed", [0, 1])
def test_binned_calibration_covers_every_volatility_tercile_where_one_quantile_does_not(seed):
    """With a noisy volatility, one quantile is too narrow when calm and too wide when busy; per-bin ones are not."""
    errors, volatility = _noisy_scale_errors(60_000, seed)
    cal, test = slice(0, 30_000), slice(30_000, None)
    binned = calibrate(np.abs(errors[cal]), volatility[cal], 0.9)
    pooled = calibrate(np.abs(errors[cal]), volatility[cal], 0.9, bins=1)
    zeros = np.zeros(30_000)
    rows = by_volatility(
        volatility[test],
        errors[test],
        0.9,
        (zeros, binned.half_width(volatility[test])),
        (zeros, pooled.half_width(volatility[test])),
    )
    assert [row["coverage"] for row in rows] == pytest.approx([0.9, 0.9, 0.9], abs=0.01)
    low, _, high = (row["persistence_coverage"] for row in rows)
    assert low < 0.87 and high > 0.92  # the single quantile's pattern, which the bins remove
    assert sum(row["winkler"] for row in rows) < sum(row["persistence_winkler"] for row in rows)


@pytest.mark.parametrize(
    ("predicted", "actual", "half", "covered", "score"),
    [
        (0.010, 0.012, 0.003, 1.0, 0.006),  # inside: the width alone
        (0.010, 0.015, 0.003, 0.0, 0.006 + 20 * 0.002),  # 0.002 above the upper edge, times 2 / (1 - 0.9)
        (-0.010, -0.015, 0.003, 0.0, 0.006 + 20 * 0.002),  # the same below the lower edge
    ],
)
def test_coverage_and_winkler_measure_around_the_forecast(predicted, actual, half, covered, score):
    """Both are taken around the predicted return, not around zero; a miss costs 2/(1 − level) per unit outside."""
    args = (np.array([predicted]), np.array([actual]), np.array([half]))
    assert coverage(*args) == covered
    assert winkler(*args, 0.9) == pytest.approx(score, rel=1e-9)
