"""Scale-free, symbol-agnostic features and the windows the model sees.

Indicators come from TA-Lib and are causal: the feature row of minute t uses bars up to t only.
Prices enter only as log ratios, so a ticker the model never saw works as well as any other.
A window never spans a gap longer than ``max_gap_minutes``; its target is exactly the bar
``horizon`` minutes after its last bar, and a window whose target minute is missing is not used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

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
        """Recent 1-minute volatility of each window, known at its last bar: the scale of its interval."""
        return window_volatility(self.x)

    def take(self, idx: np.ndarray) -> Windows:
        """The subset of windows at ``idx``."""
        pick = {k: (None if v is None else v[idx]) for k, v in self.__dict__.items()}
        return Windows(**pick)


VOL_FLOOR = 1e-6  # a window without a single price change still gets a (tiny) interval scale


def window_volatility(x: np.ndarray) -> np.ndarray:
    """Volatility of each window of ``x`` (m, window, features): the RMS of its 1-minute log returns, floored.

    The returns between the window's own bars (its first bar's return reaches back before the
    window, across a night for a window that starts at an open). The whole window, not its last
    few bars: a short estimate's noise makes calm-looking windows' intervals too narrow and
    busy-looking ones' too wide. Close to close only, as the errors are: the high/low range of real
    minute bars, coarse with the tick size, scales differently from ticker to ticker. Scale-free.
    """
    ret = x[:, 1:, FEATURES.index("ret_1")].astype(np.float64)
    return np.maximum(np.sqrt(np.mean(ret**2, axis=1)), VOL_FLOOR)


@dataclass(frozen=True)
class WindowEnds:
    """Where the windows of one symbol's bars end, where their targets lie, and how many lack one."""

    ends: np.ndarray  # index of each window's last bar (as_of)
    targets: np.ndarray | None  # index of its target bar, exactly ``horizon`` minutes later
    missing_in_segment: int = 0  # dropped: the target minute has no bar, though bars go on within max_gap_minutes
    missing_at_gap: int = 0  # dropped: the next bar comes after a longer gap (a session's close, a halt)

    @property
    def missing_target(self) -> int:
        """Windows dropped because no bar starts exactly at their target minute."""
        return self.missing_in_segment + self.missing_at_gap


def window_ends(
    ts: np.ndarray,
    window: int,
    horizon: int,
    max_gap_minutes: int,
    with_target: bool,
    latest_only: bool = False,
) -> WindowEnds:
    """The windows of bars at times ``ts`` (sorted unix seconds, whole minutes) that can be used.

    A window is its last ``window`` bars after ``WARMUP`` more, inside one segment (no gap longer
    than ``max_gap_minutes``). With ``with_target``, its target is the bar at exactly
    ``as_of + horizon`` minutes: a window whose target minute is missing is dropped and counted
    (by whether its segment goes on past ``as_of`` or ends there), unless that minute lies after
    the last bar (not yet known, so not missing).
    """
    n = len(ts)
    ends = np.arange(bars_needed(window) - 1, n)
    if latest_only:
        ends = ends[-1:]
    if len(ends) == 0:
        return WindowEnds(ends, ends.copy() if with_target else None)
    seg = segments(ts, max_gap_minutes)
    ends = ends[seg[ends - window + 1] == seg[ends]]
    if not with_target:
        return WindowEnds(ends, None)
    wanted = ts[ends] + horizon * 60
    targets = np.minimum(np.searchsorted(ts, wanted), n - 1)
    found = ts[targets] == wanted
    missing = ~found & (wanted <= ts[-1])
    goes_on = seg[np.minimum(ends + 1, n - 1)] == seg[ends]  # the bar after as_of is in the same segment
    return WindowEnds(
        ends[found],
        targets[found],
        int(np.count_nonzero(missing & goes_on)),
        int(np.count_nonzero(missing & ~goes_on)),
    )


