"""The live skill statistics: Student t without SciPy, DM-HLN with Newey–West from running sums, hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from functions.shared.skill import MAX_LAG, DMTest, LossSums, cube_root_floor, regularized_beta, student_t_sf


def _t1_sf(t: float) -> float:
    """Cauchy: P(T > t) = 1/2 − atan(t)/π."""
    return 0.5 - math.atan(t) / math.pi


def _t2_sf(t: float) -> float:
    """Two degrees of freedom: P(T > t) = (1 − t/√(2 + t²)) / 2."""
    return 0.5 * (1 - t / math.sqrt(2 + t * t))


def _t4_sf(t: float) -> float:
    """Four degrees of freedom: P(T > t) = 1/2 − (3/8)·u·(1 − t²/(12(1 + t²/4))), u = t/√(1 + t²/4)."""
    u = t / math.sqrt(1 + t * t / 4)
    return 0.5 - 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4)))


@pytest.mark.parametrize(("df", "closed_form"), [(1, _t1_sf), (2, _t2_sf), (4, _t4_sf)], ids=["df1", "df2", "df4"])
@pytest.mark.parametrize("t", [-7.5, -1.0, -0.2, 0.0, 0.3, 1.0, 1.5, 2.0, 4.9, 30.0])
def test_student_t_tail_matches_the_closed_forms(df, closed_form, t):
    """P(T > t) for 1, 2 and 4 degrees of freedom equals the textbook closed forms."""
    assert student_t_sf(t, df) == pytest.approx(closed_form(t), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("t", "expected"), [(1.959963984540054, 0.025), (0.0, 0.5), (-1.6448536269514722, 0.95)])
def test_student_t_with_a_million_df_is_the_normal(t, expected):
    """With 10⁶ degrees of freedom the tail is the normal's (its 97.5 % and 5 % quantiles)."""
    assert student_t_sf(t, 1e6) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [(1.0, 1.0, 0.3, 0.3), (2.0, 1.0, 0.5, 0.25), (1.0, 3.0, 0.5, 1 - 0.5**3), (0.5, 0.5, 0.5, 0.5)],
)
def test_regularized_beta_hand_values(a, b, x, expected):
    """I_x(1,1) = x, I_x(2,1) = x², I_x(1,b) = 1 − (1−x)^b, I_½(½,½) = ½."""
    assert regularized_beta(a, b, x) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("args", "message"), [((0.0, 1.0, 0.5), "need a, b > 0"), ((1.0, 1.0, 1.5), "0 <= x <= 1")])
def test_regularized_beta_refuses_what_it_cannot_compute(args, message):
    """Bad arguments are a ValueError naming the bound."""
    with pytest.raises(ValueError, match=message):
        regularized_beta(*args)


@pytest.mark.parametrize(("n", "lag"), [(1, 1), (7, 1), (8, 2), (999, 9), (1000, 10), (110_592, 48)])
def test_cube_root_floor_is_exact(n, lag):
    """⌊n^{1/3}⌋ without the float error of n ** (1/3)."""
    assert cube_root_floor(n) == lag


# d = persistence − model: [1, 3, 2] and [1, 2, 3, 4, 5]; worked by hand (c_k: autocovariance at lag k):
# n = 3: lag 1, m = 2, c0 = 2/3, c1 = −1/3, LRV = 2/3 − 1/3 = 1/3, se = √(LRV/n) = 1/3,
#        HLN = √(2/3), DM = 2/(1/3)·√(2/3) = √24, against t with 2 df.
# n = 5: lag 1, m = 3, c0 = 2, c1 = 4/5, LRV = 2 + 0.8 = 2.8, se = √0.56, HLN = √0.8, DM = 3√(10/7), t with 4 df.
HAND = [
    pytest.param([1.0, 1.0, 1.0], [2.0, 4.0, 3.0], math.sqrt(24), _t2_sf(math.sqrt(24)), math.sqrt(3 / 9), id="n3"),
    pytest.param(
        [0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], 3 * math.sqrt(10 / 7), _t4_sf(3 * math.sqrt(10 / 7)), 0.0, id="n5"
    ),
]


@pytest.mark.parametrize(("model", "persistence", "stat", "p_better", "ratio"), HAND)
def test_dm_hln_newey_west_matches_the_hand_computed_case(model, persistence, stat, p_better, ratio):
    """The DM statistic, both one-sided p-values and the log-RMSE ratio of two hand-worked series."""
    sums = LossSums().extend(model, persistence)
    test = sums.dm()
    assert test.n == len(model)
    assert test.stat == pytest.approx(stat, rel=1e-12)
    assert test.p_better == pytest.approx(p_better, rel=1e-10)
    assert test.p_worse == pytest.approx(1 - p_better, rel=1e-10)
    assert sums.ratio() == pytest.approx(ratio, abs=1e-15)


def _batch_dm(d: np.ndarray) -> float:
    """The DM statistic computed the plain way on the whole series (centred, Bartlett, HLN)."""
    n = len(d)
    lag = min(cube_root_floor(n), MAX_LAG, n - 1)
    c = d - d.mean()
    lrv = c @ c / n + sum(2 * (1 - k / (lag + 1)) * (c[k:] @ c[:-k]) / n for k in range(1, lag + 1))
    return d.mean() / math.sqrt(lrv / n) * math.sqrt((n - 1) / n)


