"""What one tick trains on: its bounded history window, the capped training windows, and the warm-start rules."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from devhost.market.feed import FeedConfig, write_bars
from tests.conftest import TINY
from training_job import data
from training_job.config import TrainConfig, parse_args
from training_job.features import FEATURES
from training_job.model import architecture, fingerprint
from training_job.train import (
    ARCHITECTURE_TAG,
    FINGERPRINT_TAG,
    TRAINED_UNTIL_TAG,
    WarmPlan,
    fair_shares,
    history_start,
    lineage_trained_until,
    plan_warm_start,
    prepare_bars,
    read_history,
    sample_windows,
)


def _ts(text: str) -> int:
    """Unix seconds of an ISO UTC time."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


@pytest.mark.parametrize(
    ("newest", "days", "start"),
    [
        ("2026-11-06T20:59", 5, "2026-11-02T00:00"),  # Friday: Monday to Friday
        ("2026-11-07T12:00", 5, "2026-11-02T00:00"),  # Saturday rolls back to Friday
        ("2026-11-08T12:00", 1, "2026-11-06T00:00"),  # Sunday, one day: Friday
        ("2026-11-09T14:30", 2, "2026-11-06T00:00"),  # Monday, two days: Friday and Monday
        ("2026-11-09T14:30", 1, "2026-11-09T00:00"),  # the newest bar's own day
        ("2026-11-04T10:00", 10, "2026-10-22T00:00"),  # two weeks of weekdays back across a weekend
    ],
)
def test_history_start_counts_weekdays_back_from_the_newest_bar(newest, days, start):
    """The window starts at 00:00 UTC of the weekday ``days`` back, the newest bar's own day counted."""
    assert history_start(_ts(newest), days) == _ts(start)


@pytest.mark.parametrize("days", [0, -1])
def test_a_history_of_no_days_is_all_history(days):
    """0 (or less) trading days: no lower bound at all."""
    assert history_start(_ts("2026-11-06T20:59"), days) is None


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five trading days (2026-11-02 to 06) of one symbol, one file per day."""
    folder = tmp_path_factory.mktemp("week")
    write_bars(FeedConfig(symbols=("AAA",), days=5, seed=1), folder)
    return folder


NOW = _ts("2026-11-10T00:00")


def test_a_warm_tick_reads_its_last_trading_days(week):
    """history_days=2: the bars of Thursday and Friday only, and the window says so."""
    bars, history = read_history(week, TrainConfig(bars=week, history_days=2), now=NOW)
    days = sorted({ts.date().isoformat() for ts in bars["ts"]})
    assert days == ["2026-11-05", "2026-11-06"]
    assert (history.mode, history.days, history.since) == ("warm", 2, _ts("2026-11-05T00:00"))
    assert history.until == int(data.epoch_seconds(bars["ts"]).max()) and history.bars == len(bars)
    assert history.as_dict()["since"] == "2026-11-05T00:00:00Z"


def test_a_full_tick_reads_its_longer_history_and_zero_days_is_everything(week):
    """A full tick reads full_history_days; 0 days reads every bar, with no lower bound."""
    cfg = TrainConfig(bars=week, mode="full", history_days=1, full_history_days=3)
    bars, history = read_history(week, cfg, now=NOW)
    assert min(bars["ts"]).date().isoformat() == "2026-11-04" and (history.mode, history.days) == ("full", 3)
    everything, unbounded = read_history(week, replace(cfg, full_history_days=0), now=NOW)
    assert len(everything) == len(data.read_bars(week, now=NOW)) and unbounded.since is None


def test_a_hint_that_falls_short_reads_more_and_still_cuts_at_the_window(week, tmp_path):
    """Folders whose names do not sort by time: the hint is too early, the window is still exact."""
    for path in sorted(week.glob("*.parquet")):
        # the oldest day in the greatest-named folder: the hint falls on Monday
        folder = tmp_path / ("z" if "11-02" in path.name else "a")
        folder.mkdir(exist_ok=True)
        (folder / path.name).write_bytes(path.read_bytes())
    hint = data.newest_bar_hint(tmp_path, now=NOW)
    bars, history = read_history(tmp_path, TrainConfig(bars=tmp_path, history_days=2), now=NOW)
    expected, _ = read_history(week, TrainConfig(bars=week, history_days=2), now=NOW)
    assert hint is not None and hint < _ts("2026-11-03T00:00")
    assert bars.equals(expected) and history.since == _ts("2026-11-05T00:00")


@pytest.mark.parametrize(
    ("counts", "cap", "shares"),
    [
        ([10, 10, 10], 12, [4, 4, 4]),
        ([2, 10, 10], 12, [2, 5, 5]),  # what a small symbol leaves goes to the others
        ([100, 50, 10], 60, [25, 25, 10]),
        ([3, 3], 10, [3, 3]),  # room for every window
        ([100], 7, [7]),
        ([5, 5, 5], 0, [0, 0, 0]),
        ([10, 10, 10], 2, [0, 1, 1]),  # fewer than the symbols: at most the cap, never more
    ],
)
def test_fair_shares(counts, cap, shares):
    """Water filling: as equal as the counts allow, never above the cap."""
    got = fair_shares(np.array(counts), cap)
    assert got.tolist() == shares and got.sum() <= cap


def _windows(counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Symbols and as_of times (a minute apart per symbol, interleaved) of windows per symbol."""
    symbols = np.concatenate([np.full(n, s, dtype=object) for s, n in counts.items()])
    as_of = np.concatenate([1_800_000_000 + 60 * np.arange(n) for n in counts.values()])
    order = np.argsort(as_of, kind="stable")  # as the split hands them over: not grouped by symbol
    return symbols[order], as_of[order]


