"""Features are causal, windows respect gaps, targets are exact minutes; the split never leaks a later slice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training_job.evaluate import chronological_split
from training_job.features import (
    FEATURES,
    VOL_FLOOR,
    bars_needed,
    concat,
    indicator_features,
    segments,
    symbol_windows,
    window_ends,
    window_volatility,
    with_features,
)


def series(n: int, seed: int = 0, gap_at: int | None = None):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    volume = rng.integers(1000, 5000, n).astype(float)
    ts = 1_793_629_800 + 60 * np.arange(n)
    if gap_at is not None:
        ts[gap_at:] += 17 * 3600
    return ts, (open_, high, low, close, volume)


def test_future_bars_never_change_past_features():
    """Changing bars after minute t leaves every feature row up to t identical."""
    _, ohlcv = series(300)
    base = indicator_features(*ohlcv)
    changed = tuple(x.copy() for x in ohlcv)
    for x in changed:
        x[200:] *= 1.37
    after = indicator_features(*changed)
    np.testing.assert_array_equal(base[:200], after[:200])
    assert not np.allclose(base[200:], after[200:], equal_nan=True)


def test_features_are_scale_free():
    """Multiplying all prices by a constant leaves the features (nearly) unchanged."""
    _, (o, h, lo, c, v) = series(200)
    np.testing.assert_allclose(
        indicator_features(o, h, lo, c, v), indicator_features(o * 7, h * 7, lo * 7, c * 7, v), atol=1e-5
    )
    assert indicator_features(o, h, lo, c, v).shape == (200, len(FEATURES))


@pytest.mark.parametrize(
    ("gaps_minutes", "expected"), [([1, 1, 1], [0, 0, 0, 0]), ([1, 6, 1], [0, 0, 1, 1]), ([5, 1], [0, 0, 0])]
)
def test_segments_break_after_long_gaps(gaps_minutes, expected):
    """A gap longer than max_gap_minutes starts a new segment."""
    ts = np.concatenate([[0], np.cumsum(np.array(gaps_minutes) * 60)])
    assert segments(ts, 5).tolist() == expected


def test_windows_never_span_a_gap_and_target_is_the_next_log_return():
    """No window (target included) crosses the overnight gap; y is log(close[t+h]/close[t])."""
    ts, ohlcv = series(400, gap_at=200)
    w = symbol_windows("X", ts, ohlcv, window=20, horizon=1, max_gap_minutes=5, with_target=True)
    assert len(w) > 0
    spans = w.target_ts - w.start
    assert spans.max() <= 20 * 60  # 20 bars of one minute: never the 17-hour gap
    assert not np.isnan(w.x).any()  # windows start after the indicators' warm-up
    assert w.as_of.min() == ts[bars_needed(20) - 1]
    close = dict(zip(ts.tolist(), ohlcv[3], strict=True))
    i = 5
    assert w.y[i] == pytest.approx(np.log(close[int(w.target_ts[i])] / close[int(w.as_of[i])]), rel=1e-5)


def minutes(*spans: tuple[int, int]) -> np.ndarray:
    """Bar times (unix s) at the minutes of each inclusive span, from an arbitrary session start."""
    return 1_793_629_800 + 60 * np.concatenate([np.arange(a, b + 1) for a, b in spans])


# window 2 needs bars_needed(2) = 42 bars, so the first window ends at the 42nd bar (minute 41 here)
@pytest.mark.parametrize(
    ("bars", "horizon", "as_of_minutes", "in_segment", "at_gap"),
    [
        pytest.param(minutes((0, 49)), 1, list(range(41, 49)), 0, 0, id="contiguous"),
        pytest.param(minutes((0, 44), (46, 50)), 1, [41, 42, 43, 46, 47, 48, 49], 1, 0, id="next-minute-missing"),
        # the old rule took minute 50 (the next bar, 5 minutes later) as 45's target
        pytest.param(minutes((0, 45), (50, 55)), 1, [41, 42, 43, 44, 50, 51, 52, 53, 54], 1, 0, id="gap-of-max"),
        pytest.param(minutes((0, 45), (56, 60)), 1, [41, 42, 43, 44, 57, 58, 59], 0, 1, id="session-break"),
        pytest.param(minutes((0, 46), (48, 52)), 3, [41, 42, 43, 45, 46, 48, 49], 1, 0, id="h3-target-missing"),
        pytest.param(minutes((0, 44), (46, 52)), 3, [41, 43, 44, 46, 47, 48, 49], 1, 0, id="h3-skips-a-hole"),
        pytest.param(minutes((0, 41)), 1, [], 0, 0, id="last-bar-target-unknown"),
    ],
)
def test_the_target_is_exactly_the_bar_horizon_minutes_later(bars, horizon, as_of_minutes, in_segment, at_gap):
    """A window is kept only if a bar starts exactly horizon minutes after its last; the others are counted."""
    found = window_ends(bars, window=2, horizon=horizon, max_gap_minutes=5, with_target=True)
    t0 = 1_793_629_800
    assert ((bars[found.ends] - t0) // 60).tolist() == as_of_minutes
    assert (bars[found.targets] - bars[found.ends]).tolist() == [horizon * 60] * len(as_of_minutes)
    assert (found.missing_in_segment, found.missing_at_gap) == (in_segment, at_gap)
    assert found.missing_target == in_segment + at_gap


@pytest.mark.parametrize(
    ("bars", "as_of_minutes"),
    [
        pytest.param(minutes((0, 49)), list(range(41, 50)), id="contiguous"),
        pytest.param(minutes((0, 44), (46, 50)), [41, 42, 43, 44, 46, 47, 48, 49, 50], id="a-missing-minute"),
        pytest.param(minutes((0, 45), (56, 60)), [41, 42, 43, 44, 45, 57, 58, 59, 60], id="session-break"),
    ],
)
def test_windows_without_targets_end_at_every_bar_whose_window_has_no_long_gap(bars, as_of_minutes):
    """Without targets (serving), no window is dropped for its target; a window spanning a long gap still is."""
    found = window_ends(bars, window=2, horizon=1, max_gap_minutes=5, with_target=False)
    assert ((bars[found.ends] - 1_793_629_800) // 60).tolist() == as_of_minutes
    assert (found.targets, found.missing_target) == (None, 0)


@pytest.mark.parametrize("horizon", [1, 2, 5])
def test_every_target_is_exact_and_its_return_is_to_that_bar(horizon):
    """With minutes missing at random, every window's target is as_of + horizon minutes and y its log return."""
    ts, ohlcv = series(700, seed=2)
    keep = np.random.default_rng(horizon).random(700) > 0.05
    ts, ohlcv = ts[keep], tuple(x[keep] for x in ohlcv)
    w = symbol_windows("X", ts, ohlcv, window=20, horizon=horizon, max_gap_minutes=5, with_target=True)
    found = window_ends(ts, 20, horizon, 5, with_target=True)
    assert len(w) == len(found.ends) > 400 and found.missing_in_segment > 10
    assert (w.target_ts - w.as_of).tolist() == [horizon * 60] * len(w)
    close = dict(zip(ts.tolist(), ohlcv[3], strict=True))
    expected = [np.log(close[int(t)] / close[int(a)]) for t, a in zip(w.target_ts, w.as_of, strict=True)]
    np.testing.assert_allclose(w.y, expected, rtol=1e-5)


