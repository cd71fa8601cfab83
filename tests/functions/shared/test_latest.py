"""latest/<SYMBOL>.parquet on real Azurite: ETag-conditional merges lose nothing; corrupt blobs are rebuilt."""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import threading
from dataclasses import replace
from urllib.parse import parse_qs, unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient

from functions.predict import forecasts
from functions.predict.api import ApiError
from functions.settings import get_settings
from functions.shared.bars import from_parquet, last_bars, to_parquet, true_bars
from functions.shared.latest import (
    LatestConflictError,
    LatestUpdateError,
    latest_blob_name,
    read_latest,
    symbol_marker_name,
    update_latest,
    update_symbol,
)
from functions.shared.rebuild import QUARANTINE_PREFIX, newest_minute_in, rebuild_from_raw
from tests.functions.shared.test_bars import T0, bars, key_values

pytestmark = pytest.mark.integration


def minutes(start: int, count: int, emitted: int = 1) -> list[tuple]:
    return [("AAPL", T0 + 60 * (start + i), 100.0 + start + i, 1, emitted) for i in range(count)]


def stored(container) -> list[tuple]:
    return key_values(from_parquet(container.download_blob(latest_blob_name("AAPL")).readall()))


class _InterleaveWrite:
    """Before our write, let another batch land on the same blob (a real race, made certain)."""

    def __init__(self, action, times: int = 1) -> None:
        self.action, self.times, self.fired = action, times, 0

    def __call__(self, request) -> None:
        if request.http_request.method == "PUT" and self.fired < self.times:
            self.fired += 1
            self.action()


def _client(runtime, container, hook):
    return BlobServiceClient.from_connection_string(
        runtime.azurite.connection_string, raw_request_hook=hook
    ).get_container_client(container.container_name)


def test_conflicting_write_is_merged_not_lost(container, runtime):
    """A batch that lands between our read and our write is kept, and so is ours."""
    update_symbol(container, "AAPL", bars(minutes(0, 3)), 512, 4, "seed")
    policy = _InterleaveWrite(lambda: update_symbol(container, "AAPL", bars(minutes(3, 2)), 512, 4, "other"))
    racing = _client(runtime, container, policy)
    held = update_symbol(racing, "AAPL", bars(minutes(5, 2)), 512, 4, "ours")
    assert policy.fired == 1
    assert held == 7
    assert [t for _, t, _, _ in stored(container)] == [T0 + 60 * i for i in range(7)]


def test_gives_up_after_bounded_attempts(container, runtime):
    """When every write loses the race, the update raises so the invocation is retried."""
    policy = _InterleaveWrite(lambda: update_symbol(container, "AAPL", bars(minutes(0, 1)), 512, 4, "other"), 10)
    racing = _client(runtime, container, policy)
    update_symbol(container, "AAPL", bars(minutes(0, 1)), 512, 4, "seed")
    with pytest.raises(LatestConflictError, match="after 3 attempts"):
        update_symbol(racing, "AAPL", bars(minutes(5, 1)), 512, 3, "ours")


