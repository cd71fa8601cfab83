"""The job's bar reader and window builder survive hostile files and rows: bad data is dropped, never fatal."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from functions.ingest.airbyte import decode_batch, events_from_bodies
from functions.shared import rebuild
from functions.shared.bars import to_parquet
from functions.shared.compaction import compact, encode_compacted
from tests.factories import message
from tests.factories import oracle as factories_oracle
from tests.functions.shared.test_compaction import table_of
from training_job import data
from training_job.config import TrainConfig
from training_job.data import NoDataError, read_bars
from training_job.train import build_windows

T0 = 1_793_629_800  # 2026-11-02 14:30 UTC
NOW = T0 + 10 * 86_400


def write(path, rows):
    """Write bar rows (symbol, ts, o, h, l, c, v) as the ingest's Parquet schema would hold them."""
    symbol, ts, o, h, lo, c, v = zip(*rows, strict=True)
    table = pa.table(
        {
            "symbol": pa.array(symbol, pa.string()),
            "ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
            "open": pa.array(o, pa.float64()),
            "high": pa.array(h, pa.float64()),
            "low": pa.array(lo, pa.float64()),
            "close": pa.array(c, pa.float64()),
            "volume": pa.array(v, pa.int64()),
            "emitted_at": pa.array([T0 * 1000] * len(rows), pa.int64()),
        }
    )
    pq.write_table(table, path)


GOOD = ("AAA", T0, 10.0, 10.5, 9.5, 10.2, 100)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (("AAA", T0 * 1000, 10.0, 10.5, 9.5, 10.2, 100), "millisecond timestamp (year ~58,800)"),
        (("AAA", 4_102_444_800, 10.0, 10.5, 9.5, 10.2, 100), "dated 2100"),
        (("AAA", 253_402_300_740, 10.0, 10.5, 9.5, 10.2, 100), "year 9999"),
        (("AAA", T0 + 60, 1e308, 1e308, 1e308, 1e308, 100), "price 1e308"),
        (("AAA", T0 + 60, 10.0, 10.5, 9.5, 10.2, -5), "negative volume (a wrapped 1e19)"),
        (("AAA", T0 + 60, 10.0, 9.0, 9.5, 10.2, 100), "high below open"),
        (("aaa\n", T0 + 60, 10.0, 10.5, 9.5, 10.2, 100), "symbol outside the contract"),
        (("AAA", 800_000_000, 10.0, 10.5, 9.5, 10.2, 100), "before 2000"),
    ],
)
def test_rows_that_break_the_contract_are_dropped_not_fatal(tmp_path, bad, why):
    """A hostile row is dropped; the valid rows of the same file are read."""
    write(tmp_path / "a.parquet", [GOOD, bad])
    df = read_bars(tmp_path, now=NOW)
    assert df[["symbol", "close"]].to_dict("records") == [{"symbol": "AAA", "close": 10.2}], why
    assert df["ts"].iloc[0] == pd.Timestamp(T0, unit="s", tz="UTC")


def test_an_unreadable_file_is_skipped(tmp_path):
    """A file that is not Parquet is skipped with a warning; the others are read."""
    write(tmp_path / "good.parquet", [GOOD])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert read_bars(tmp_path, now=NOW)["close"].tolist() == [10.2]


def test_nothing_valid_is_a_clear_no_data_error(tmp_path):
    """Only hostile rows: NoDataError saying so, not a pandas overflow."""
    write(tmp_path / "a.parquet", [("AAA", T0 * 1000, 10.0, 10.5, 9.5, 10.2, 100)])
    with pytest.raises(NoDataError, match="keeps the bar contract"):
        read_bars(tmp_path, now=NOW)


