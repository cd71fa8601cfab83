"""benchmarks/scale.py's pure parts: the grid, the ratios, the bars and their raw/ layout as the job reads it back."""

from __future__ import annotations

import datetime as dt
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import scale
from benchmarks.scale import Config, grid, growth, linear_cost, symbols_within, trading_days, write_layout
from functions.shared.bars import BAR_SCHEMA
from training_job import data
from training_job.data import read_bars


def test_the_grid_is_symbols_by_days_smallest_first():
    """5 / 50 / 500 symbols x 5 / 20 days, six configurations; --quick leaves out 500."""
    assert [c.name for c in grid()] == ["5x5", "5x20", "50x5", "50x20", "500x5", "500x20"]
    assert [c.name for c in grid(quick=True)] == ["5x5", "5x20", "50x5", "50x20"]
    assert Config.parse("500x20") == Config(500, 20)
    for bad in ("50", "x20", "50x", "0x5", "ax5", "5x-1"):
        with pytest.raises(ValueError):
            Config.parse(bad)


def test_growth_ratios_from_given_tick_times():
    """history_growth: 50x20 over 50x5; per_symbol_growth: the cost per symbol at 500 over that at 50 (20 days)."""
    ticks = {"5x5": 30.0, "5x20": 31.0, "50x5": 40.0, "50x20": 50.0, "500x5": 100.0, "500x20": 200.0}
    ratios = growth(ticks)
    assert ratios["history_growth"] == pytest.approx(1.25) and ratios["history_growth_at"] == 50
    assert ratios["per_symbol_growth"] == pytest.approx((200 / 500) / (50 / 50))
    assert ratios["per_symbol_growth_between"] == [50, 500]


def test_growth_of_the_quick_grid_and_of_missing_ticks():
    """Without 500 symbols the per-symbol ratio compares 50 with 5; a missing tick gives None, never a guess."""
    quick = growth({"5x5": 30.0, "5x20": 32.0, "50x5": 40.0, "50x20": 44.0})
    assert quick["per_symbol_growth"] == pytest.approx((44 / 50) / (32 / 5))
    assert quick["per_symbol_growth_between"] == [5, 50] and quick["history_growth"] == pytest.approx(1.1)
    assert growth({"50x20": 44.0}) == {
        "history_growth": None,
        "history_growth_at": None,
        "per_symbol_growth": None,
        "per_symbol_growth_between": None,
    }
    assert growth({"50x5": 40.0, "500x20": 90.0})["per_symbol_growth"] is None  # no 50x20


def test_a_tick_that_did_not_complete_leaves_its_ratio_unmeasured():
    """500 symbols run but killed: per_symbol_growth is None, not quietly taken between 5 and 50."""
    ticks = {"5x5": 30.0, "5x20": 31.0, "50x5": 40.0, "50x20": 50.0, "500x5": None, "500x20": None}
    ratios = growth(ticks)
    assert ratios["per_symbol_growth"] is None and ratios["per_symbol_growth_between"] == [50, 500]
    assert ratios["history_growth"] == pytest.approx(1.25)
    failed = {"500x5": {"reason": "out of memory", "phase": "score", "rss_mb": 13_312, "after_s": 200.0}}
    line = scale.note({**ratios, "failed": failed})
    assert line == (
        "`per_symbol_growth` not measured: 500 × 5 did not complete (out of memory: killed at 13.0 GB in `score`)"
    )
    assert scale.note({"per_symbol_growth": 0.5, "per_symbol_growth_between": [50, 500]}) == (
        "`per_symbol_growth` 0.50 (500 vs 50 symbols)"
    )


def test_the_phase_a_killed_tick_was_in_is_the_last_one_started_and_not_ended():
    """The child's log marks each timed phase's start and end; a kill leaves the open one last."""
    mark = scale.PHASE_MARK
    lines = [f"x INFO scale {mark} read start", f"x INFO scale {mark} read end", "other", f"y {mark} score start"]
    assert scale.phase_at_end(lines) == "score"
    assert scale.phase_at_end(lines[:2]) is None


