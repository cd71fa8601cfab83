"""The live feed's resume point on real Azurite: a damaged latest/ blob is repaired from raw/, never fatal."""

from __future__ import annotations

import datetime as dt

import orjson
import pyarrow as pa
import pytest

from devhost.market.live import LiveFeed, Resume, resume_point
from functions.shared.bars import from_parquet, to_parquet
from functions.shared.latest import latest_blob_name, update_latest
from functions.shared.rebuild import QUARANTINE_PREFIX
from tests.factories import table_bars
from tests.functions.shared.test_bars import T0, bars

pytestmark = pytest.mark.integration

# bars per symbol: the last closes differ (109, 111, 113), so each price is its own symbol's
COUNTS = {"AAA": 10, "BBB": 12, "CCC": 14}


def symbol_bars(symbol: str) -> pa.Table:
    """``COUNTS[symbol]`` one-minute bars of ``symbol`` from T0, closing at 100 and up by 1 a minute."""
    return bars([(symbol, T0 + 60 * i, 100.0 + i, 1, 1) for i in range(COUNTS[symbol])])


DAMAGE = {
    "corrupt": lambda container: container.upload_blob(latest_blob_name("BBB"), b"\x00garbage", overwrite=True),
    "truncated": lambda container: container.upload_blob(
        latest_blob_name("BBB"), to_parquet(symbol_bars("BBB"))[:-40], overwrite=True
    ),
    "missing": lambda container: container.delete_blob(latest_blob_name("BBB")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_point_repairs_a_damaged_latest_blob(container, damage):
    """One damaged latest/ blob: the resume point still has every symbol's last close, and the blob is rebuilt."""
    for symbol in COUNTS:
        table = symbol_bars(symbol)
        update_latest(container, table, 512, 4, f"seed-{symbol}")
        container.upload_blob(f"raw/date=2026-11-02/hour=15/{symbol}.parquet", to_parquet(table))
    DAMAGE[damage](container)
    resume = resume_point(container)
    assert resume == Resume(dt.date(2026, 11, 2), {"AAA": 109.0, "BBB": 111.0, "CCC": 113.0})
    repaired = from_parquet(container.download_blob(latest_blob_name("BBB")).readall())
    assert table_bars(repaired) == table_bars(symbol_bars("BBB"))
    quarantined = list(container.list_blobs(name_starts_with=f"{QUARANTINE_PREFIX}BBB/"))
    assert len(quarantined) == (0 if damage == "missing" else 1)


def test_resume_point_of_empty_storage_is_none(container):
    """Nothing stored, or only a damaged blob raw/ cannot back: no resume point (devhost up backfills)."""
    assert resume_point(container) is None
    container.upload_blob(latest_blob_name("AAA"), b"junk")
    assert resume_point(container) is None
    assert not container.get_blob_client(latest_blob_name("AAA")).exists()


@pytest.mark.parametrize(("start", "clock", "bars_sent"), [(1, "14:31", 2), (45, "15:15", 46)])
def test_the_live_feed_starts_inside_the_session_at_its_start_minute(start: int, clock: str, bars_sent: int) -> None:
    """The first sync carries the session's first ``start`` minutes and the forming one; the clock is there."""
    sent: list[list[bytes]] = []
    feed = LiveFeed(lambda bodies: sent.append(bodies) or {}, Resume(dt.date(2026, 11, 4), {"AAA": 50.0}), 7, start)
    assert f"{feed.clock:%Y-%m-%d %H:%M}" == f"2026-11-05 {clock}"
    assert feed.step() == 1
    chart = orjson.loads(sent[0][0])["_airbyte_data"]["chart"]["result"][0]
    stamps = chart["timestamp"]
    assert (len(stamps), stamps[-1] - stamps[0]) == (bars_sent, 60 * (bars_sent - 1))
    assert dt.datetime.fromtimestamp(stamps[0], dt.UTC).strftime("%H:%M") == "14:30"
    assert f"{feed.clock:%H:%M}" == f"{dt.datetime.strptime(clock, '%H:%M') + dt.timedelta(minutes=1):%H:%M}"