def _frame(symbol: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    return pd.DataFrame(
        {
            "symbol": symbol,
            "ts": pd.to_datetime(T0 + 60 * np.arange(n), unit="s", utc=True),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": rng.integers(1000, 5000, n),
        }
    )


def test_one_symbol_with_unusable_bars_does_not_stop_the_others():
    """A symbol whose bars the forecaster rejects is skipped with its reason; the rest still train."""
    bad = _frame("BAD", 400, 1)
    bad.loc[200, "close"] = np.nan  # what a hand-made or pre-validation file could hold
    bars = pd.concat([_frame("AAA", 400, 0), bad], ignore_index=True)
    windows, skipped, without_target = build_windows(bars, TrainConfig(window=20, min_windows_per_symbol=100))
    assert set(windows.symbol) == {"AAA"}
    assert list(skipped) == ["BAD"] and "unusable bars" in skipped["BAD"]
    assert without_target == {"AAA": {"in_segment": 0, "at_gap": 0}}  # contiguous minutes: every target is there


# --- the raw/ layout: compacted folders, the manifest rule, reading since a time ---


def _got(df: pd.DataFrame) -> dict:
    return {(r.symbol, int(r.ts.timestamp())): (r.close, r.volume, r.emitted_at) for r in df.itertuples()}


def test_the_layout_constants_mirror_the_apps():
    """REACH_S, the compacted file's name and the manifest key are the app's (the job never imports it)."""
    assert (data.REACH_S, data.COMPACTED_NAME, data.MANIFEST_KEY) == (
        rebuild.REACH_S,
        rebuild.COMPACTED_NAME,
        rebuild.MANIFEST_KEY,
    )


@pytest.mark.parametrize(
    ("date", "hour"),
    [("2026-11-02", "14"), ("2026-12-31", "23"), ("2026-02-30", "14"), ("2026-11-02", "24"), ("x", "14")],
)
def test_a_hour_folder_bounds_its_bars_as_the_app_says(tmp_path, date, hour):
    """data.newest_minute_in of date=…/hour=… equals rebuild.newest_minute_in of raw/date=…/hour=…/ (inf if unnamed)."""
    folder = tmp_path / f"date={date}" / f"hour={hour}"
    assert data.newest_minute_in(folder) == rebuild.newest_minute_in(f"raw/date={date}/hour={hour}/")
    assert data.newest_minute_in(tmp_path) == math.inf


def _compacted(folder: Path, rows, covers, manifest: bytes | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data_ = encode_compacted(table_of(rows), covers, [])
    if manifest is not None:  # the same bars under another manifest
        table = pq.read_table(io.BytesIO(data_)).replace_schema_metadata({rebuild.MANIFEST_KEY: manifest})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        data_ = sink.getvalue()
    (folder / data.COMPACTED_NAME).write_bytes(data_)


# a.parquet holds a revision of minute T0 emitted later than the compacted one: it wins whenever a is read
COMPACTED_ROW = ("AAA", T0, 10.0, 1, T0 * 1000)
COVERED_ROW = ("AAA", T0, 99.0, 1, T0 * 1000 + 1)
TAIL_ROW = ("AAA", T0 + 60, 11.0, 2, T0 * 1000)


@pytest.mark.parametrize(
    ("covers", "manifest", "close_at_t0"),
    [
        (["a.parquet"], None, 10.0),  # covered: skipped, the compacted bar stands
        ([], None, 99.0),  # not covered: read, and its later revision wins
        (["other.parquet"], None, 99.0),
        (["a.parquet"], b"garbled", 99.0),  # no readable manifest covers nothing: everything is read
        (["a.parquet"], b'{"covers": "a.parquet"}', 99.0),
    ],
)
def test_the_reader_skips_exactly_what_the_manifest_covers(tmp_path, covers, manifest, close_at_t0):
    """A file the folder's compacted file covers is never read; an uncovered one beside it always is."""
    hour = tmp_path / "date=2026-11-02" / "hour=14"
    _compacted(hour, [COMPACTED_ROW], covers, manifest)
    (hour / "a.parquet").write_bytes(to_parquet(table_of([COVERED_ROW])))
    (hour / "b.parquet").write_bytes(to_parquet(table_of([TAIL_ROW])))
    got = _got(read_bars(tmp_path, now=NOW))
    assert got[("AAA", T0)][0] == close_at_t0
    assert got[("AAA", T0 + 60)] == (11.0, 2, T0 * 1000)


def test_a_manifest_covers_only_its_own_folder(tmp_path):
    """The same name in another folder is read."""
    _compacted(tmp_path / "date=2026-11-02" / "hour=14", [COMPACTED_ROW], ["a.parquet"])
    other = tmp_path / "date=2026-11-02" / "hour=15"
    other.mkdir(parents=True)
    (other / "a.parquet").write_bytes(to_parquet(table_of([COVERED_ROW])))
    assert _got(read_bars(tmp_path, now=NOW))[("AAA", T0)][0] == 99.0


HOUR_START = 1_793_628_000  # 2026-11-02 14:00 UTC


@pytest.mark.parametrize(
    ("since", "read"),
    [
        (HOUR_START + rebuild.REACH_S, True),  # the folder may still hold a bar at exactly `since`
        (HOUR_START + rebuild.REACH_S + 1, False),  # it cannot: never opened
        (HOUR_START, True),
    ],
)
def test_since_skips_hour_folders_that_cannot_hold_a_bar_at_or_after_it(tmp_path, since, read):
    """An hour folder is read iff its start + REACH_S ≥ since; a file outside hour folders is always read."""
    hour = tmp_path / "date=2026-11-02" / "hour=14"
    hour.mkdir(parents=True)
    # a bar the folder cannot really hold (past its reach): it shows whether the folder was read
    probe = ("PRB", HOUR_START + rebuild.REACH_S + 120, 5.0, 1, HOUR_START * 1000)
    (hour / "x.parquet").write_bytes(to_parquet(table_of([probe])))
    (tmp_path / "loose.parquet").write_bytes(to_parquet(table_of([("LSE", since + 60, 7.0, 1, since * 1000)])))
    got = _got(read_bars(tmp_path, now=HOUR_START + 10 * 86_400, since=since))
    assert ("PRB", probe[1]) in got if read else ("PRB", probe[1]) not in got
    assert got[("LSE", since + 60)] == (7.0, 1, since * 1000)


def test_since_drops_earlier_rows_and_keeps_the_minute_at_it(tmp_path):
    """Rows with ts < since go; the bar at exactly since stays; nothing left is a NoDataError."""
    rows = [("AAA", T0 + 60 * i, 10.0 + i, 1, T0 * 1000) for i in range(5)]
    (tmp_path / "a.parquet").write_bytes(to_parquet(table_of(rows)))
    got = read_bars(tmp_path, now=NOW, since=T0 + 120)
    assert [int(t.timestamp()) for t in got["ts"]] == [T0 + 120, T0 + 180, T0 + 240]
    assert read_bars(tmp_path, now=NOW, since=T0 + 119.5)["ts"].iloc[0] == pd.Timestamp(T0 + 120, unit="s", tz="UTC")
    with pytest.raises(NoDataError, match="at or after"):
        read_bars(tmp_path, now=NOW, since=T0 + 241)


def test_a_file_compacted_away_between_listing_and_reading_is_found_in_the_compacted_file(tmp_path, monkeypatch):
    """A covered file deleted under the reader (a compaction) makes it scan the folder again: no bar is lost."""
    hour = tmp_path / "date=2026-11-02" / "hour=14"
    hour.mkdir(parents=True)
    (hour / "a.parquet").write_bytes(to_parquet(table_of([COMPACTED_ROW])))
    (hour / "b.parquet").write_bytes(to_parquet(table_of([TAIL_ROW])))
    real, compacted = data._read, []

    def read_after_compaction(path: str):
        if path.endswith("a.parquet") and not compacted:
            compacted.append(path)  # the compaction lands between the scan and this read
            _compacted(hour, [COMPACTED_ROW, TAIL_ROW], ["a.parquet", "b.parquet"])
            (hour / "a.parquet").unlink()
            (hour / "b.parquet").unlink()
        return real(path)

    monkeypatch.setattr(data, "_read", read_after_compaction)
    got = _got(read_bars(tmp_path, now=NOW))
    assert compacted
    assert got == {("AAA", T0): (10.0, 1, T0 * 1000), ("AAA", T0 + 60): (11.0, 2, T0 * 1000)}


def _bar_at(ts: int) -> tuple:
    """One valid bar of AAA at ``ts`` (unix s), as :func:`write` takes it."""
    return ("AAA", ts, 10.0, 10.5, 9.5, 10.2, 100)


def test_the_newest_bar_hint_reads_the_newest_hour_folder_with_files_only(tmp_path):
    """raw/date=…/hour=…: the greatest-named folder holding files gives the hint; an empty newer one is passed over."""
    raw = tmp_path / "raw" / "date=2026-11-02"
    for hour in ("hour=14", "hour=15", "hour=16"):
        (raw / hour).mkdir(parents=True)
    write(raw / "hour=14" / "late.parquet", [_bar_at(T0 + 7200)])  # an older folder is not read: a lower bound
    write(raw / "hour=15" / "a.parquet", [_bar_at(T0 + 1800), _bar_at(T0 + 2040)])
    assert data.newest_bar_hint(tmp_path, now=NOW) == T0 + 2040


def test_the_newest_bar_hint_ignores_rows_that_break_the_bar_contract(tmp_path):
    """A row dated past now + 1 day in the newest file cannot move the window past the bars."""
    write(tmp_path / "date=2026-11-01.parquet", [_bar_at(T0 - 86_400)])
    write(tmp_path / "date=2026-11-02.parquet", [_bar_at(T0), _bar_at(NOW + 2 * 86_400)])
    assert data.newest_bar_hint(tmp_path, now=NOW) == T0


def test_the_newest_bar_hint_skips_files_the_compacted_file_covers(tmp_path):
    """The newest folder is read by the manifest rule: a covered file's bars count only through the compacted file."""
    hour = tmp_path / "date=2026-11-02" / "hour=14"
    _compacted(hour, [COMPACTED_ROW], ["a.parquet"])
    write(hour / "a.parquet", [_bar_at(T0 + 600)])  # covered: compacted, not yet deleted
    write(hour / "b.parquet", [_bar_at(T0 + 120)])
    assert data.newest_bar_hint(tmp_path, now=NOW) == T0 + 120


def test_no_newest_bar_hint_where_nothing_is_readable(tmp_path):
    """An empty folder, or one whose only file is not Parquet, gives no hint (read_bars then says why)."""
    assert data.newest_bar_hint(tmp_path) is None
    (tmp_path / "date=2026-11-03.parquet").write_bytes(b"not parquet")
    assert data.newest_bar_hint(tmp_path) is None


@pytest.mark.integration
def test_bars_written_by_ingest_and_compacted_are_read_by_training_with_the_same_values(container, tmp_path):
    """The contract across compaction: ingest's blobs, compacted (one hour killed after its write), read identically."""
    hours = ("raw/date=2026-11-02/hour=14/", "raw/date=2026-11-02/hour=15/")
    t0 = HOUR_START
    bodies = [
        message("AAA", t0 * 1000 + 1000, [t0, t0 + 60], [(10.0, 10.5, 9.5, 10.2, 100), (10.2, 10.2, 10.2, 10.2, 0)]),
        message(
            "AAA", t0 * 1000 + 2000, [t0 + 60, t0 + 120], [(10.2, 10.9, 10.1, 10.8, 350), (10.8, 11, 10.7, 10.9, 9)]
        ),
        message("BBB", t0 * 1000 + 3000, [t0, t0 + 60], [(5.0, 5.5, 4.5, 5.2, 10), (5.2, 5.3, 5.1, 5.2, 11)]),
        message("AAA", t0 * 1000 + 500, [t0 + 60], [(9.0, 9.0, 9.0, 9.0, 1)]),  # a stale replay: loses
    ]
    for i, body in enumerate(bodies):
        table = decode_batch(events_from_bodies([body])).bars
        container.upload_blob(f"{hours[i % 2]}b{i}.parquet", to_parquet(table))

    def crash_after_the_first_write(point: str) -> None:
        if point == f"written {hours[0]}":
            raise RuntimeError("killed between the write and the deletes")

    now = t0 + 3 * 3600
    report = compact(container, now, 1800.0, 24, "t-contract", checkpoint=crash_after_the_first_write)
    assert report.outcomes()["failed"] == 1 and report.outcomes()["compacted"] == 1
    late = message("AAA", t0 * 1000 + 9000, [t0 + 120], [(11.0, 11.5, 10.5, 11.2, 7)])
    container.upload_blob(f"{hours[1]}late.parquet", to_parquet(decode_batch(events_from_bodies([late])).bars))
    for blob in container.list_blobs(name_starts_with="raw/"):  # what the job's mount of raw/ shows
        path = tmp_path / blob.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(container.download_blob(blob.name).readall())
    assert sorted(p.name for p in (tmp_path / hours[0]).iterdir()) == ["_compacted.parquet", "b0.parquet", "b2.parquet"]

    df = read_bars(tmp_path / "raw", now=now)
    got = {(r.symbol, int(r.ts.timestamp())): (r.open, r.high, r.low, r.close, r.volume) for r in df.itertuples()}
    assert got == factories_oracle([*bodies, late])
    assert got[("AAA", t0 + 60)] == (10.2, 10.9, 10.1, 10.8, 350) and got[("AAA", t0 + 120)][3] == 11.2
    assert str(df["ts"].dt.tz) == "UTC" and df["volume"].dtype == "int64"