def test_the_cost_model_and_the_symbols_it_allows():
    """A straight line through two symbol counts, and how many symbols fit a budget under it."""
    fixed, per = linear_cost(50, 60.0, 500, 150.0)
    assert (fixed, per) == pytest.approx((50.0, 0.2))
    assert symbols_within(fixed, per, 900) == 4250
    assert symbols_within(1000, per, 900) == 0
    assert symbols_within(fixed, 0.0, 900) is None


def test_trading_days_are_weekdays_ending_at_the_last():
    """Five weekdays back from a Friday are that week; twenty skip the weekends."""
    friday = dt.date(2025, 6, 27)
    assert trading_days(5, friday) == [dt.date(2025, 6, d) for d in (23, 24, 25, 26, 27)]
    days = trading_days(20, friday)
    assert len(days) == 20 and days[0] == dt.date(2025, 6, 2) and all(d.weekday() < 5 for d in days)
    with pytest.raises(ValueError):
        trading_days(5, dt.date(2025, 6, 28))


def test_generated_bars_keep_the_bar_contract():
    """One bar a minute of each session per symbol, in the bar schema, valid OHLC, AR(1) returns planted."""
    bars = scale.generate(3, 2, seed=1)
    assert bars.schema == BAR_SCHEMA and bars.num_rows == 3 * 2 * scale.SESSION_MINUTES
    frame = bars.to_pandas()
    assert frame.groupby("symbol").size().tolist() == [780, 780, 780]
    assert not frame.duplicated(["symbol", "ts"]).any()
    assert data.contract_mask(bars).to_pylist() == [True] * bars.num_rows
    first = frame["ts"].min()
    assert first == pd.Timestamp("2025-06-26 13:30", tz="UTC")
    assert frame["ts"].max() == pd.Timestamp("2025-06-27 19:59", tz="UTC")
    assert bars == scale.generate(3, 2, seed=1) and bars != scale.generate(3, 2, seed=2)
    # the planted AR(1): lag-1 autocorrelation of the returns within sessions, well above zero
    many = scale.generate(20, 5, seed=3).to_pandas()
    r = np.log(many["close"].to_numpy()).reshape(20, 5, scale.SESSION_MINUTES)
    d = np.diff(r, axis=2).reshape(-1, scale.SESSION_MINUTES - 1)
    rho = np.corrcoef(d[:, 1:].ravel(), d[:, :-1].ravel())[0, 1]
    assert 0.12 < rho < 0.28


def test_the_layout_is_compacted_hours_and_an_open_raw_tail(tmp_path):
    """Closed hours: one _compacted.parquet with a manifest; the newest hour: raw batch blobs of 5 minutes."""
    bars = scale.generate(4, 2, seed=5)
    layout = write_layout(bars, tmp_path / "raw")
    folders = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").glob("date=*/hour=*"))
    assert folders[0] == "date=2025-06-26/hour=13" and folders[-1] == "date=2025-06-27/hour=19"
    assert layout.hours == len(folders) == 14 and layout.compacted == 13 and layout.raw == 12
    assert layout.bars == bars.num_rows and layout.blobs == 25
    for folder in folders[:-1]:
        files = sorted(p.name for p in (tmp_path / "raw" / folder).iterdir())
        assert files == ["_compacted.parquet"]
        meta = pq.read_metadata(tmp_path / "raw" / folder / "_compacted.parquet").metadata
        manifest = json.loads(meta[b"stockcast.compaction"])
        assert len(manifest["covers"]) == scale.COVERED_PER_HOUR and manifest["unreadable"] == []
    tail = sorted((tmp_path / "raw" / folders[-1]).iterdir())
    assert len(tail) == 12 and all(p.name != "_compacted.parquet" for p in tail)
    assert {pq.read_metadata(p).num_rows for p in tail} == {4 * scale.TAIL_BLOB_MINUTES}
    # the first session's first hour holds its half hour from 13:30
    first = pq.read_table(tmp_path / "raw" / folders[0] / "_compacted.parquet")
    assert first.num_rows == 4 * 30


