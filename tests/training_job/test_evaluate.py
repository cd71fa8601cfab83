"""The promotion gate: Diebold–Mariano against a reference computation, constructed cases, metrics, conformal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from training_job.evaluate import (
    PROMOTED,
    RETAINED,
    conformal_quantile,
    coverage,
    cube_root_floor,
    diebold_mariano,
    gate,
    metrics,
)


def reference_dm(candidate: np.ndarray, incumbent: np.ndarray, h: int = 1) -> tuple[float, float]:
    """DM with HLN and Newey–West, written out term by term as in Harvey, Leybourne & Newbold (1997)."""
    d = [b - a for a, b in zip(candidate.tolist(), incumbent.tolist(), strict=True)]
    n = len(d)
    mean = sum(d) / n
    lag = 0
    while (lag + 1) ** 3 <= n:
        lag += 1

    def gamma(k: int) -> float:
        return sum((d[t] - mean) * (d[t - k] - mean) for t in range(k, n)) / n

    lrv = gamma(0) + 2 * sum((1 - k / (lag + 1)) * gamma(k) for k in range(1, lag + 1))
    dm = mean / math.sqrt(lrv / n)
    hln = dm * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    return hln, 1 - stats.t.cdf(hln, df=n - 1)


@pytest.mark.parametrize(("n", "lag"), [(1, 1), (7, 1), (8, 2), (26, 2), (27, 3), (999, 9), (1000, 10), (1331, 11)])
def test_newey_west_lag_is_the_exact_cube_root_floor(n, lag):
    """The lag is floor(n^(1/3)) without floating-point slips at perfect cubes."""
    assert cube_root_floor(n) == lag


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("h", [1, 3])
def test_diebold_mariano_matches_the_reference_computation(seed, h):
    """Statistic and one-sided p-value equal a term-by-term reference on autocorrelated losses."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(400)
    base = np.convolve(e, [1, 0.6, 0.3], mode="same") ** 2
    candidate, incumbent = base * rng.uniform(0.8, 1.1, 400), base * rng.uniform(0.9, 1.2, 400)
    expected_stat, expected_p = reference_dm(candidate, incumbent, h)
    got = diebold_mariano(candidate, incumbent, horizon=h)
    assert got.n == 400
    assert got.dm_stat == pytest.approx(expected_stat, rel=1e-10)
    assert got.p_value == pytest.approx(expected_p, rel=1e-9, abs=1e-12)
    assert got.loss_ratio == pytest.approx(candidate.mean() / incumbent.mean())


def test_diebold_mariano_is_one_sided():
    """Swapping candidate and incumbent turns p into 1 - p."""
    rng = np.random.default_rng(3)
    a, b = rng.chisquare(1, 300), rng.chisquare(1, 300) * 1.2
    assert diebold_mariano(a, b).p_value + diebold_mariano(b, a).p_value == pytest.approx(1.0)
    assert diebold_mariano(a, b).p_value < 0.05 < diebold_mariano(b, a).p_value


def test_identical_losses_have_no_evidence_either_way():
    """Equal losses everywhere: statistic 0, p 0.5, ratio 1."""
    loss = np.full(50, 2.0)
    got = diebold_mariano(loss, loss)
    assert (got.dm_stat, got.p_value, got.loss_ratio) == (0.0, 0.5, 1.0)


def test_min_detectable_ratio_shrinks_towards_one_with_more_data():
    """More windows detect smaller improvements; the ratio is a log-RMSE ratio below 1."""
    rng = np.random.default_rng(4)
    small = diebold_mariano(rng.chisquare(1, 200), rng.chisquare(1, 200)).min_detectable_ratio
    large = diebold_mariano(rng.chisquare(1, 20_000), rng.chisquare(1, 20_000)).min_detectable_ratio
    assert 0 < small < large < 1
    assert large == pytest.approx(1 - 0.5 * 2.49 * math.sqrt(2 * 2 / 20_000) / 1, abs=4e-3)


def _returns(n: int = 3000, phi: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) returns and their one-step optimal forecast."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + rng.normal(0, 1e-3)
    return y[1:], phi * y[:-1]


def test_gate_equal_models_are_retained():
    """A challenger identical to the champion is retained: no tolerance lets it through."""
    y, f = _returns()
    loss = (f - y) ** 2
    decision = gate(loss, y**2, loss.copy(), champion_is_persistence=False, alpha=0.05)
    assert decision.decision == RETAINED and not decision.demoted
    assert decision.vs_champion.loss_ratio == 1.0
    assert "does not significantly beat the champion" in decision.reason