def symbol_windows(
    symbol: str,
    ts: np.ndarray,
    ohlcv: tuple[np.ndarray, ...],
    window: int,
    horizon: int,
    max_gap_minutes: int,
    with_target: bool,
    latest_only: bool = False,
    features: bool = True,
) -> Windows:
    """Every usable window of one symbol (sorted by ts), as :func:`window_ends` says, with its target if asked.

    The features of a window are computed from exactly its own ``bars_needed(window)`` bars, the
    bars a live request sends, so evaluation scores what serving will compute (the indicators'
    recursive smoothing would otherwise depend on how much history happened to precede it).
    The warm-up bars may lie before a gap; the window may not, and its target is the bar exactly
    ``horizon`` minutes after its last one. A window with a non-finite feature is left out.

    ``features=False`` gives the windows without computing their features (``x`` is empty, of shape
    ``(m, 0, len(FEATURES))``, and none is left out): :func:`with_features` computes them later for
    the windows a caller keeps, the same as here, window by window.
    """
    close = np.asarray(ohlcv[3], dtype=np.float64)
    found = window_ends(ts, window, horizon, max_gap_minutes, with_target, latest_only)
    ends, targets = found.ends, found.targets
    if len(ends) == 0:
        return _empty(window if features else 0, symbol, with_target)
    if features:
        x = window_features([np.ascontiguousarray(col, dtype=np.float64) for col in ohlcv], ends, window)
        finite = np.isfinite(x).all(axis=(1, 2))
        ends, x = ends[finite], x[finite]
        targets = None if targets is None else targets[finite]
    else:
        x = np.empty((len(ends), 0, len(FEATURES)), dtype=np.float32)
    out = Windows(
        x=x,
        as_of=ts[ends],
        start=ts[ends - window + 1],
        last_close=close[ends],
        symbol=np.full(len(ends), symbol, dtype=object),
    )
    if targets is not None:
        out.y = (np.log(close[targets]) - np.log(close[ends])).astype(np.float32)
        out.target_ts = ts[targets]
        out.target_close = close[targets]
    return out


def window_features(columns: Sequence[np.ndarray], ends: np.ndarray, window: int) -> np.ndarray:
    """Features (len(ends), window, len(FEATURES)) of the windows ending at the bars ``ends`` of one symbol's series.

    ``columns`` are its open, high, low, close and volume as contiguous float64; each window's rows
    come from exactly its own ``bars_needed(window)`` bars.
    """
    need = bars_needed(window)
    x = np.empty((len(ends), window, len(FEATURES)), dtype=np.float32)
    for i, end in enumerate(ends):
        lo = end - need + 1
        x[i] = indicator_features(*(col[lo : end + 1] for col in columns))[-window:]
    return x


def with_features(w: Windows, series: Mapping[str, tuple[np.ndarray, Sequence[np.ndarray]]], window: int) -> Windows:
    """``w`` (from ``symbol_windows(..., features=False)``) with each window's features, as symbol_windows has them.

    ``series`` maps each symbol to its bars' times (unix s, sorted) and ``columns`` as
    :func:`window_features` takes them; a window is found by its last bar's time. A window with a
    non-finite feature is left out, as :func:`symbol_windows` leaves it out.
    """
    x = np.empty((len(w), window, len(FEATURES)), dtype=np.float32)
    for symbol in np.unique(w.symbol):
        rows = np.flatnonzero(w.symbol == symbol)
        ts, columns = series[symbol]
        ends = np.searchsorted(ts, w.as_of[rows])
        if not np.array_equal(ts[np.minimum(ends, len(ts) - 1)], w.as_of[rows]):
            raise ValueError(f"windows of {symbol} end at bars its series does not hold")
        x[rows] = window_features(columns, ends, window)
    finite = np.isfinite(x).all(axis=(1, 2))
    return replace(w, x=x).take(np.flatnonzero(finite))


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