def test_two_concurrent_batch_streams_keep_every_bar(container):
    """Two threads updating one symbol at once end with the union of their bars."""

    def worker(offset: int) -> None:
        for k in range(6):
            update_symbol(container, "AAPL", bars(minutes(offset + 2 * k, 1)), 512, 50, f"t{offset}-{k}")

    threads = [threading.Thread(target=worker, args=(o,)) for o in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [t for _, t, _, _ in stored(container)] == [T0 + 60 * i for i in range(12)]


def test_window_and_idempotence(container):
    """Only the newest N bars are kept, and applying a batch twice changes nothing."""
    update_symbol(container, "AAPL", bars(minutes(0, 10)), 4, 4, "a")
    first = stored(container)
    update_symbol(container, "AAPL", bars(minutes(0, 10)), 4, 4, "a-again")
    assert stored(container) == first
    assert [t for _, t, _, _ in first] == [T0 + 60 * i for i in range(6, 10)]


def test_a_read_with_the_current_etag_downloads_nothing_and_a_changed_blob_is_read(container):
    """With the ETag it knows: unchanged blob → unchanged, no table; after a write → the new bars and ETag."""
    update_symbol(container, "AAPL", bars(minutes(0, 3)), 10, 4, "a")
    first = read_latest(container, "AAPL", 10, 4, "r-1")
    assert first.etag is not None and not first.unchanged and first.table.num_rows == 3
    again = read_latest(container, "AAPL", 10, 4, "r-2", known_etag=first.etag)
    assert (again.unchanged, again.table, again.etag) == (True, None, first.etag)
    update_symbol(container, "AAPL", bars(minutes(3, 1)), 10, 4, "b")
    changed = read_latest(container, "AAPL", 10, 4, "r-3", known_etag=first.etag)
    assert not changed.unchanged and changed.etag not in (None, first.etag)
    assert [t for _, t, _, _ in key_values(changed.table)] == [T0 + 60 * i for i in range(4)]


# --- repair: raw/ is the truth, latest/ a view of it ---

DAY1, DAY2 = "raw/date=2026-11-02", "raw/date=2026-11-03"


def series(symbol: str, start: int, count: int, emitted: int, bump: float = 0.0) -> pa.Table:
    """``count`` one-minute bars of ``symbol`` from minute ``start``, emitted at ``emitted``."""
    return bars([(symbol, T0 + 60 * (start + i), 100.0 + start + i + bump, 1, emitted) for i in range(count)])


def only(table: pa.Table, symbol: str) -> pa.Table:
    return table.filter(pc.equal(table.column("symbol"), symbol))


def seed_raw(container) -> pa.Table:
    """Three hours over two dates of AAPL and MSFT bars, the newest revising minutes 15-19; returns all rows."""
    hours = {
        f"{DAY1}/hour=23": pa.concat_tables([series("AAPL", 0, 10, 1), series("MSFT", 0, 10, 1)]),
        f"{DAY2}/hour=00": pa.concat_tables([series("AAPL", 10, 10, 2), series("MSFT", 10, 3, 2)]),
        f"{DAY2}/hour=09": pa.concat_tables([series("AAPL", 20, 10, 3), series("AAPL", 15, 5, 3, bump=0.5)]),
    }
    for prefix, table in hours.items():
        container.upload_blob(f"{prefix}/batch.parquet", to_parquet(table), overwrite=True)
    return pa.concat_tables(list(hours.values()))


def quarantined(container, symbol: str = "AAPL") -> list[tuple[str, bytes]]:
    return [
        (b.name, container.download_blob(b.name).readall())
        for b in container.list_blobs(name_starts_with=f"{QUARANTINE_PREFIX}{symbol}/")
    ]


def _wrong_schema() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"symbol": ["AAPL"], "price": [1.0]}), sink)
    return sink.getvalue()