def test_gate_clearly_better_challenger_is_promoted_over_persistence():
    """The optimal AR forecast beats persistence with p < 0.05 and is promoted."""
    y, f = _returns()
    decision = gate((f - y) ** 2, y**2, None, champion_is_persistence=True, alpha=0.05)
    assert decision.decision == PROMOTED
    assert decision.vs_persistence.p_value < 1e-6 and decision.vs_persistence.loss_ratio < 0.95
    assert decision.vs_champion is decision.vs_persistence and decision.champion_vs_persistence is None


def test_gate_persistence_cannot_be_beaten_by_noise():
    """On unpredictable returns a noisy model is retained and persistence stays champion."""
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1e-3, 3000)
    noisy = rng.normal(0, 2e-4, 3000)
    decision = gate((noisy - y) ** 2, y**2, y**2, champion_is_persistence=True, alpha=0.05)
    assert decision.decision == RETAINED and not decision.demoted
    assert decision.vs_persistence.loss_ratio > 1


def test_gate_degraded_champion_is_demoted_to_persistence():
    """A champion significantly worse than persistence on the new slice is demoted; a useless challenger is not."""
    y, f = _returns(phi=0.3)
    wrong_sign = -f * 2  # the regime flipped: yesterday's signal is now harmful
    decision = gate(y**2 * 1.0001, y**2, (wrong_sign - y) ** 2, champion_is_persistence=False, alpha=0.05)
    assert decision.demoted and decision.decision == RETAINED
    assert decision.champion_vs_persistence.p_value < 0.05
    assert "champion demoted" in decision.reason


def test_gate_challenger_better_than_champion_but_not_persistence_is_retained():
    """Beating a weak champion is not enough: the challenger must also beat persistence."""
    y, f = _returns(phi=0.3)
    rng = np.random.default_rng(6)
    champion = f + rng.normal(0, 3e-3, len(f))  # noisy, but not significantly worse than persistence? check below
    challenger = rng.normal(0, 5e-4, len(f))
    decision = gate((challenger - y) ** 2, y**2, (champion - y) ** 2, champion_is_persistence=False, alpha=0.05)
    assert decision.vs_champion.p_value < 0.05  # it does beat the champion...
    assert decision.decision == RETAINED  # ...but not persistence


@pytest.mark.parametrize(
    ("predicted", "actual", "persistence", "expected_direction"),
    [
        ([0.01, -0.01, 0.02], [0.02, 0.01, 0.0], False, 0.5),  # the unmoved bar does not count
        ([0.0, 0.0, 0.0], [0.02, 0.01, 0.0], True, None),  # persistence predicts no move: no direction figure
        ([0.01, 0.01], [0.0, 0.0], False, None),  # nothing moved
    ],
)
def test_metrics_count_direction_only_over_moved_bars(predicted, actual, persistence, expected_direction):
    """Directional accuracy is over bars that moved, and null for persistence."""
    m = metrics(np.array(predicted), np.array(actual), np.full(len(actual), 100.0), persistence)
    assert m["directional_accuracy"] == expected_direction


def test_metrics_values():
    """Price RMSE/MAE and log-return RMSE on a hand-checked example."""
    last = np.array([100.0, 200.0])
    m = metrics(np.log([1.01, 0.99]), np.log([1.02, 1.0]), last)
    assert m["rmse"] == pytest.approx(math.sqrt((1.0**2 + 2.0**2) / 2))
    assert m["mae"] == pytest.approx(1.5)
    assert m["log_rmse"] == pytest.approx(math.sqrt((math.log(1.02 / 1.01) ** 2 + math.log(1 / 0.99) ** 2) / 2))


@pytest.mark.parametrize(
    ("n", "level", "expected"), [(9, 0.9, 9.0), (19, 0.9, 18.0), (99, 0.9, 90.0), (5, 0.9, math.inf)]
)
def test_conformal_quantile_is_the_finite_sample_order_statistic(n, level, expected):
    """Q is the ceil((n+1)·level)-th smallest score; too few scores give an infinite interval."""
    assert conformal_quantile(np.arange(1, n + 1, dtype=float)[::-1], level) == expected


def test_conformal_intervals_cover_at_the_nominal_level():
    """Calibrated on one half of exchangeable errors, the interval covers ~90 % of the other half."""
    rng = np.random.default_rng(7)
    scale = rng.uniform(0.5, 3, 40_000)
    err = rng.standard_t(5, 40_000) * scale
    q = conformal_quantile(np.abs(err[:20_000]) / scale[:20_000], 0.9)
    got = coverage(np.zeros(20_000), err[20_000:], q * scale[20_000:])
    assert got == pytest.approx(0.9, abs=0.01)
