"""The real 1-minute bars the benchmarks use: the CSV rows become bars of the project's schema."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.real_bars import FILES, fetch_sdist, to_bars
from functions.shared.bars import BAR_SCHEMA

ROW = {"date": "2022-05-18 16:00:00+00:00", "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 7.0}


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        ({}, 1),
        ({"low": 10.2}, 0),  # the open lies below the low
        ({"high": 10.4}, 0),  # the close lies above the high
        ({"low": 0.0, "open": 0.0}, 0),  # a price of zero
        ({"volume": float("nan")}, 0),
        ({"close": float("inf")}, 0),
        ({"volume": -1.0}, 0),
        ({"open": 9.0, "close": 11.0}, 1),  # open at the low, close at the high: a valid bar
    ],
)
def test_rows_that_break_the_bar_rules_are_dropped(change, kept):
    """Only rows that are valid bars become bars."""
    assert to_bars(pd.DataFrame([{**ROW, **change}]), "MSFT").num_rows == kept


def test_a_row_becomes_a_bar_of_the_schema():
    """Symbol, minute start in whole seconds, prices, integer volume, emitted at the minute's end."""
    bars = to_bars(pd.DataFrame([ROW]), "AZN.L")
    assert bars.schema == BAR_SCHEMA
    row = bars.to_pylist()[0]
    assert (row["symbol"], int(row["ts"].timestamp()), row["close"], row["volume"]) == ("AZN.L", 1652889600, 10.5, 7)
    assert row["emitted_at"] == (1652889600 + 60) * 1000


@pytest.mark.slow
def test_the_pinned_sdist_holds_the_three_symbols(tmp_path):
    """Pip fetches the pinned sdist, its hash is the pinned one, and each symbol has weeks of minutes."""
    from benchmarks.real_bars import read_csvs

    sdist = fetch_sdist()
    assert sdist.name == "market_prices-0.12.14.tar.gz" and sdist.stat().st_size > 1_000_000  # hash checked on fetch
    frames = read_csvs(sdist)
    assert set(frames) == set(FILES)
    assert {symbol: len(frame) > 6000 for symbol, frame in frames.items()} == dict.fromkeys(FILES, True)
