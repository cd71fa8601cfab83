"""The promotion gate: Diebold–Mariano against a reference computation, constructed cases, metrics, conformal."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats

from training_job.evaluate import (
    PROMOTED,
    RETAINED,
    SELF,
    Bets,
    Evidence,
    Verdict,
    bounded_differential,
    conformal_quantile,
    coverage,
    cube_root_floor,
    decide,
    diebold_mariano,
    fresh_windows,
    gate,
    metrics,
    minute_outcomes,
    per_minute_mean,
    promotion_threshold,
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


# ---- cross-sectional dependence: one observation per minute ----


@pytest.mark.parametrize(
    ("values", "as_of", "minutes", "means"),
    [
        ([1.0, 3.0, 5.0], [60, 60, 120], [60, 120], [2.0, 5.0]),
        ([4.0, 2.0, 6.0, 1.0], [180, 0, 180, 0], [0, 180], [1.5, 5.0]),  # symbols stacked one after another
        ([7.0], [300], [300], [7.0]),
        ([], [], [], []),
    ],
)
def test_per_minute_mean_averages_the_windows_of_each_minute(values, as_of, minutes, means):
    """Each distinct minute, ascending, with the mean over the windows (symbols) that have it."""
    got_minutes, got_means = per_minute_mean(np.array(values), np.array(as_of, dtype=np.int64))
    assert got_minutes.tolist() == minutes and got_means.tolist() == pytest.approx(means)


def test_the_gate_tests_per_minute_means_when_given_the_minutes():
    """With as_of, every Diebold–Mariano test runs on the per-minute mean losses (n = minutes, not windows)."""
    rng = np.random.default_rng(8)
    as_of = np.tile(np.arange(200) * 60, 3)  # three symbols, stacked symbol by symbol as the job does
    candidate, incumbent = rng.chisquare(1, 600), rng.chisquare(1, 600) * 1.1
    got = gate(candidate, incumbent, incumbent * 0.9, False, 0.05, as_of=as_of)
    by_minute = diebold_mariano(candidate.reshape(3, 200).mean(0), incumbent.reshape(3, 200).mean(0))
    assert got.vs_persistence.n == 200
    assert got.vs_persistence.dm_stat == pytest.approx(by_minute.dm_stat, rel=1e-12)
    assert got.vs_persistence.p_value == pytest.approx(by_minute.p_value, rel=1e-10)
    assert got.champion_vs_persistence.n == got.vs_champion.n == 200


def _rejection_rate(rho: float, per_minute: bool, reps: int = 2000, symbols: int = 5, minutes: int = 200) -> float:
    """Share of H0 replications the gate promotes: loss differentials equicorrelated at ``rho`` across symbols."""
    rng = np.random.default_rng(11)
    as_of = np.repeat(np.arange(minutes)[None, :] * 60, symbols, axis=0).ravel()
    promoted = 0
    for _ in range(reps):
        common = rng.standard_normal((1, minutes))
        d = (math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.standard_normal((symbols, minutes))).ravel()
        decision = gate(10 - d / 2, 10 + d / 2, None, True, 0.05, as_of=as_of if per_minute else None)
        promoted += decision.decision == PROMOTED
    return promoted / reps


@pytest.mark.parametrize(
    ("rho", "per_minute", "low", "high"),
    [
        (0.0, True, 0.03, 0.07),
        (0.9, True, 0.03, 0.07),  # per-minute means: the nominal 5 % holds whatever the symbols share
        (0.0, False, 0.03, 0.07),  # independent symbols: stacking them was harmless
        (0.9, False, 0.15, 0.35),  # stacked, correlated symbols: the old gate's 5 % test rejected ~ 22 %
    ],
)
def test_rejection_rate_at_nominal_five_percent_under_cross_sectional_correlation(rho, per_minute, low, high):
    """Monte Carlo, 2,000 replications of 5 symbols x 200 minutes under H0: size of the gate's 5 % test."""
    assert low <= _rejection_rate(rho, per_minute) <= high


# ---- the bounded differential and the bets built on it ----