def test_decision_slice_never_overlaps_training():
    """Every bar a decision window reads is newer than every bar a training window reads."""
    parts = [symbol_windows(s, *series(900, seed=k, gap_at=450), 20, 1, 5, True) for k, s in enumerate("AB")]
    w = concat(parts)
    split = chronological_split(w, 0.15, 0.2)
    assert min(len(split.train), len(split.validation), len(split.decision)) > 0
    assert len(split.calibration) == 0 and split.calibration_start == split.decision_start
    assert w.target_ts[split.train].max() < w.start[split.validation].min()
    assert w.target_ts[split.validation].max() < w.start[split.decision].min()
    assert w.target_ts[split.train].max() < w.start[split.decision].min()


def test_the_calibration_slice_lies_between_validation_and_decision_and_overlaps_neither():
    """Train < validation < calibration < decision in time; no window of one slice reads a bar of another."""
    parts = [symbol_windows(s, *series(2000, seed=k, gap_at=1000), 20, 1, 5, True) for k, s in enumerate("AB")]
    w = concat(parts)
    split = chronological_split(w, 0.15, 0.2, 0.1)
    slices = [split.train, split.validation, split.calibration, split.decision]
    assert min(len(s) for s in slices) > 100
    for older, newer in itertools.pairwise(slices):
        assert w.target_ts[older].max() < w.start[newer].min()
    times = np.unique(np.concatenate([w.start, w.target_ts]))
    shares = [np.mean(times >= t) for t in (split.validation_start, split.calibration_start, split.decision_start)]
    assert shares == pytest.approx([0.45, 0.3, 0.2], abs=2 / len(times))


