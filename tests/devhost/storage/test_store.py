"""`devhost bars` on real Azurite: an unreadable raw/ blob is skipped, named in a warning, and counted."""

from __future__ import annotations

import io
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devhost.__main__ import main
from devhost.storage.store import read_raw
from functions.shared.bars import to_parquet, true_bars
from tests.factories import table_bars
from tests.functions.shared.test_bars import T0, bars

pytestmark = pytest.mark.integration

HOUR = "raw/date=2026-11-02/hour=15"


def _other_schema() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"symbol": ["AAA"], "price": [1.0]}), sink)
    return sink.getvalue()


UNREADABLE = {
    "torn": b"PAR1\x00 a torn write",
    "empty": b"",
    "other-schema": _other_schema(),
}


def seed(container, bad: bytes) -> pa.Table:
    """Two good batches (the second revising a minute) and one unreadable blob between them; returns the good rows."""
    first = bars([("AAA", T0 + 60 * i, 100.0 + i, 1, 1) for i in range(5)])
    second = bars([("AAA", T0 + 60 * 4, 150.0, 2, 2), ("BBB", T0, 20.0, 1, 2)])
    container.upload_blob(f"{HOUR}/a.parquet", to_parquet(first))
    container.upload_blob(f"{HOUR}/b-bad.parquet", bad)
    container.upload_blob(f"{HOUR}/c.parquet", to_parquet(second))
    return pa.concat_tables([first, second])


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_an_unreadable_raw_blob_is_skipped_with_a_warning_naming_it(container, caplog, kind):
    """read_raw keeps the true bars of the readable blobs and names the one it skipped, in a warning too."""
    good = seed(container, UNREADABLE[kind])
    with caplog.at_level(logging.WARNING, logger="devhost.store"):
        raw = read_raw(container, request_id="t-1")
    assert table_bars(raw.bars) == table_bars(true_bars(good))
    assert raw.skipped == (f"{HOUR}/b-bad.parquet",)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "read=t-1" in warning and f"{HOUR}/b-bad.parquet" in warning


def test_cli_bars_skips_and_counts_an_unreadable_raw_blob(container, tmp_path, capsys):
    """`devhost bars --out` exits 0 with one unreadable raw/ blob, exports the rest, and counts the skipped blob."""
    good = seed(container, UNREADABLE["torn"])
    out = tmp_path / "bars.parquet"
    assert main(["bars", "--out", str(out)]) == 0
    assert table_bars(pq.read_table(out)) == table_bars(true_bars(good))
    printed = " ".join(capsys.readouterr().out.split())
    assert "bars stored: 6" in printed and "unreadable raw/ blobs skipped: 1" in printed