@pytest.mark.parametrize("chunks", [[600], [1, 599], [47, 1, 2, 300, 250], [200, 200, 200], [5] * 120])
def test_sums_extended_batch_by_batch_give_the_whole_series_figures(chunks):
    """Folding a series in any batches gives the statistic, ratio and coverage of the whole series at once."""
    rng = np.random.default_rng(11)
    model = rng.gamma(1.0, 1e-6, 600)
    persistence = model + rng.normal(2e-8, 1e-7, 600) ** 2 + rng.normal(0, 5e-7, 600).cumsum() * 1e-3
    persistence = np.abs(persistence)
    covered = [bool(i % 10) if i % 7 else None for i in range(600)]
    sums, start = LossSums(), 0
    for size in chunks:
        part = slice(start, start + size)
        sums = sums.extend(model[part], persistence[part], covered[part])
        start += size
    d = persistence - model
    assert sums.n == 600
    assert sums.dm().stat == pytest.approx(_batch_dm(d), rel=1e-9)
    assert sums.ratio() == pytest.approx(math.sqrt(model.sum() / persistence.sum()), rel=1e-12)
    with_interval = [c for c in covered if c is not None]
    assert sums.coverage() == pytest.approx(sum(with_interval) / len(with_interval))
    assert LossSums.from_json(sums.as_json()) == sums


@pytest.mark.parametrize(
    ("model", "persistence", "p_better", "p_worse"),
    [
        pytest.param([1.0] * 4, [1.0] * 4, 0.5, 0.5, id="identical"),
        pytest.param([1.0] * 4, [2.0] * 4, 0.0, 1.0, id="always-better"),
        pytest.param([3.0] * 4, [2.0] * 4, 1.0, 0.0, id="always-worse"),
    ],
)
def test_losses_that_never_vary_in_difference_have_degenerate_p_values(model, persistence, p_better, p_worse):
    """A constant loss difference has no variance: p is 0.5 for none, else 0 or 1 by its sign."""
    test = LossSums().extend(model, persistence).dm()
    assert (test.p_better, test.p_worse) == (p_better, p_worse)


def test_fewer_than_three_forecasts_have_no_p_value_and_none_no_ratio():
    """Below n = 3 there is no test; with nothing scored there is no ratio or coverage either."""
    assert LossSums().extend([1.0, 2.0], [2.0, 2.0]).dm().p_better is None
    assert (LossSums().ratio(), LossSums().coverage(), LossSums().dm().stat) == (None, None, None)


@pytest.mark.parametrize(
    ("model", "persistence", "message"),
    [([1.0], [1.0, 2.0], "one length"), ([math.nan], [1.0], "finite"), ([math.inf], [1.0], "finite")],
)
def test_bad_losses_are_refused(model, persistence, message):
    """Losses of unequal length or not finite are a ValueError."""
    with pytest.raises(ValueError, match=message):
        LossSums().extend(model, persistence)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lagged": [0.0]}, "malformed"),
        ({"n": 2}, "inconsistent"),
        ({"covered": 9}, "inconsistent"),
        ({"head": "x"}, "list of numbers"),
        ({"d_sum": None}, "incomplete"),
    ],
)
def test_stored_sums_that_do_not_add_up_are_refused(change, message):
    """Sums read back are checked: lag count, head/tail lengths against n, coverage within n."""
    doc = LossSums().extend([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [True, False, None]).as_json()
    with pytest.raises(ValueError, match=message):
        LossSums.from_json({**doc, **change})


@pytest.mark.parametrize(
    ("horizon", "factor"), [(1, math.sqrt(4 / 5)), (2, math.sqrt(2.4 / 5)), (3, math.sqrt(1.2 / 5))]
)
def test_the_hln_factor_follows_the_forecast_horizon(horizon, factor):
    """With d = 1..5 at h steps, DM = 3/√0.56 · √((n + 1 − 2h + h(h − 1)/n)/n), worked by hand for h = 1, 2, 3."""
    test = LossSums().extend([0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]).dm(horizon)
    assert test.stat == pytest.approx(3 / math.sqrt(0.56) * factor, rel=1e-12)
    assert test.p_better == pytest.approx(_t4_sf(test.stat), rel=1e-10)


@pytest.mark.parametrize(("gap", "better", "worse"), [(0.25, 0.0, 1.0), (-0.25, 1.0, 0.0), (0.0, 0.5, 0.5)])
def test_losses_that_never_vary_give_a_decided_test_without_a_statistic(gap, better, worse):
    """A constant differential has no variance: its sign decides the p-values, the statistic is 0, n is kept."""
    persistence = [1.0] * 12
    sums = LossSums().extend([1.0 - gap] * 12, persistence)
    test = sums.dm()
    assert (test.n, test.stat, test.p_better, test.p_worse) == (12, 0.0, better, worse)


def test_a_horizon_below_one_step_is_refused():
    """The HLN correction needs h ≥ 1; the message names the value."""
    with pytest.raises(ValueError, match=r"^horizon must be at least one step, not 0$"):
        LossSums().extend([1.0] * 5, [2.0] * 5).dm(horizon=0)


def test_fewer_than_three_forecasts_keep_their_count():
    """Below three forecasts there is no test, but n still says how many were scored."""
    assert LossSums().extend([1.0, 2.0], [2.0, 1.0]).dm() == DMTest(2, None, None, None)