CORRUPT = {
    "empty": (b"", "empty"),
    "garbage": (b"not parquet at all", "unreadable"),
    "truncated": (to_parquet(series("AAPL", 0, 30, 9))[:-40], "unreadable"),
    "schema": (_wrong_schema(), "schema"),
    "other-symbol": (to_parquet(series("MSFT", 40, 3, 9)), "wrong-symbol"),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_latest_is_quarantined_and_rebuilt_from_raw(container, kind):
    """A bad latest blob is copied to quarantine and replaced by raw/'s window merged with the batch."""
    everything = seed_raw(container)
    bad, reason = CORRUPT[kind]
    container.upload_blob(latest_blob_name("AAPL"), bad, overwrite=True)
    batch = series("AAPL", 30, 2, 4)
    held = update_symbol(container, "AAPL", batch, 14, 4, "b-1")
    truth = key_values(last_bars(only(pa.concat_tables([everything, batch]), "AAPL"), 14))
    assert held == 14
    assert stored(container) == truth
    assert [t for _, t, _, _ in truth] == [T0 + 60 * i for i in range(18, 32)]
    assert [c for _, _, c, _ in truth[:2]] == [118.5, 119.5]  # the newer hour's revision won
    [(name, data)] = quarantined(container)
    assert data == bad
    assert f"-{reason}-" in name


def _downloads(runtime, container, seen: list[str]):
    def hook(request) -> None:
        if request.http_request.method == "GET" and "comp=list" not in request.http_request.url:
            seen.append(unquote(urlparse(request.http_request.url).path))

    return _client(runtime, container, hook)


def test_rebuild_reads_every_folder_that_can_reach_the_window_and_none_older(container, runtime):
    """A folder that may hold a minute of the window is read (its revision wins); one too old to is never downloaded."""
    everything = seed_raw(container)
    replayed = series("AAPL", 29, 1, 9, bump=0.25)  # minute 29 again, emitted later, in the oldest folder
    container.upload_blob(f"{DAY1}/hour=23/replayed.parquet", to_parquet(replayed))
    # written 2026-10-20 12h: a bar there is at most 2 d 2 h newer, long before the window's oldest minute
    container.upload_blob("raw/date=2026-10-20/hour=12/old.parquet", to_parquet(series("AAPL", -20_000, 5, 0)))
    seen: list[str] = []
    rebuilt = rebuild_from_raw(_downloads(runtime, container, seen), "AAPL", 14, "b-2")
    assert key_values(rebuilt) == key_values(last_bars(only(pa.concat_tables([everything, replayed]), "AAPL"), 14))
    assert rebuilt.column("close").to_pylist()[-1] == 129.25
    assert any(f"{DAY1}/hour=23/replayed.parquet" in path for path in seen)
    assert not any("date=2026-10-20" in path for path in seen)


@pytest.mark.parametrize(
    ("hour", "newest"),
    [
        ("raw/date=2026-11-02/hour=14/", dt.datetime(2026, 11, 4, 16, tzinfo=dt.UTC).timestamp()),
        ("raw/date=2026-02-30/hour=14/", math.inf),  # no such day: a folder the host never names bounds nothing
    ],
)
def test_a_folder_bounds_the_minutes_it_can_hold(hour, newest):
    """A bar under an hour's folder is at most two days (emission, then stamp) and two hours past the hour's start."""
    assert newest_minute_in(hour) == newest


# --- a backfill written after newer bars: raw/ folders are by write time, not by minute ---

BACKFILL_DAY = T0 - 3 * 86_400  # Friday 2026-10-30, three days before the live minutes


def backfill(start: int, count: int) -> pa.Table:
    """Minutes of an older day, emitted then (emitted_at 1), as a late backfill re-sends them."""
    return bars([("AAPL", BACKFILL_DAY + 60 * (start + i), 300.0 + start + i, 1, 1) for i in range(count)])


LIVE_AT = "raw/date=2026-11-02/hour=15"
# the backfill also re-sends the newest live minute as first emitted (emitted_at 1): the live bar
# written earlier (emitted_at 5) is still the true one
STALE_NEWEST = series("AAPL", 29, 1, 1, bump=900.0)
BACKFILLS = {
    "an older backfill hour adds nothing": {
        "raw/date=2026-11-02/hour=17": pa.concat_tables([backfill(30, 30), STALE_NEWEST]),
        "raw/date=2026-11-02/hour=16": backfill(0, 30),
    },
    "an hour without the symbol": {
        "raw/date=2026-11-02/hour=17": pa.concat_tables([backfill(0, 60), STALE_NEWEST]),
        "raw/date=2026-11-02/hour=16": series("MSFT", 0, 30, 5),
    },
    "written the next day": {
        "raw/date=2026-11-03/hour=01": pa.concat_tables([backfill(30, 30), STALE_NEWEST]),
        "raw/date=2026-11-03/hour=00": backfill(0, 30),
    },
}


@pytest.mark.parametrize("written", list(BACKFILLS))
def test_rebuild_serves_the_newest_minutes_after_a_backfill_of_older_ones(container, written):
    """Live minutes, then a backfill of an older day written later: the rebuild's as_of is the newest live minute."""
    live = series("AAPL", 0, 30, 5)
    container.upload_blob(f"{LIVE_AT}/live.parquet", to_parquet(live))
    for folder, table in BACKFILLS[written].items():
        container.upload_blob(f"{folder}/backfill.parquet", to_parquet(table))
    everything = pa.concat_tables([live, *BACKFILLS[written].values()])
    container.upload_blob(latest_blob_name("AAPL"), b"\x00garbage", overwrite=True)
    records, _ = forecasts._read_latest(replace(get_settings(), latest_window=10), "AAPL", 5)
    assert [(r["ts"], r["close"]) for r in records] == [(T0 + 60 * i, 100.0 + i) for i in range(25, 30)]
    assert stored(container) == key_values(last_bars(only(everything, "AAPL"), 10))


def test_rebuild_reads_older_dates_until_the_window_is_full(container):
    """A window larger than raw/ holds gathers every hour across dates, newest version of each minute."""
    everything = seed_raw(container)
    rebuilt = rebuild_from_raw(container, "AAPL", 100, "b-3")
    assert key_values(rebuilt) == key_values(true_bars(only(everything, "AAPL")))
    assert rebuilt.num_rows == 30
    assert rebuilt.column("close").to_pylist()[15:20] == [115.5, 116.5, 117.5, 118.5, 119.5]


def test_corrupt_raw_blob_is_skipped_during_rebuild(container, caplog):
    """An unreadable raw/ blob is skipped with a warning naming the batch; the rest still rebuild."""
    everything = seed_raw(container)
    container.upload_blob(f"{DAY2}/hour=09/bad.parquet", b"PAR1 torn write", overwrite=True)
    with caplog.at_level(logging.WARNING, logger="functions.shared.rebuild"):
        rebuilt = rebuild_from_raw(container, "AAPL", 100, "b-4")
    assert key_values(rebuilt) == key_values(true_bars(only(everything, "AAPL")))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "batch=b-4" in warning and f"{DAY2}/hour=09/bad.parquet" in warning


def test_predict_read_path_rebuilds_a_corrupt_blob(container):
    """_read_latest answers the bars rebuilt from raw/ for a corrupt blob and leaves it repaired."""
    everything = seed_raw(container)
    container.upload_blob(latest_blob_name("AAPL"), b"\x00garbage", overwrite=True)
    settings = replace(get_settings(), latest_window=14)
    records, _ = forecasts._read_latest(settings, "AAPL", 5)
    truth = last_bars(only(everything, "AAPL"), 14)
    assert [(r["ts"], r["close"]) for r in records] == [(T0 + 60 * i, 100.0 + i) for i in range(25, 30)]
    assert stored(container) == key_values(truth)
    assert [data for _, data in quarantined(container)] == [b"\x00garbage"]


def test_predict_read_path_unknown_symbol_stays_404(container):
    """No latest blob, or a corrupt one with no raw/ bars behind it, is 404 (the bad bytes kept in quarantine)."""
    seed_raw(container)
    settings = get_settings()
    with pytest.raises(ApiError) as missing:
        forecasts._read_latest(settings, "ZZZZ", 5)
    container.upload_blob(latest_blob_name("NVDA"), b"junk", overwrite=True)
    with pytest.raises(ApiError) as corrupt:
        forecasts._read_latest(settings, "NVDA", 5)
    assert (missing.value.status, corrupt.value.status) == (404, 404)
    assert corrupt.value.code == "unknown_symbol"
    assert not container.get_blob_client(latest_blob_name("NVDA")).exists()
    assert [data for _, data in quarantined(container, "NVDA")] == [b"junk"]


# --- a missing latest/ blob: rebuilt when its symbol was stored, a cheap 404 when it never was ---


def ingest_hours(container, hours: dict[str, pa.Table], window: int = 512) -> pa.Table:
    """What ingest leaves per batch: the window merged into latest/ (the marker first), then the raw/ blob."""
    for folder, table in hours.items():
        update_latest(container, table, window, 4, folder)
        container.upload_blob(f"{folder}/batch.parquet", to_parquet(table))
    return pa.concat_tables(list(hours.values()))


TWO_HUNDRED = {
    "raw/date=2026-11-02/hour=15": series("AAPL", 0, 100, 1),
    "raw/date=2026-11-02/hour=17": series("AAPL", 100, 100, 2),
}


def test_predict_read_path_rebuilds_a_missing_blob_of_a_stored_symbol(container):
    """latest/AAPL deleted while raw/ holds 200 bars: the GET's read answers the newest and recreates the blob."""
    everything = ingest_hours(container, TWO_HUNDRED)
    container.delete_blob(latest_blob_name("AAPL"))
    records, etag = forecasts._read_latest(get_settings(), "AAPL", 5)
    assert [(r["ts"], r["close"]) for r in records] == [(T0 + 60 * i, 100.0 + i) for i in range(195, 200)]
    assert etag is None  # rebuilt just now: the next GET reads the blob and its ETag
    assert stored(container) == key_values(true_bars(everything))
    assert quarantined(container) == []


def test_a_batch_merges_into_the_rebuilt_window_of_a_missing_blob(container):
    """A batch for a stored symbol whose latest/ blob is gone merges into raw/'s window, not into nothing."""
    everything = ingest_hours(container, TWO_HUNDRED)
    container.delete_blob(latest_blob_name("AAPL"))
    batch = series("AAPL", 200, 2, 3)
    held = update_symbol(container, "AAPL", batch, 512, 4, "b-6")
    assert held == 202
    assert stored(container) == key_values(true_bars(pa.concat_tables([everything, batch])))


def _requests(runtime, container, seen: list[tuple[str, str]]):
    def hook(request) -> None:
        url = urlparse(request.http_request.url)
        if "comp=list" in url.query:  # a listing: by its prefix
            seen.append(("LIST", parse_qs(url.query).get("prefix", [""])[0]))
        else:
            seen.append((request.http_request.method, unquote(url.path).split("/", 3)[3]))  # past /account/container/

    return _client(runtime, container, hook)


HOURS = ("raw/date=2026-11-02/hour=17", "raw/date=2026-11-02/hour=15")


@pytest.mark.parametrize(
    ("marked", "first_read"),
    [
        (False, [("GET", "latest/ZZZZ.parquet"), ("HEAD", "symbols/ZZZZ")]),
        # a marker with no bars behind it (the batch never reached raw/): one whole scan, then the marker goes
        (
            True,
            [
                ("GET", "latest/ZZZZ.parquet"),
                ("HEAD", "symbols/ZZZZ"),
                ("LIST", "raw/"),
                ("LIST", "raw/date=2026-11-02/"),
                *[step for hour in HOURS for step in (("LIST", f"{hour}/"), ("GET", f"{hour}/batch.parquet"))],
                ("DELETE", "symbols/ZZZZ"),
            ],
        ),
    ],
    ids=["never-stored", "marker-without-bars"],
)
def test_a_symbol_raw_does_not_hold_is_a_404_for_two_requests(container, runtime, marked, first_read):
    """An unknown symbol costs a GET and a HEAD, never a scan of raw/; a marker raw/ cannot back is dropped."""
    ingest_hours(container, TWO_HUNDRED)
    if marked:
        container.upload_blob(symbol_marker_name("ZZZZ"), b"")
    seen: list[tuple[str, str]] = []
    client = _requests(runtime, container, seen)
    first = read_latest(client, "ZZZZ", 512, 4, "r-4")
    assert (first.table, first.etag, seen) == (None, None, first_read)
    seen.clear()
    again = read_latest(client, "ZZZZ", 512, 4, "r-5")
    assert (again.table, seen) == (None, [("GET", "latest/ZZZZ.parquet"), ("HEAD", "symbols/ZZZZ")])
    with pytest.raises(ApiError) as unknown:
        forecasts._read_latest(get_settings(), "ZZZZ", 5)
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_symbol")


def test_one_failing_symbol_does_not_block_the_others(container, runtime):
    """update_latest updates every symbol, then raises one error naming the symbol that failed."""

    def fail_bbb(request) -> None:
        if request.http_request.method == "PUT" and "/latest/BBB.parquet" in request.http_request.url:
            raise ServiceRequestError("injected storage outage")

    client = BlobServiceClient.from_connection_string(
        runtime.azurite.connection_string, raw_request_hook=fail_bbb, retry_total=0
    ).get_container_client(container.container_name)
    batch = pa.concat_tables([series(s, 0, 3, 1) for s in ("AAA", "BBB", "CCC")])
    with pytest.raises(LatestUpdateError, match="BBB") as raised:
        update_latest(client, batch, 512, 4, "b-5")
    assert set(raised.value.failed) == {"BBB"}
    for symbol in ("AAA", "CCC"):
        latest = from_parquet(container.download_blob(latest_blob_name(symbol)).readall())
        assert key_values(latest) == key_values(only(batch, symbol))
    assert not container.get_blob_client(latest_blob_name("BBB")).exists()
