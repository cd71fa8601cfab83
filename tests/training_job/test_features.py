"""Features are causal and windows respect gaps; the split never leaks the decision slice."""

from __future__ import annotations

import numpy as np
import pytest

from training_job.evaluate import chronological_split, decide, metrics
from training_job.features import FEATURES, WARMUP, concat, indicator_features, segments, symbol_windows


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
    assert ts[WARMUP - 10] <= w.start.min() <= ts[WARMUP]
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


@pytest.mark.parametrize(
    ("model", "champion", "persistence", "expected"),
    [
        (1.00, None, 1.00, "promoted"),
        (1.015, None, 1.00, "promoted"),  # within the 2% tolerance
        (1.03, None, 1.00, "retained"),
        (0.95, 0.99, 1.00, "promoted"),
        (0.985, 0.99, 1.00, "retained"),  # does not beat the champion by 1%
        (1.05, 1.10, 1.00, "retained"),  # beats the champion but not persistence
    ],
)
def test_promotion_rule(model, champion, persistence, expected):
    """Promote when the challenger beats the champion by the margin and is not worse than persistence."""

    def as_m(r):
        return None if r is None else {"rmse": r, "mae": r, "directional_accuracy": 0.5}

    decision, reason = decide(
        as_m(model), as_m(champion), as_m(persistence), min_improvement=0.01, baseline_tolerance=0.02
    )
    assert decision == expected and reason


def test_metrics_values():
    """RMSE, MAE and directional accuracy on a hand-checked example."""
    m = metrics(np.array([11.0, 9.0]), np.array([12.0, 10.0]), np.array([10.0, 10.5]))
    assert m == {"rmse": 1.0, "mae": 1.0, "directional_accuracy": 1.0}