def test_the_written_bars_read_back_by_the_job_are_those_generated(tmp_path):
    """training_job.data.read_bars on the layout gives exactly the generated bars, with or without ``since``."""
    bars = scale.generate(6, 3, seed=7)
    write_layout(bars, tmp_path / "raw")
    expected = bars.select(data.BAR_COLUMNS).to_pandas().sort_values(["symbol", "ts"]).reset_index(drop=True)
    got = read_bars(tmp_path / "raw", now=dt.datetime(2025, 7, 1, tzinfo=dt.UTC).timestamp())
    pd.testing.assert_frame_equal(got[data.BAR_COLUMNS], expected, check_dtype=False)
    since = dt.datetime(2025, 6, 27, tzinfo=dt.UTC).timestamp()
    newest = read_bars(tmp_path / "raw", since=since)
    pd.testing.assert_frame_equal(
        newest[data.BAR_COLUMNS],
        expected[expected["ts"] >= pd.Timestamp(since, unit="s", tz="UTC")].reset_index(drop=True),
        check_dtype=False,
    )


def test_the_blob_counter_counts_distinct_parquet_files_under_its_root(tmp_path, monkeypatch):
    """Files pyarrow opened under the root, each once; files elsewhere are not counted."""
    import pyarrow.dataset as ds

    for name in ("dataset", "read_table", "read_metadata", "read_schema"):
        monkeypatch.setattr(ds if name == "dataset" else pq, name, getattr(ds if name == "dataset" else pq, name))
    write_layout(scale.generate(2, 1, seed=9), tmp_path / "raw")
    other = tmp_path / "elsewhere.parquet"
    pq.write_table(scale.generate(1, 1).slice(0, 5), other)
    counter = scale.BlobCounter(tmp_path / "raw").install()
    read_bars(tmp_path / "raw")
    read_bars(tmp_path / "raw")
    pq.read_table(other)
    assert len(counter.files) == 6 + 12  # 6 compacted hours and the open hour's 12 batch blobs


def test_the_phase_clock_times_outer_calls_and_records_missing_functions(monkeypatch):
    """A wrapped function's time is counted once per outer call; a function that moved is named, not guessed."""
    probe = types.ModuleType("scale_probe")
    exec("import time\ndef f(n):\n    time.sleep(0.02)\n    return n if n == 0 else f(n - 1)\n", probe.__dict__)
    monkeypatch.setitem(sys.modules, "scale_probe", probe)
    clock = scale.PhaseClock()
    clock.wrap("f", "scale_probe", "f")
    clock.wrap("gone", "scale_probe", "no_such_function")
    assert probe.f(2) == 0 and probe.f(0) == 0
    assert clock.calls == {"f": 2} and 0.08 <= clock.seconds["f"] < 1.0
    assert clock.missing == ["scale_probe.no_such_function"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_full_mode_tick_reads_the_full_retrains_history(tmp_path):
    """``--mode full`` runs the daily retrain's tick: 20 trading days read where a warm tick reads 10."""
    import subprocess

    script = Path(scale.__file__)
    run = subprocess.run(
        [sys.executable, str(script), "--mode", "full", "--configs", "2x20", "--repeat", "1", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert (result["mode"], result["history_days"], result["failed"]) == ("full", 20, {})
    assert result["bars_read"]["2x20"] == 2 * 20 * scale.SESSION_MINUTES
    child = json.loads((tmp_path / "2x20" / "tick.json").read_text())
    assert child["config"] == {"history_days": 10, "full_history_days": 20, "max_train_windows": 20_000, "mode": "full"}