def test_sampled_windows_are_bounded_and_shared_evenly_across_symbols():
    """At most the cap, and each symbol its fair share."""
    symbols, as_of = _windows({"AAA": 100, "BBB": 50, "CCC": 10})
    picked = sample_windows(symbols, as_of, 60, seed=42)
    names, counts = np.unique(symbols[picked].astype(str), return_counts=True)
    assert len(picked) == 60 and len(set(picked.tolist())) == 60
    assert dict(zip(names.tolist(), counts.tolist(), strict=True)) == {"AAA": 25, "BBB": 25, "CCC": 10}


def test_sampled_windows_spread_evenly_over_time():
    """One window from each of the share's equal runs of a symbol's windows in time order."""
    symbols, as_of = _windows({"AAA": 100})
    picked = np.sort(as_of[sample_windows(symbols, as_of, 25, seed=42)])
    runs = (picked - 1_800_000_000) // 60 // 4  # 100 windows in 25 runs of 4
    assert runs.tolist() == list(range(25))


def test_sampling_is_deterministic_for_a_seed():
    """The same windows and seed give the same sample; another seed another one."""
    symbols, as_of = _windows({"AAA": 100, "BBB": 100})
    first = sample_windows(symbols, as_of, 50, seed=42)
    assert first.tolist() == sample_windows(symbols, as_of, 50, seed=42).tolist()
    assert first.tolist() != sample_windows(symbols, as_of, 50, seed=43).tolist()


def test_a_symbols_sample_does_not_move_when_another_symbol_is_added():
    """Each symbol draws from the seed and its own name: with the same share, the same windows."""
    two = _windows({"AAA": 100, "BBB": 100})
    three = _windows({"AAA": 100, "BBB": 100, "CCC": 100})
    a_of_two = two[1][sample_windows(*two, 20, seed=42)][two[0][sample_windows(*two, 20, seed=42)] == "AAA"]
    picked = sample_windows(*three, 30, seed=42)
    a_of_three = three[1][picked][three[0][picked] == "AAA"]
    assert len(a_of_two) == 10 and a_of_two.tolist() == a_of_three.tolist()


@pytest.mark.parametrize("cap", [0, 200, 10_000])
def test_no_sampling_without_a_cap_or_below_it(cap):
    """A cap of 0, or no more windows than the cap: every window, in order."""
    symbols, as_of = _windows({"AAA": 100, "BBB": 100})
    assert sample_windows(symbols, as_of, cap, seed=42).tolist() == list(range(200))


def test_the_fit_is_capped_while_calibration_and_decision_keep_every_window(bars_dir):
    """max_train_windows samples train (and validation in proportion); calibration and decision are whole."""
    bars = data.read_bars(bars_dir)
    whole = prepare_bars(bars, TrainConfig(bars=bars_dir, **TINY))
    capped = prepare_bars(bars, TrainConfig(bars=bars_dir, **{**TINY, "max_train_windows": 300}))
    share = 300 / len(whole.train)
    assert len(capped.train) == 300 and len(whole.train) > 300
    assert dict(zip(*np.unique(capped.train.symbol.astype(str), return_counts=True), strict=True)) == {
        "AAA": 100,
        "BBB": 100,
        "CCC": 100,
    }
    assert len(capped.validation) <= math.ceil(share * len(whole.validation)) and len(capped.validation) > 0
    assert capped.sampled == {
        "train": 300,
        "train_available": len(whole.train),
        "validation": len(capped.validation),
        "validation_available": len(whole.validation),
    }
    assert capped.decision.as_of.tolist() == whole.decision.as_of.tolist()
    assert capped.calibration.as_of.tolist() == whole.calibration.as_of.tolist()
    assert whole.sampled["train"] == whole.sampled["train_available"] == len(whole.train)


