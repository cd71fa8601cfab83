"""Whether the bar a forecast is for will print: ``horizon`` minutes later in the same session, or never.

The forecaster predicts the bar at exactly ``as_of + horizon`` minutes, the target it was trained on.
Inside a session that bar prints, but at a session's last minute (or, with a longer horizon, its last
few minutes) and before a lunch break no bar starts at that minute: the next one is the next
session's open (after a night, a weekend, a holiday or an early close) or the end of the break.
Scoring runs on every request, so the answer comes from a binary search over per-calendar arrays of
session opens and closes (unix seconds), built once from ``exchange_calendars`` and cached.

Where the module cannot tell (FX, futures, an unknown exchange, a bar outside every session or
outside the calendar's range) it makes no claim: the target is ``as_of + horizon`` and the session is
not reported closed, which is exactly what the scoring code did before it knew about sessions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import exchange_calendars as xc
import numpy as np
import pandas as pd

__all__ = ["CRYPTO", "NextBar", "calendar_for", "next_bar", "warm"]

CRYPTO = "24/7"
"""Calendar name reported for crypto pairs, which trade around the clock."""

# Yahoo exchange suffix -> exchange_calendars name. Only calendars the package has (the tests check
# every value); where it has no calendar of its own, the sibling exchange with the same hours and
# holidays stands in (Shenzhen -> Shanghai, NSE -> BSE, KOSDAQ -> KRX, TSX Venture -> TSX).
_SUFFIX_CALENDARS: dict[str, str] = {
    "L": "XLON",
    "IL": "XLON",
    "T": "XTKS",
    "DE": "XETR",
    "F": "XFRA",
    "PA": "XPAR",
    "AS": "XAMS",
    "BR": "XBRU",
    "LS": "XLIS",
    "TO": "XTSE",
    "V": "XTSE",
    "HK": "XHKG",
    "AX": "XASX",
    "NZ": "XNZE",
    "SW": "XSWX",
    "MI": "XMIL",
    "MC": "XMAD",
    "ST": "XSTO",
    "CO": "XCSE",
    "HE": "XHEL",
    "OL": "XOSL",
    "IR": "XDUB",
    "WA": "XWAR",
    "VI": "XWBO",
    "PR": "XPRA",
    "BD": "XBUD",
    "IS": "XIST",
    "AT": "ASEX",
    "IC": "XICE",
    "KS": "XKRX",
    "KQ": "XKRX",
    "TW": "XTAI",
    "TWO": "XTAI",
    "SS": "XSHG",
    "SZ": "XSHG",
    "NS": "XBOM",
    "BO": "XBOM",
    "SI": "XSES",
    "BK": "XBKK",
    "JK": "XIDX",
    "KL": "XKLS",
    "JO": "XJSE",
    "MX": "XMEX",
    "SA": "BVMF",
    "BA": "XBUE",
    "SN": "XSGO",
    "TA": "XTAE",
    "PS": "XPHS",
    "SR": "XSAU",
}

# Index symbols trade on their home exchange's hours; an unknown "^" index is assumed to be a US one.
_INDEX_CALENDARS: dict[str, str] = {
    "^GSPC": "XNYS",
    "^DJI": "XNYS",
    "^IXIC": "XNYS",
    "^NDX": "XNYS",
    "^RUT": "XNYS",
    "^VIX": "XNYS",
    "^FTSE": "XLON",
    "^N225": "XTKS",
    "^GDAXI": "XETR",
    "^HSI": "XHKG",
    "^FCHI": "XPAR",
    "^AEX": "XAMS",
    "^GSPTSE": "XTSE",
    "^AXJO": "XASX",
    "^SSMI": "XSWX",
    "^IBEX": "XMAD",
    "^KS11": "XKRX",
}

# Only these quote codes make "BASE-QUOTE" a crypto pair; anything else after a dash is a US share
# class (BRK-B, BF-B) or a preferred series (BAC-PL) and trades on NYSE hours.
_CRYPTO_QUOTES = frozenset({"USD", "EUR", "GBP", "JPY", "USDT", "USDC", "BTC", "ETH"})

_DEFAULT_CALENDAR = "XNYS"
_RANGE_START = pd.Timestamp("2000-01-01")
_YEARS_AHEAD = 2


@dataclass(frozen=True, slots=True)
class NextBar:
    """Where the bar ``horizon`` minutes after ``as_of`` lies."""

    target_ts: int | None
    """Unix seconds of the target bar, ``as_of + horizon`` minutes, when it lies in the session, else None."""
    session_closed: bool
    """True when ``as_of + horizon`` reaches or passes the session's close or its lunch break."""
    next_open: int | None
    """Unix seconds when trading resumes after that close or break (None past the calendar's end)."""
    calendar: str | None
    """exchange_calendars name used, ``"24/7"`` for crypto, None when the market is unknown."""


@dataclass(frozen=True, slots=True)
class _Schedule:
    """Session bounds of one calendar as sorted int64 unix seconds, one element per session."""

    opens: np.ndarray
    break_starts: np.ndarray
    break_ends: np.ndarray
    closes: np.ndarray


