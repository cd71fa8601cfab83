"""Scale-free, symbol-agnostic features and the windows the model sees.

Indicators come from TA-Lib and are causal: the feature row of minute t uses bars up to t only.
Prices enter only as log ratios, so a ticker the model never saw works as well as any other.
A window (and its target) never spans a gap longer than ``max_gap_minutes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import talib

FEATURES = (
    "ret_1",
    "ret_5",
    "range",
    "body",
    "rsi_14",
    "macd",
    "macd_hist",
    "boll_pos",
    "atr_14",
    "volume_z",
)
WARMUP = 40  # bars before the first complete feature row (MACD 26+9, Bollinger 20, ATR 14)


def indicator_features(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Feature matrix (n, len(FEATURES)) of one symbol's bars in time order; NaN during warm-up."""
    o, h, lo, c = (np.ascontiguousarray(x, dtype=np.float64) for x in (o, h, lo, c))
    log_c = np.log(c)
    ret_1 = np.concatenate([[np.nan], np.diff(log_c)])
    ret_5 = np.full_like(log_c, np.nan)
    ret_5[5:] = log_c[5:] - log_c[:-5]
    macd, _, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, mid, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2)
    width = upper - lower
    boll = np.divide(c - mid, width, out=np.zeros_like(c), where=width > 0)
    boll[np.isnan(width)] = np.nan
    log_v = np.log1p(np.ascontiguousarray(v, dtype=np.float64))
    columns = (
        ret_1,
        ret_5,
        np.log(h / lo),
        np.log(c / o),
        talib.RSI(c, timeperiod=14) / 100.0 - 0.5,
        macd / c,
        hist / c,
        boll,
        talib.ATR(h, lo, c, timeperiod=14) / c,
        log_v - talib.SMA(log_v, timeperiod=20),
    )
    return np.column_stack(columns).astype(np.float32)


def segments(ts_seconds: np.ndarray, max_gap_minutes: int) -> np.ndarray:
    """Segment id per bar: a new segment starts after every gap longer than ``max_gap_minutes``."""
    return np.concatenate([[0], np.cumsum(np.diff(ts_seconds) > max_gap_minutes * 60)])


def bars_needed(window: int) -> int:
    """Bars one forecast reads: the window plus the indicators' warm-up."""
    return window + WARMUP


@dataclass
class Windows:
    """Model inputs and what they are about, one row per window."""

    x: np.ndarray  # (m, window, features) float32
    as_of: np.ndarray  # ts (s) of the window's last bar
    start: np.ndarray  # ts (s) of the window's first bar
    last_close: np.ndarray
    symbol: np.ndarray
    y: np.ndarray | None = None  # log return to the target bar
    target_ts: np.ndarray | None = None
    target_close: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.as_of)

    @property
    def volatility(self) -> np.ndarray:
        """Recent 1-minute volatility of each window: the scale of its forecast interval.

        The mean of the close-to-close and the Parkinson (high/low range) variance estimates over
        the last ``VOL_BARS`` bars: short enough to follow intraday volatility swings (open and
        close), and the range makes ten bars a usable sample.
        """
        ret = self.x[:, -VOL_BARS:, 0].astype(np.float64)
        rng = self.x[:, -VOL_BARS:, 2].astype(np.float64)
        var = 0.5 * np.mean(ret**2, axis=1) + 0.5 * np.mean(rng**2, axis=1) / (4.0 * np.log(2.0))
        return np.maximum(np.sqrt(var), VOL_FLOOR)

    def take(self, idx: np.ndarray) -> Windows:
        """The subset of windows at ``idx``."""
        pick = {k: (None if v is None else v[idx]) for k, v in self.__dict__.items()}
        return Windows(**pick)


VOL_FLOOR = 1e-6  # a window without a single price change still gets a (tiny) interval scale
VOL_BARS = 10


def symbol_windows(
    symbol: str,
    ts: np.ndarray,
    ohlcv: tuple[np.ndarray, ...],
    window: int,
    horizon: int,
    max_gap_minutes: int,
    with_target: bool,
    latest_only: bool = False,
) -> Windows:
    """Every window of one symbol (sorted by ts) whose bars, and target if asked, share a segment.

    The features of a window are computed from exactly its own ``bars_needed(window)`` bars, the
    bars a live request sends, so evaluation scores what serving will compute (the indicators'
    recursive smoothing would otherwise depend on how much history happened to precede it).
    The warm-up bars may lie before a gap; the window and its target may not.
    """
    n = len(ts)
    need = bars_needed(window)
    close = np.asarray(ohlcv[3], dtype=np.float64)
    seg = segments(ts, max_gap_minutes)
    ends = np.arange(need - 1, n - (horizon if with_target else 0))
    if latest_only:
        ends = ends[-1:]
    starts = ends - window + 1
    last = ends + horizon if with_target else ends
    keep = seg[starts] == seg[last] if len(ends) else np.zeros(0, dtype=bool)
    ends, starts = ends[keep], starts[keep]
    if len(ends) == 0:
        return _empty(window, symbol, with_target)
    columns = [np.ascontiguousarray(x, dtype=np.float64) for x in ohlcv]
    x = np.empty((len(ends), window, len(FEATURES)), dtype=np.float32)
    for i, end in enumerate(ends):
        lo = end - need + 1
        x[i] = indicator_features(*(col[lo : end + 1] for col in columns))[-window:]
    finite = np.isfinite(x).all(axis=(1, 2))
    ends, starts, x = ends[finite], starts[finite], x[finite]
    out = Windows(
        x=x,
        as_of=ts[ends],
        start=ts[starts],
        last_close=close[ends],
        symbol=np.full(len(ends), symbol, dtype=object),
    )
    if with_target:
        targets = ends + horizon
        out.y = (np.log(close[targets]) - np.log(close[ends])).astype(np.float32)
        out.target_ts = ts[targets]
        out.target_close = close[targets]
    return out


def _empty(window: int, symbol: str, with_target: bool) -> Windows:
    empty_f = np.empty(0)
    return Windows(
        x=np.empty((0, window, len(FEATURES)), dtype=np.float32),
        as_of=empty_f.astype(np.int64),
        start=empty_f.astype(np.int64),
        last_close=empty_f,
        symbol=np.empty(0, dtype=object),
        y=np.empty(0, dtype=np.float32) if with_target else None,
        target_ts=empty_f.astype(np.int64) if with_target else None,
        target_close=empty_f if with_target else None,
    )


def concat(parts: list[Windows]) -> Windows:
    """Concatenate windows of several symbols."""
    first = parts[0]
    return Windows(
        **{
            k: (None if getattr(first, k) is None else np.concatenate([getattr(p, k) for p in parts]))
            for k in first.__dict__
        }
    )