SPEC = architecture(window=20, horizon=1, units=8, ar_lags=10, seeds=1, features=FEATURES)
OTHER = {**SPEC, "units": 4}
UNSEEN_FROM = _ts("2026-11-06T14:38")  # the calibration slice's first minute; the decision slice follows
BEFORE, AT = UNSEEN_FROM - 60, UNSEEN_FROM


def _tags(spec: dict, until: int | None = BEFORE, with_spec: bool = True) -> dict[str, str]:
    tags = {"kind": "lstm_attention", FINGERPRINT_TAG: fingerprint(spec)}
    if with_spec:
        tags[ARCHITECTURE_TAG] = json.dumps(spec)
    if until is not None:
        tags[TRAINED_UNTIL_TAG] = str(until)
    return tags


@pytest.mark.parametrize(
    ("mode", "kind", "tags", "plan"),
    [
        ("full", "lstm_attention", _tags(SPEC), WarmPlan(False, None, "full retrain: from scratch")),
        ("warm", "persistence", {}, WarmPlan(False, None, "champion v2 is persistence: no weights to start from")),
        (
            "warm",
            "lstm_attention",
            {"kind": "lstm_attention", TRAINED_UNTIL_TAG: str(BEFORE)},
            WarmPlan(False, None, "champion v2 records no architecture (registered before warm starts)"),
        ),
        (
            "warm",
            "lstm_attention",
            _tags(OTHER),
            WarmPlan(False, None, "champion v2's architecture differs: units 4 → 8"),
        ),
        (
            "warm",
            "lstm_attention",
            _tags(OTHER, with_spec=False),
            WarmPlan(
                False,
                None,
                f"champion v2's architecture differs: fingerprint {fingerprint(OTHER)} against {fingerprint(SPEC)}",
            ),
        ),
        (
            "warm",
            "lstm_attention",
            _tags(SPEC, until=None),
            WarmPlan(False, None, "champion v2 does not record when its training data ends"),
        ),
        (
            "warm",
            "lstm_attention",
            _tags(SPEC, until=AT),  # its weights saw the slices' first minute: not before them
            WarmPlan(
                False,
                None,
                "champion v2's weights learned from data up to 2026-11-06T14:38:00Z, not before this tick's "
                "calibration and decision slices (from 2026-11-06T14:38:00Z)",
            ),
        ),
        (
            "warm",
            "lstm_attention",
            _tags(SPEC),
            WarmPlan(
                True,
                "2",
                "champion v2 has the same architecture and its weights learned from data up to "
                "2026-11-06T14:37:00Z, before this tick's calibration and decision slices (from 2026-11-06T14:38:00Z)",
                BEFORE,
            ),
        ),
    ],
)
def test_plan_warm_start(mode, kind, tags, plan):
    """Warm only from a trained champion of the same architecture whose lineage ended before the unseen slices."""
    assert plan_warm_start(mode, "2", kind, tags, SPEC, UNSEEN_FROM) == plan


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({}, False),
        ({"units": 16}, True),
        ({"window": 30}, True),
        ({"ar_lags": 5}, True),
        ({"seeds": 3}, True),
        ({"horizon": 5}, True),
        ({"features": FEATURES[:-1]}, True),
        ({"ar_lags": 40}, False),  # cut to the window either way, so the same weights
    ],
)
def test_the_fingerprint_tells_architectures_apart(change, differs):
    """Each setting a member's weights depend on changes the fingerprint; one fit ignores does not."""
    base = dict(window=20, horizon=1, units=8, ar_lags=20, seeds=1, features=FEATURES)
    assert (fingerprint(architecture(**{**base, **change})) != fingerprint(architecture(**base))) is differs


@pytest.mark.parametrize(("own", "source", "lineage"), [(100, None, 100), (100, 50, 100), (100, 150, 150)])
def test_a_lineage_ends_where_its_newest_data_does(own, source, lineage):
    """A warm-started version's data ends at the later of its own fit's and its source's lineage."""
    assert lineage_trained_until(own, source) == lineage


def test_the_mode_is_an_option_of_two_words():
    """--mode warm|full; anything else is refused by the command line."""
    assert parse_args(["--bars", "x", "--mode", "full"]).mode == "full"
    assert parse_args(["--bars", "x"]).mode == "warm"
    with pytest.raises(SystemExit):
        parse_args(["--bars", "x", "--mode", "cold"])