def test_window_features_come_from_exactly_the_bars_a_request_sends():
    """Every window's features equal those computed from only its last bars_needed bars (train/serve parity)."""
    ts, ohlcv = series(300, seed=4)
    every = symbol_windows("X", ts, ohlcv, window=20, horizon=1, max_gap_minutes=5, with_target=False)
    need = bars_needed(20)
    for i in (0, 57, len(every) - 1):
        end = int(np.flatnonzero(ts == every.as_of[i])[0])
        cut = slice(end - need + 1, end + 1)
        alone = symbol_windows("X", ts[cut], tuple(x[cut] for x in ohlcv), 20, 1, 5, False, latest_only=True)
        assert len(alone) == 1 and alone.as_of[0] == every.as_of[i]
        np.testing.assert_array_equal(alone.x[0], every.x[i])


def test_extra_history_before_the_window_does_not_change_a_forecast_input():
    """Sending 300 bars or exactly bars_needed bars gives the same latest window."""
    ts, ohlcv = series(300, seed=5)
    need = bars_needed(30)
    full = symbol_windows("X", ts, ohlcv, 30, 1, 5, False, latest_only=True)
    short = symbol_windows("X", ts[-need:], tuple(x[-need:] for x in ohlcv), 30, 1, 5, False, latest_only=True)
    np.testing.assert_array_equal(full.x, short.x)
    assert full.as_of.tolist() == short.as_of.tolist() == [ts[-1]]


@pytest.mark.parametrize(
    ("returns", "ranges", "bars", "expected"),
    [
        (0.001, 0.0, slice(None), 0.001),
        (-0.002, 0.0, slice(None), 0.002),  # squared: the sign does not matter, nor is the mean removed
        (0.0, 0.002, slice(None), VOL_FLOOR),  # the high/low range does not count; a flat window gets the floor
        (0.001, 0.002, slice(1, 20, 2), np.sqrt(1e-6 * 10 / 19)),  # every bar counts, the oldest too...
        (0.001, 0.0, slice(0, 1), VOL_FLOOR),  # ...but the first bar's return, which reaches back before the window
        (0.001, 0.0, slice(15, 20), np.sqrt(1e-6 * 5 / 19)),
    ],
)
def test_window_volatility_is_the_rms_of_the_windows_own_returns(returns, ranges, bars, expected):
    """Volatility = sqrt(mean squared 1-minute log return between the window's bars), floored."""
    x = np.zeros((1, 20, len(FEATURES)), dtype=np.float32)
    x[0, bars, FEATURES.index("ret_1")] = returns
    x[0, bars, FEATURES.index("range")] = ranges
    w = concat([symbol_windows("X", *series(100), 20, 1, 5, False)])
    w.x = x[np.zeros(len(w), dtype=int)]
    assert w.volatility[0] == pytest.approx(expected, rel=1e-5)
    assert window_volatility(x)[0] == w.volatility[0]


def _unfinished(ts, ohlcv, window=20):
    """The windows of one symbol without their features, and the series with_features reads."""
    w = symbol_windows("X", ts, ohlcv, window, 1, 5, True, features=False)
    return w, {"X": (ts, [np.ascontiguousarray(col, dtype=np.float64) for col in ohlcv])}


@pytest.mark.parametrize("bad_bar", [None, 150, 320], ids=["all-finite", "inf-early", "inf-late"])
def test_features_computed_later_equal_those_computed_at_once_to_the_bit(bad_bar):
    """with_features gives exactly symbol_windows' windows and features, a window reading a bad bar left out by both."""
    ts, ohlcv = series(400, gap_at=200)
    if bad_bar is not None:
        ohlcv[4][bad_bar] = np.inf  # a volume no validation let through: its windows' volume_z is not finite
    with np.errstate(invalid="ignore"):  # inf - inf in the bad windows' volume_z: what leaves them out
        at_once = symbol_windows("X", ts, ohlcv, 20, 1, 5, True)
        index, source = _unfinished(ts, ohlcv)
        later = with_features(index, source, 20)
    ends = np.searchsorted(ts, index.as_of)
    reading_bad = (
        0 if bad_bar is None else int(np.count_nonzero((ends - bars_needed(20) < bad_bar) & (bad_bar <= ends)))
    )
    assert (index.x.shape, later.x.dtype) == ((len(index), 0, len(FEATURES)), np.float32)
    assert (len(index) - len(at_once), reading_bad > 0 or bad_bar is None) == (reading_bad, True)
    for field in ("x", "as_of", "start", "last_close", "y", "target_ts", "target_close"):
        assert np.array_equal(getattr(later, field), getattr(at_once, field)), field
    assert list(later.symbol) == list(at_once.symbol)


