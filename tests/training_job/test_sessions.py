"""The next bar lies in the same session, or at the next session's open when the session closes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import exchange_calendars as xc
import pytest

from training_job.sessions import _INDEX_CALENDARS, _SUFFIX_CALENDARS, NextBar, _schedule, calendar_for, next_bar, warm

NY = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


def at(year: int, month: int, day: int, hour: int, minute: int, tz: ZoneInfo = NY) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp())


@pytest.mark.parametrize(
    ("symbol", "calendar"),
    [
        ("AAPL", "XNYS"),
        ("aapl", "XNYS"),
        (" MSFT ", "XNYS"),
        ("BRK-B", "XNYS"),
        ("BRK.B", "XNYS"),
        ("BAC-PL", "XNYS"),
        ("VOD.L", "XLON"),
        ("7203.T", "XTKS"),
        ("SAP.DE", "XETR"),
        ("SAP.F", "XFRA"),
        ("MC.PA", "XPAR"),
        ("ASML.AS", "XAMS"),
        ("RY.TO", "XTSE"),
        ("0700.HK", "XHKG"),
        ("BHP.AX", "XASX"),
        ("NESN.SW", "XSWX"),
        ("ENI.MI", "XMIL"),
        ("SAN.MC", "XMAD"),
        ("VOLV-B.ST", "XSTO"),
        ("005930.KS", "XKRX"),
        ("600519.SS", "XSHG"),
        ("000001.SZ", "XSHG"),
        ("RELIANCE.NS", "XBOM"),
        ("500325.BO", "XBOM"),
        ("^GSPC", "XNYS"),
        ("^DJI", "XNYS"),
        ("^IXIC", "XNYS"),
        ("^RUT", "XNYS"),
        ("^VIX", "XNYS"),
        ("^SOMETHING", "XNYS"),
        ("^FTSE", "XLON"),
        ("^N225", "XTKS"),
        ("^GDAXI", "XETR"),
        ("^HSI", "XHKG"),
        ("BTC-USD", "24/7"),
        ("ETH-EUR", "24/7"),
        ("SOL-USDT", "24/7"),
        ("ADA-USDC", "24/7"),
        ("ETH-BTC", "24/7"),
        ("DOGE-GBP", "24/7"),
        ("XRP-JPY", "24/7"),
        ("LINK-ETH", "24/7"),
        ("EURUSD=X", None),
        ("ES=F", None),
        ("FOO.ZZ", None),
        ("", None),
    ],
)
def test_calendar_for_maps_yahoo_symbols(symbol, calendar):
    """Suffixes, indices, crypto pairs, FX and futures map to the expected calendar name."""
    assert calendar_for(symbol) == calendar


@pytest.mark.parametrize("name", sorted({*_SUFFIX_CALENDARS.values(), *_INDEX_CALENDARS.values()}))
def test_every_mapped_calendar_exists_in_exchange_calendars(name):
    """Every calendar the mapping can return is a canonical exchange_calendars name."""
    assert name in xc.get_calendar_names()
    assert xc.resolve_alias(name) == name


@pytest.mark.parametrize(
    ("symbol", "as_of", "horizon", "expected"),
    [
        # mid-session and the minute before the last bar: the next bar is a minute (or h minutes) on
        ("AAPL", at(2026, 11, 24, 9, 30), 1, NextBar(at(2026, 11, 24, 9, 31), False, None, "XNYS")),
        ("AAPL", at(2026, 11, 24, 15, 58), 1, NextBar(at(2026, 11, 24, 15, 59), False, None, "XNYS")),
        ("AAPL", at(2026, 11, 24, 15, 54), 5, NextBar(at(2026, 11, 24, 15, 59), False, None, "XNYS")),
        # the last bar: the next one is the next trading day's open
        ("AAPL", at(2026, 11, 24, 15, 59), 1, NextBar(None, True, at(2026, 11, 25, 9, 30), "XNYS")),
        ("AAPL", at(2026, 11, 20, 15, 59), 1, NextBar(None, True, at(2026, 11, 23, 9, 30), "XNYS")),  # Fri -> Mon
        ("AAPL", at(2026, 11, 25, 15, 59), 1, NextBar(None, True, at(2026, 11, 27, 9, 30), "XNYS")),  # Thanksgiving
        ("AAPL", at(2026, 11, 24, 15, 56), 5, NextBar(None, True, at(2026, 11, 25, 9, 30), "XNYS")),
        # the day after Thanksgiving closes at 13:00
        ("AAPL", at(2026, 11, 27, 12, 58), 1, NextBar(at(2026, 11, 27, 12, 59), False, None, "XNYS")),
        ("AAPL", at(2026, 11, 27, 12, 59), 1, NextBar(None, True, at(2026, 11, 30, 9, 30), "XNYS")),
        ("BRK-B", at(2026, 11, 24, 15, 59), 1, NextBar(None, True, at(2026, 11, 25, 9, 30), "XNYS")),
        ("^GSPC", at(2026, 11, 24, 15, 59), 1, NextBar(None, True, at(2026, 11, 25, 9, 30), "XNYS")),
        # outside every session (pre-market, post-market, holiday, weekend): no claim
        ("AAPL", at(2026, 11, 24, 8, 0), 1, NextBar(at(2026, 11, 24, 8, 1), False, None, "XNYS")),
        ("AAPL", at(2026, 11, 24, 16, 0), 1, NextBar(at(2026, 11, 24, 16, 1), False, None, "XNYS")),
        ("AAPL", at(2026, 11, 26, 10, 0), 1, NextBar(at(2026, 11, 26, 10, 1), False, None, "XNYS")),
        ("AAPL", at(2026, 11, 21, 10, 0), 1, NextBar(at(2026, 11, 21, 10, 1), False, None, "XNYS")),
        # outside the calendar's range: no claim
        ("AAPL", at(1999, 6, 1, 10, 0), 1, NextBar(at(1999, 6, 1, 10, 1), False, None, "XNYS")),
        ("AAPL", at(2040, 6, 1, 10, 0), 1, NextBar(at(2040, 6, 1, 10, 1), False, None, "XNYS")),
        # crypto never closes
        ("BTC-USD", at(2026, 11, 24, 15, 59), 1, NextBar(at(2026, 11, 24, 16, 0), False, None, "24/7")),
        ("BTC-USD", at(2026, 11, 21, 23, 59), 5, NextBar(at(2026, 11, 22, 0, 4), False, None, "24/7")),
        # FX and futures: unknown market, no claim
        ("EURUSD=X", at(2026, 11, 24, 15, 59), 1, NextBar(at(2026, 11, 24, 16, 0), False, None, None)),
        ("ES=F", at(2026, 11, 24, 15, 59), 1, NextBar(at(2026, 11, 24, 16, 0), False, None, None)),
        # Tokyo's lunch break (11:30-12:30): no bar starts at a target minute inside it, so the morning
        # session is closed for that forecast and trading resumes at 12:30; 15:30 close
        ("7203.T", at(2026, 11, 24, 11, 28, TOKYO), 1, NextBar(at(2026, 11, 24, 11, 29, TOKYO), False, None, "XTKS")),
        ("7203.T", at(2026, 11, 24, 11, 29, TOKYO), 1, NextBar(None, True, at(2026, 11, 24, 12, 30, TOKYO), "XTKS")),
        ("7203.T", at(2026, 11, 24, 11, 24, TOKYO), 5, NextBar(at(2026, 11, 24, 11, 29, TOKYO), False, None, "XTKS")),
        ("7203.T", at(2026, 11, 24, 11, 25, TOKYO), 5, NextBar(None, True, at(2026, 11, 24, 12, 30, TOKYO), "XTKS")),
        ("7203.T", at(2026, 11, 24, 12, 30, TOKYO), 1, NextBar(at(2026, 11, 24, 12, 31, TOKYO), False, None, "XTKS")),
        ("7203.T", at(2026, 11, 24, 12, 0, TOKYO), 1, NextBar(at(2026, 11, 24, 12, 1, TOKYO), False, None, "XTKS")),
        ("7203.T", at(2026, 11, 24, 15, 29, TOKYO), 1, NextBar(None, True, at(2026, 11, 25, 9, 0, TOKYO), "XTKS")),
    ],
)
def test_next_bar(symbol, as_of, horizon, expected):
    """The target bar, or the closed session and the next open, for each case."""
    assert next_bar(symbol, as_of, horizon) == expected


def test_last_session_of_a_bounded_calendar_closes_without_a_next_open():
    """XSHG only knows holidays up to a year: its last close is reported, with no next open after it."""
    sched = _schedule("XSHG")
    last_close = int(sched.closes[-1])
    assert next_bar("600519.SS", last_close - 60) == NextBar(None, True, None, "XSHG")
    assert next_bar("600519.SS", last_close + 86_400) == NextBar(last_close + 86_460, False, None, "XSHG")


def test_schedule_covers_2000_to_two_years_ahead():
    """The XNYS arrays start on 2000-01-03 and reach about two years past 2026-12-02."""
    sched = _schedule("XNYS")
    assert at(2000, 1, 3, 9, 30) == int(sched.opens[0])
    assert int(sched.closes[-1]) > at(2028, 11, 30, 0, 0)
    assert (sched.opens[1:] > sched.closes[:-1]).all()


@pytest.mark.parametrize("horizon", [0, -1])
def test_horizon_must_be_positive(horizon):
    """A horizon under one minute is rejected."""
    with pytest.raises(ValueError, match="horizon_minutes"):
        next_bar("AAPL", at(2026, 11, 24, 10, 0), horizon)


def test_warm_builds_only_exchange_calendars():
    """warm() builds each named exchange calendar once and skips crypto and unknown markets."""
    assert warm(["AAPL", "MSFT", "^GSPC", "VOD.L", "BTC-USD", "EURUSD=X"]) == ("XLON", "XNYS")
    hits = _schedule.cache_info().hits
    next_bar("VOD.L", at(2026, 11, 24, 10, 0))
    assert _schedule.cache_info().hits == hits + 1
