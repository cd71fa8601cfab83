"""Features are causal and windows respect gaps; the split never leaks the decision slice."""

from __future__ import annotations

import numpy as np
import pytest

from training_job.evaluate import chronological_split
from training_job.features import (
    FEATURES,
    bars_needed,
    concat,
    indicator_features,
    segments,
    symbol_windows,
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


def test_decision_slice_never_overlaps_training():
    """Every bar a decision window reads is newer than every bar a training window reads."""
    parts = [symbol_windows(s, *series(900, seed=k, gap_at=450), 20, 1, 5, True) for k, s in enumerate("AB")]
    w = concat(parts)
    split = chronological_split(w, 0.15, 0.2)
    assert min(len(split.train), len(split.validation), len(split.decision)) > 0
    assert w.target_ts[split.train].max() < w.start[split.validation].min()
    assert w.target_ts[split.validation].max() < w.start[split.decision].min()
    assert w.target_ts[split.train].max() < w.start[split.decision].min()


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
    ("returns", "ranges", "expected"),
    [
        (0.001, 0.0, np.sqrt(0.5 * 1e-6)),
        (0.0, 0.002, np.sqrt(0.5 * 4e-6 / (4 * np.log(2)))),
        (0.0, 0.0, 1e-6),  # a flat window still gets the floor, never zero
    ],
)
def test_window_volatility_blends_close_to_close_and_range(returns, ranges, expected):
    """Volatility = sqrt(mean of the close-to-close and Parkinson variances), floored."""
    x = np.zeros((1, 20, len(FEATURES)), dtype=np.float32)
    x[0, :, 0] = returns
    x[0, :, 2] = ranges
    w = concat([symbol_windows("X", *series(100), 20, 1, 5, False)])
    w.x = x[np.zeros(len(w), dtype=int)]
    assert w.volatility[0] == pytest.approx(expected, rel=1e-4)