def test_features_of_a_subset_are_those_windows_features():
    """Features computed for some windows only equal the same windows' features computed with all the others."""
    ts, ohlcv = series(400, gap_at=200)
    at_once = symbol_windows("X", ts, ohlcv, 20, 1, 5, True)
    index, source = _unfinished(ts, ohlcv)
    pick = np.array([0, 7, 100, len(index) - 1])
    some = with_features(index.take(pick), source, 20)
    assert np.array_equal(some.as_of, at_once.as_of[pick]) and np.array_equal(some.x, at_once.x[pick])


def test_windows_ending_at_a_bar_the_series_lacks_are_refused():
    """A window whose last bar is not in its symbol's series raises rather than take another bar's features."""
    ts, ohlcv = series(300)
    index, _ = _unfinished(ts, ohlcv)
    shifted = {"X": (ts + 30, [np.asarray(col, dtype=np.float64) for col in ohlcv])}
    with pytest.raises(ValueError, match="windows of X end at bars its series does not hold"):
        with_features(index, shifted, 20)


@pytest.mark.parametrize("features", [True, False])
@pytest.mark.parametrize("with_target", [True, False])
def test_windows_carry_their_bars_facts_with_the_dtypes_the_model_reads(features, with_target):
    """X and y are float32, symbols objects; start, last close and the target's close are those bars' own."""
    ts, ohlcv = series(300)
    w = symbol_windows("X", ts, ohlcv, 20, 2, 5, with_target, features=features)
    ends = np.searchsorted(ts, w.as_of)
    assert (w.x.dtype, w.symbol.dtype, w.x.shape[1:]) == (np.float32, object, (20 if features else 0, len(FEATURES)))
    assert np.array_equal(w.start, ts[ends - 19]) and np.array_equal(w.last_close, ohlcv[3][ends])
    if with_target:
        assert w.y.dtype == np.float32 and np.array_equal(w.target_ts, ts[ends + 2])
        assert np.array_equal(w.target_close, ohlcv[3][ends + 2])
        assert np.array_equal(w.y, (np.log(ohlcv[3][ends + 2]) - np.log(ohlcv[3][ends])).astype(np.float32))
    else:
        assert (w.y, w.target_ts, w.target_close) == (None, None, None)


@pytest.mark.parametrize("features", [True, False])
@pytest.mark.parametrize("with_target", [True, False])
def test_too_few_bars_give_no_window_in_the_shapes_of_many(features, with_target):
    """A series shorter than one window's bars gives empty windows shaped as a full result, concatenable with one."""
    ts, ohlcv = series(bars_needed(20) - 1)
    w = symbol_windows("X", ts, ohlcv, 20, 1, 5, with_target, features=features)
    assert (len(w), w.x.shape, w.x.dtype, w.symbol.dtype) == (
        0,
        (0, 20 if features else 0, len(FEATURES)),
        np.float32,
        object,
    )
    assert (w.y is None, w.target_ts is None, w.target_close is None) == (not with_target,) * 3
    more = symbol_windows("Y", *series(200), 20, 1, 5, with_target, features=features)
    assert len(concat([w, more])) == len(more) > 0


def test_features_of_windows_without_targets_reach_the_last_bar():
    """Windows to serve (no target) end at the series' last bar, and their later features are symbol_windows'."""
    ts, ohlcv = series(200)
    at_once = symbol_windows("X", ts, ohlcv, 20, 1, 5, False)
    index = symbol_windows("X", ts, ohlcv, 20, 1, 5, False, features=False)
    later = with_features(index, {"X": (ts, [np.asarray(col, dtype=np.float64) for col in ohlcv])}, 20)
    assert at_once.as_of[-1] == ts[-1] and np.array_equal(later.x, at_once.x)


def test_windows_past_the_end_of_a_shorter_series_are_refused():
    """A series cut before a window's last bar raises ValueError, never IndexError or another bar's features."""
    ts, ohlcv = series(300)
    index = symbol_windows("X", ts, ohlcv, 20, 1, 5, False, features=False)
    cut = {"X": (ts[:250], [np.asarray(col[:250], dtype=np.float64) for col in ohlcv])}
    with pytest.raises(ValueError, match="windows of X end at bars its series does not hold"):
        with_features(index, cut, 20)