@pytest.mark.parametrize(
    ("incumbent", "candidate", "actual", "variance", "d", "bound"),
    [
        (0.0, 1.0, 1.0, 0.0, 1.0, 1.0),  # the candidate is exact, the incumbent is not
        (0.0, 1.0, 0.5, 0.0, 0.0, 1.0),  # equal errors
        (0.0, 0.2, 0.3, 0.01, 0.08 / 0.18, 0.2 / math.sqrt(0.2)),  # κ·v = 8 x 0.01 softens the ratio
        (0.0, -0.2, 0.3, 0.01, -0.16 / 0.42, 0.2 / math.sqrt(0.2)),  # the candidate is worse
        (0.1, 0.1, 0.5, 0.01, 0.0, 0.0),  # the same forecast: nothing at stake
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # nothing at all, and no division by zero
    ],
)
def test_bounded_differential_values(incumbent, candidate, actual, variance, d, bound):
    """D = (e_i² − e_c²) / (e_i² + e_c² + 8v) and its bound |δ| / √(δ² + 16v), hand-computed."""
    got_d, got_bound = bounded_differential(
        np.array([incumbent]), np.array([candidate]), np.array([actual]), np.array([variance])
    )
    assert got_d[0] == pytest.approx(d, abs=1e-15) and got_bound[0] == pytest.approx(bound, abs=1e-15)


def test_the_bound_holds_and_is_reached():
    """|D| ≤ b on any outcome, with equality where the outcome sits √((δ²/2 + κv)/2) from the forecasts' midpoint."""
    rng = np.random.default_rng(9)
    incumbent, candidate = rng.normal(0, 1, 10_000), rng.normal(0, 1, 10_000)
    variance, actual = rng.exponential(0.5, 10_000), rng.standard_t(2, 10_000) * 3
    d, bound = bounded_differential(incumbent, candidate, actual, variance)
    assert np.all(np.abs(d) <= bound + 1e-12) and np.all(bound <= 1)
    gap = candidate - incumbent
    extreme = (incumbent + candidate) / 2 + np.sign(gap) * np.sqrt((gap**2 / 2 + 8 * variance) / 2)
    d, bound = bounded_differential(incumbent, candidate, extreme, variance)
    assert d == pytest.approx(bound, rel=1e-9)


@pytest.mark.parametrize("noise", ["normal", "laplace"])
@pytest.mark.parametrize("forecast", [0.05, 0.5, 2.0])
def test_no_forecast_beats_persistence_on_a_random_walk_in_expectation(noise, forecast):
    """Symmetric unimodal returns around 0: E[D] < 0 for any non-zero forecast, and > 0 once it is the centre."""
    rng = np.random.default_rng(10)
    shock = rng.standard_normal(400_000) if noise == "normal" else rng.laplace(0, 1, 400_000)
    f = np.full(len(shock), forecast)
    for centre, sign in ((0.0, -1), (forecast, 1)):
        d, _ = bounded_differential(np.zeros(len(shock)), f, centre + shock, np.ones(len(shock)))
        assert sign * d.mean() > 4 * d.std() / math.sqrt(len(d))


def test_minute_outcomes_divide_the_mean_differential_by_the_mean_bound():
    """One outcome per minute: mean D over mean b of its windows, 0 where the forecasts agree, within [−1, 1]."""
    as_of = np.array([0, 0, 60, 120])
    incumbent = np.zeros(4)
    candidate = np.array([1.0, 0.5, 0.0, 2.0])
    actual = np.array([1.0, 0.25, 0.3, 0.0])
    minutes, outcomes = minute_outcomes(incumbent, candidate, actual, np.zeros(4), as_of)
    assert minutes.tolist() == [0, 60, 120] and outcomes.tolist() == pytest.approx([0.5, 0.0, -1.0])


def reference_bets(x: list[float]) -> tuple[float, float, float, float, float]:
    """The aGRAPA bets step by step: prior variance 0.25 worth one minute, bets capped at 0.5, memory 390."""
    keep = 1 - 1 / 390
    mass = total = spread = log_e = peak = 0.0
    for value in x:
        mean, variance = total / (mass + 1), (0.25 + spread) / (mass + 1)
        bet = min(max(mean / (variance + mean**2), 0.0), 0.5)
        log_e += math.log(1 + bet * value)
        peak = max(peak, log_e)
        mass, total, spread = keep * mass + 1, keep * total + value, keep * spread + (value - mean) ** 2
    return log_e, peak, mass, total, spread