@functools.lru_cache(maxsize=4096)  # bounded: symbols arrive from requests
def calendar_for(symbol: str) -> str | None:
    """The exchange_calendars name of a Yahoo-style symbol, ``"24/7"`` for crypto, None when unknown."""
    s = symbol.strip().upper()
    if not s or s.endswith(("=X", "=F")):  # FX and futures trade nearly around the clock: no claim
        return None
    if s.startswith("^"):
        return _INDEX_CALENDARS.get(s, _DEFAULT_CALENDAR)
    base, dot, suffix = s.rpartition(".")
    if dot and base:
        if suffix in _SUFFIX_CALENDARS:
            return _SUFFIX_CALENDARS[suffix]
        # BRK.A / BF.B are US share classes written with a dot; a longer unknown suffix is a foreign
        # exchange we have no calendar for, and guessing NYSE hours there would be wrong.
        return _DEFAULT_CALENDAR if len(suffix) == 1 else None
    base, dash, quote = s.rpartition("-")
    if dash and base and quote in _CRYPTO_QUOTES:
        return CRYPTO
    return _DEFAULT_CALENDAR


def _unix(column: pd.Series) -> np.ndarray:
    # Through datetime64[s] rather than .asi8 so the result does not depend on pandas' storage unit.
    return column.dt.tz_convert(None).to_numpy(dtype="datetime64[s]").astype(np.int64)


def _calendar(name: str) -> xc.ExchangeCalendar:
    end = pd.Timestamp.today().normalize() + pd.DateOffset(years=_YEARS_AHEAD)
    try:
        return xc.get_calendar(name, start=_RANGE_START, end=end)
    except ValueError:
        # Some calendars only know holidays up to a year (XSHG, XBOM, XSES) or from one (XSAU); the
        # default-range calendar always lies within those bounds, so it tells us where to clamp.
        cls = type(xc.get_calendar(name))
        lo, hi = cls.bound_min(), cls.bound_max()
        start = _RANGE_START if lo is None else max(_RANGE_START, lo)
        return xc.get_calendar(name, start=start, end=end if hi is None else min(end, hi))


@functools.cache
def _schedule(name: str) -> _Schedule:
    """Session bounds of calendar ``name``, built once (about 0.2-3 s) and then shared."""
    sched = _calendar(name).schedule
    closes = _unix(sched["close"])
    # A session without a lunch break gets an empty break at its close, so next_bar needs no branch.
    no_break = (sched["break_start"].isna() | sched["break_end"].isna()).to_numpy()
    break_starts = np.where(no_break, closes, _unix(sched["break_start"].fillna(sched["close"])))
    break_ends = np.where(no_break, closes, _unix(sched["break_end"].fillna(sched["close"])))
    return _Schedule(opens=_unix(sched["open"]), break_starts=break_starts, break_ends=break_ends, closes=closes)


def warm(symbols: Iterable[str]) -> tuple[str, ...]:
    """Build the calendars of ``symbols`` now (at model load), so no request pays for it; their names."""
    names = sorted({name for s in symbols if (name := calendar_for(s)) not in (None, CRYPTO)})
    for name in names:
        _schedule(name)
    return tuple(names)


def next_bar(symbol: str, as_of: int, horizon_minutes: int = 1) -> NextBar:
    """Where the bar ``horizon_minutes`` after the bar starting at ``as_of`` (unix s) lies."""
    if horizon_minutes < 1:
        raise ValueError(f"horizon_minutes must be >= 1, got {horizon_minutes}")
    name = calendar_for(symbol)
    naive = as_of + horizon_minutes * 60
    if name is None or name == CRYPTO:
        return NextBar(target_ts=naive, session_closed=False, next_open=None, calendar=name)
    sched = _schedule(name)
    i = int(np.searchsorted(sched.opens, as_of, side="right")) - 1
    if i < 0:  # before the calendar's first session
        return NextBar(target_ts=naive, session_closed=False, next_open=None, calendar=name)
    close = int(sched.closes[i])
    break_start, break_end = int(sched.break_starts[i]), int(sched.break_ends[i])
    # Extended-hours bars, lunch-break bars and bars past the calendar's end: the calendar knows
    # nothing about them, so claim nothing.
    if as_of >= close or break_start <= as_of < break_end:
        return NextBar(target_ts=naive, session_closed=False, next_open=None, calendar=name)
    if naive >= close:  # the close is an instant: the last bar starts one minute before it
        nxt = i + 1
        next_open = int(sched.opens[nxt]) if nxt < len(sched.opens) else None
        return NextBar(target_ts=None, session_closed=True, next_open=next_open, calendar=name)
    if as_of < break_start <= naive:  # no bar starts during the lunch break: the morning session is over
        return NextBar(target_ts=None, session_closed=True, next_open=break_end, calendar=name)
    return NextBar(target_ts=naive, session_closed=False, next_open=None, calendar=name)
