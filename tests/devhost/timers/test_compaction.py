"""Compaction offline: `devhost bars` and the local job's bar sync read compacted hours plus the raw tail."""

from __future__ import annotations

import os

import orjson
import pyarrow as pa
import pytest

from devhost.__main__ import main
from devhost.jobs.local_jobs import sync_raw
from devhost.shared.home import up_state_file
from devhost.storage.store import read_raw
from devhost.timers.compaction import compact_everything
from functions.shared.bars import to_parquet, true_bars
from tests.factories import table_bars
from tests.functions.shared.test_bars import T0, bars
from training_job.data import read_bars

pytestmark = pytest.mark.integration

HOURS = ("raw/date=2026-11-02/hour=15", "raw/date=2026-11-02/hour=16")


def seed(container) -> pa.Table:
    """Three batches over two hours, the third revising a minute of the first; returns every row written."""
    first = bars([("AAA", T0 + 60 * i, 100.0 + i, 1, 1) for i in range(5)])
    second = bars([("BBB", T0 + 60 * i, 20.0 + i, 1, 1) for i in range(3)])
    third = bars([("AAA", T0 + 60 * 2, 150.0, 7, 2)])
    container.upload_blob(f"{HOURS[0]}/a.parquet", to_parquet(first))
    container.upload_blob(f"{HOURS[0]}/b.parquet", to_parquet(second))
    container.upload_blob(f"{HOURS[1]}/c.parquet", to_parquet(third))
    return pa.concat_tables([first, second, third])


def _names(container) -> list[str]:
    return sorted(b.name for b in container.list_blobs(name_starts_with="raw/"))


def test_everything_compacted_reads_the_same_bars_from_one_blob_an_hour(container):
    """After compacting every hour, raw/ holds one blob per hour and devhost reads the same true bars."""
    written = seed(container)
    report = compact_everything(container, run="t-all")
    assert report.outcomes()["compacted"] == 2 and report.total("merged") == 3 and report.total("deleted") == 3
    assert _names(container) == [f"{h}/_compacted.parquet" for h in HOURS]
    assert table_bars(read_raw(container).bars) == table_bars(true_bars(written))


def test_the_job_sync_copies_rewritten_compacted_blobs_and_reads_the_oracle(container, tmp_path):
    """The local job's inputs follow compaction: a re-compacted hour is copied again, and the bars equal the oracle."""
    written = seed(container)
    inputs = tmp_path / "inputs"
    assert sync_raw(container, inputs) == (3, 3)
    compact_everything(container, run="t-1")
    late = bars([("BBB", T0 + 60 * 9, 30.0, 1, 3)])
    container.upload_blob(f"{HOURS[0]}/d.parquet", to_parquet(late))
    assert sync_raw(container, inputs) == (3, 3)  # d, and both compacted blobs (with their ETags)
    compact_everything(container, run="t-2")  # merges d: hour 15's compacted blob is rewritten
    assert sync_raw(container, inputs) == (1, 2)
    assert sync_raw(container, inputs) == (0, 2)
    expected = true_bars(pa.concat_tables([written, late]))
    got = read_bars(inputs)  # the stale local copies of deleted raw blobs are covered, hence skipped
    assert sorted(zip(got["symbol"], got["close"], strict=True)) == sorted(
        zip(expected.column("symbol").to_pylist(), expected.column("close").to_pylist(), strict=True)
    )


def test_compact_all_is_refused_while_up_runs(container, runtime, capsys):
    """`devhost compact --all` exits 1 and compacts nothing while `devhost up` may still write raw/."""
    seed(container)
    state = up_state_file(runtime.home)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(orjson.dumps({"pid": os.getpid(), "port": 1}))
    try:
        assert main(["compact", "--all"]) == 1
    finally:
        state.unlink()
    assert "devhost up is running" in capsys.readouterr().out
    assert len(_names(container)) == 3


def test_compact_without_all_leaves_open_hours(container, capsys):
    """`devhost compact` runs as the timer does: hours closed long ago are merged (these are), and it exits 0."""
    written = seed(container)
    assert main(["compact"]) == 0
    assert _names(container) == [f"{h}/_compacted.parquet" for h in HOURS]
    assert table_bars(read_raw(container).bars) == table_bars(true_bars(written))
    assert "2 compacted" in " ".join(capsys.readouterr().out.split())