def test_bets_match_the_step_by_step_reference_in_one_batch_or_many():
    """The vectorised wealth equals the step-by-step one, however the minutes are split into ticks."""
    rng = np.random.default_rng(12)
    x = np.clip(rng.normal(0.05, 0.4, 1000), -1, 1)
    expected = reference_bets(x.tolist())
    for chunks in ([1000], [1, 14, 15, 600, 370]):
        bets = Bets()
        for part in np.split(x, np.cumsum(chunks)[:-1]):
            bets = bets.after(part)
        got = (bets.log_e, bets.peak, bets.mass, bets.total, bets.spread)
        assert got == pytest.approx(expected, rel=1e-9) and bets.n == 1000


@pytest.mark.parametrize(
    ("outcomes", "log_e"),
    [
        ([1.0, 1.0], math.log(1.5)),  # the first bet is 0 (prior mean 0); the second is capped at 0.5
        ([0.1, 0.1], 0.037041271680349076),  # second bet 0.05 / (0.13 + 0.05²)
        ([-1.0, -1.0, -1.0], 0.0),  # a negative mean is never bet on
        ([], 0.0),
    ],
)
def test_bets_pinned_values(outcomes, log_e):
    """Hand-computed wealth for short sequences: the prior, the cap and the one-sided bet."""
    assert Bets().after(np.array(outcomes)).log_e == pytest.approx(log_e, rel=1e-12, abs=1e-15)


def test_bets_keep_their_level_under_the_null_and_find_a_signal():
    """Mean-zero outcomes rarely reach 20 (Ville: at most 5 %); outcomes of mean 0.1 reach it."""
    rng = np.random.default_rng(13)
    null = [Bets().after(rng.uniform(-1, 1, 400)).crossed(20) for _ in range(2000)]
    signal = [Bets().after(np.clip(rng.uniform(-1, 1, 1500) + 0.1, -1, 1)).crossed(20) for _ in range(200)]
    assert np.mean(null) <= 0.05 and np.mean(signal) >= 0.9


@pytest.mark.parametrize(
    ("peak", "threshold", "crossed"),
    [(math.log(40), 40, True), (math.log(40) - 1e-9, 40, False), (math.log(20), 20, True), (0.0, 1, True)],
)
def test_crossed_is_the_peak_reaching_the_threshold(peak, threshold, crossed):
    """The wealth counts as having reached a threshold from the moment its peak equals it."""
    assert Bets(log_e=0.0, peak=peak).crossed(threshold) is crossed


@pytest.mark.parametrize(("alpha", "threshold"), [(0.05, 40.0), (0.01, 200.0), (0.1, 20.0)])
def test_the_promotion_threshold_spends_the_half_of_alpha_left(alpha, threshold):
    """Half of α goes to the first decision; the e-processes promote at 1 / (α/2)."""
    assert promotion_threshold(alpha) == pytest.approx(threshold)


@pytest.mark.parametrize(
    ("as_of", "watermark", "horizon", "fresh"),
    [
        ([0, 60, 120, 180], None, 1, [True, True, True, True]),
        ([0, 60, 120, 180], 60, 1, [False, False, True, True]),
        ([0, 60, 120, 180], 60, 2, [False, False, False, True]),  # the outcome at 60 is known at 180
        ([0, 60, 120, 180, 240], None, 2, [True, False, True, False, True]),
        ([120, 60, 120, 60], 60, 1, [True, False, True, False]),  # every symbol of a minute at once
        ([0, 60], 60, 1, [False, False]),
    ],
)
def test_fresh_windows_are_after_the_watermark_and_spaced_by_the_horizon(as_of, watermark, horizon, fresh):
    """Only minutes no decision used, and far enough apart that each outcome is known before the next bet."""
    assert fresh_windows(np.array(as_of), watermark, horizon).tolist() == fresh


@pytest.mark.parametrize(("recorded", "carrier", "champion"), [(SELF, "7", "7"), ("3", "7", "3"), ("1", "2", "1")])
def test_evidence_round_trips_through_its_tag(recorded, carrier, champion):
    """The record comes back exactly from its JSON tag; SELF names the version carrying it."""
    bets = Bets(log_e=1.25, peak=2.5, n=30, mass=29.1, total=3.3, spread=0.1 + 0.2)
    evidence = Evidence(recorded, 1_800_000_060, 1_800_000_000, bets, Bets(n=3, total=-0.1), Bets(peak=0.7))
    back = Evidence.from_tag(evidence.to_tag(), carrier)
    assert back.champion == champion and back == Evidence(champion, *list(evidence.__dict__.values())[1:])


# ---- decide: the promotion rule across ticks ----


def _market(minutes: int, phi: float, seed: int, symbols: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """as_of, next return and last return of each window: AR(1) returns of ``symbols`` symbols, stacked."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1e-3, (symbols, minutes + 1))
    r = noise.copy()
    for t in range(1, minutes + 1):
        r[:, t] = phi * r[:, t - 1] + noise[:, t]
    return np.tile(np.arange(minutes) * 60, symbols), r[:, 1:].ravel(), r[:, :-1].ravel()


VAR = 1e-6  # the simulated returns' variance: each window's predictable scale


def _decide(
    evidence: Evidence,
    as_of: np.ndarray,
    y: np.ndarray,
    mine: np.ndarray,
    champion: np.ndarray | None = None,
    champion_version: str = "1",
    alpha: float = 0.05,
) -> Verdict:
    """Decide with every window at the simulated variance; version 1 is persistence."""
    variance = np.full(len(y), VAR)
    return decide(evidence, as_of, y, mine, champion, variance, champion_version, champion_version == "1", "1", alpha)


def test_the_first_decision_tests_the_whole_slice_at_half_alpha():
    """No record yet: the slice's per-minute Diebold–Mariano tests at α/2 decide, and every minute is then used."""
    as_of, y, x = _market(300, 0.2, 1)
    verdict = _decide(Evidence(), as_of, y, 0.2 * x)
    assert (verdict.decision, verdict.champion, verdict.minutes) == (PROMOTED, SELF, 300)
    assert verdict.slice_tests.vs_persistence.n == 300 and verdict.slice_tests.vs_persistence.p_value < 0.01
    assert verdict.evidence == Evidence(SELF, int(as_of.max())) and "at level 0.025" in verdict.reason
    weak_as_of, weak_y, weak_x = _market(300, 0.06, 12)
    weak = _decide(Evidence(), weak_as_of, weak_y, 0.06 * weak_x)
    assert 0.025 < weak.slice_tests.vs_persistence.p_value < 0.05  # would have passed at α, not at α/2
    assert (weak.decision, weak.champion, weak.evidence.champion) == (RETAINED, "1", "1")


def test_a_minute_is_used_by_one_decision_only():
    """Deciding twice on the same slice: the second decision has no new minute and changes nothing."""
    as_of, y, x = _market(60, 0.2, 2)
    once = _decide(Evidence("1", -60), as_of, y, 0.2 * x)
    twice = _decide(once.evidence, as_of, y, 0.2 * x)
    assert once.minutes == 60 and once.evidence.challengers.n == 60 and once.evidence.watermark == 59 * 60
    assert (twice.decision, twice.minutes, twice.evidence) == (RETAINED, 0, once.evidence)
    assert twice.reason == "no minute after 1970-01-01T00:59:00Z yet: nothing new to decide on"


def _ticks(
    phi: float, challenger_phi: float, ticks: int, seed: int, noise: float = 0.0, champion_phi: float | None = None
) -> Iterator[Verdict]:
    """Decide tick after tick on 15 new minutes each; yields each verdict."""
    as_of, y, x = _market(ticks * 15, phi, seed, symbols=5)
    rng = np.random.default_rng(seed + 1)
    evidence = Evidence("1", -60) if champion_phi is None else Evidence("9", -60)
    for k in range(ticks):
        now = as_of < (k + 1) * 15 * 60  # what has arrived by this tick; older minutes were used already
        mine = challenger_phi * x[now] + rng.normal(0, noise, now.sum())
        theirs = None if champion_phi is None else champion_phi * x[now]
        verdict = _decide(evidence, as_of[now], y[now], mine, theirs, evidence.champion)
        evidence = verdict.evidence
        yield verdict


def test_noisy_challengers_on_a_random_walk_are_never_promoted():
    """100 ticks of fresh minutes from a random walk: the challengers' evidence stays far below 40."""
    verdicts = list(_ticks(0.0, 0.05, 100, 3, noise=2e-4))
    assert all(v.decision == RETAINED and v.minutes == 15 for v in verdicts)
    assert verdicts[-1].reached.challengers.n == 1500 and verdicts[-1].reached.challengers.peak < math.log(4)


def test_a_real_signal_is_promoted_and_the_evidence_starts_afresh():
    """AR(1) returns: the challengers' e-value reaches 40 within a day of ticks; the record then restarts."""
    verdicts = list(_ticks(0.2, 0.2, 26, 4))
    promoted = [k for k, v in enumerate(verdicts) if v.decision == PROMOTED]
    assert promoted and promoted[0] < 26
    first = verdicts[promoted[0]]
    assert first.reached.challengers.crossed(40) and not verdicts[promoted[0] - 1].reached.challengers.crossed(40)
    assert first.champion == SELF and first.evidence == Evidence(SELF, first.reached.watermark)
    assert first.reason.startswith("challengers beat persistence (e=") and "≥ 40" in first.reason


def test_a_champion_worse_than_persistence_is_demoted_and_its_records_end():
    """A trained champion whose sign flipped: its record crosses 20, persistence is champion again."""
    verdicts = list(_ticks(0.2, 0.0, 40, 5, champion_phi=-0.4))
    demoted = next(v for v in verdicts if v.demoted)
    assert demoted.reached.champion_worse.crossed(20) and demoted.champion == "1"
    assert demoted.evidence.champion == "1" and demoted.evidence.champion_worse == Bets()
    assert demoted.evidence.vs_champion == Bets() and demoted.evidence.challengers.n == demoted.reached.challengers.n
    assert demoted.reason.startswith("challengers do not yet beat persistence") and "champion demoted" in demoted.reason


def test_a_challenger_no_better_than_a_trained_champion_is_not_promoted():
    """Both beat persistence; the challenger forecasts what the champion does, so nothing shows it better."""
    verdicts = list(_ticks(0.2, 0.2, 40, 6, champion_phi=0.2))
    last = verdicts[-1]
    assert all(v.decision == RETAINED and not v.demoted for v in verdicts)
    assert last.reached.challengers.crossed(40) and last.reached.vs_champion.log_e == 0.0
    assert last.reason.startswith("challengers do not yet beat the champion (e=1 over 600 minutes")


def test_a_champion_that_could_not_be_scored_is_demoted():
    """No forecasts from the trained champion: persistence takes over, with or without new minutes."""
    as_of, y, x = _market(30, 0.0, 7)
    for evidence in (Evidence("5", -60), Evidence("5", int(as_of.max()))):
        verdict = decide(evidence, as_of, y, 0.1 * x, None, np.full(len(y), VAR), "5", False, "1", 0.05)
        assert (verdict.demoted, verdict.champion, verdict.evidence.champion) == (True, "1", "1")


def test_a_record_about_another_champion_starts_the_champion_s_records_afresh():
    """The champion's records belong to it: against another champion they start from 1 again."""
    as_of, y, x = _market(30, 0.0, 8)
    old = Evidence("5", -60, 0, Bets(), Bets(log_e=2.0, peak=2.0, n=99), Bets(log_e=2.9, peak=2.9, n=99))
    verdict = decide(old, as_of, y, 0.1 * x, 0.1 * x, np.full(len(y), VAR), "6", False, "1", 0.05)
    assert verdict.reached.champion == "6" and not verdict.demoted
    assert verdict.reached.champion_worse.n == verdict.reached.vs_champion.n == 30


def test_figures_report_the_evidence_at_the_decision():
    """The summary's evidence: the e-values the decision saw, its thresholds, minutes and times."""
    as_of, y, x = _market(30, 0.0, 9)
    verdict = decide(Evidence("5", -60), as_of, y, 0.1 * x, 0.1 * x, np.full(len(y), VAR), "5", False, "1", 0.05)
    figures = verdict.figures(0.05)
    r = verdict.reached
    assert figures == {
        "first_decision": False,
        "minutes": 30,
        "since": "1970-01-01T00:00:00Z",
        "watermark": "1970-01-01T00:29:00Z",
        "threshold": 40.0,
        "demotion_threshold": 20.0,
        "e_value": min(r.challengers.e_value, 1.0),
        "vs_persistence": {"e": r.challengers.e_value, "n": 30},
        "vs_champion": {"e": 1.0, "n": 30},
        "champion_worse": {"e": r.champion_worse.e_value, "n": 30},
    }
    against_persistence = _decide(Evidence("1", -60), as_of, y, 0.1 * x).figures(0.05)
    assert against_persistence["vs_champion"] is None and against_persistence["champion_worse"] is None
