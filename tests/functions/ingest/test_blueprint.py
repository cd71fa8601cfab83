"""The registered ingest function on real Azurite: a bad latest/ blob or a failing symbol never sinks a batch."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient

import functions.ingest.blueprint
from devhost.app.host import Host
from devhost.kafka.replay import make_batches
from devhost.storage.store import stored_bars
from functions.settings import get_settings
from functions.shared.bars import from_parquet, last_bars
from functions.shared.latest import LatestUpdateError, latest_blob_name, symbol_marker_name
from functions.shared.rebuild import QUARANTINE_PREFIX
from tests.factories import message, table_bars

pytestmark = pytest.mark.integration

T0 = 1_793_629_980
SYMBOLS = ("AAA", "BBB", "CCC")
WINDOW = 50
BAD = b"PAR1\x00 a torn write"


def body(symbol: str, emitted_s: int, start: int, count: int, bump: float = 0.0) -> bytes:
    """One Airbyte message with ``count`` consistent bars of ``symbol`` from minute ``start``."""
    ts = [T0 + 60 * (start + i) for i in range(count)]
    closes = [100.0 + start + i + bump for i in range(count)]
    return message(symbol, emitted_s * 1000, ts, [(c, c + 1, c - 1, c, 10 + i) for i, c in enumerate(closes)])


def hour_bodies(hour: int) -> list[bytes]:
    """Hour ``hour`` of the feed: 20 new minutes per symbol and a revision of the previous 5."""
    emitted = T0 + 3600 * (hour + 1)
    bodies = [body(s, emitted, 20 * hour, 20) for s in SYMBOLS]
    if hour:
        bodies += [body(s, emitted, 20 * hour - 5, 5, bump=0.25) for s in SYMBOLS]
    return bodies


def at(day: int, hour: int) -> Host:
    """A devhost whose output bindings resolve {DateTime} to this UTC hour."""
    moment = dt.datetime(2026, 11, day, hour, 30, tzinfo=dt.UTC)
    return Host(retry_cap=2, retry_wait_cap=0.01, clock=lambda: moment)


@pytest.fixture
def small_window(runtime, monkeypatch) -> None:
    """The ingest function sees LATEST_WINDOW=50, so a few hours of bars overflow it."""
    settings = replace(get_settings(), latest_window=WINDOW)
    monkeypatch.setattr(functions.ingest.blueprint, "get_settings", lambda: settings)


def latest(container, symbol: str) -> dict:
    return table_bars(from_parquet(container.download_blob(latest_blob_name(symbol)).readall()))


def test_corrupt_latest_is_rebuilt_and_the_batch_lands(container, small_window):
    """A corrupt latest/AAA in a batch with BBB and CCC: one attempt, all three windows equal raw/'s truth."""
    hours = [(2, 22), (2, 23), (3, 0)]  # raw/ spans two dates, as a repair must read it
    for index, (day, hour) in enumerate(hours):
        [batch] = make_batches(hour_bodies(index), 1, 100, 0, start_sequence=100 * index)
        at(day, hour).invoke(at(day, hour).function("eventHubTrigger", "ingest"), batch)
    container.upload_blob(latest_blob_name("AAA"), BAD, overwrite=True)

    [batch] = make_batches(hour_bodies(3), 1, 100, 0, start_sequence=300)
    host = at(3, 1)
    result = host.invoke(host.function("eventHubTrigger", "ingest"), batch)

    assert result.attempts == 1
    assert [path.split("/", 1)[1].rsplit("/", 1)[0] for path in result.blobs] == ["raw/date=2026-11-03/hour=01"]
    for symbol in SYMBOLS:
        truth = table_bars(last_bars(stored_bars(container, symbol), WINDOW))
        assert latest(container, symbol) == truth
        assert len(truth) == WINDOW and min(ts for _, ts in truth) == T0 + 60 * 30
    # minutes 35-39 were revised in the third hour: the rebuild took them from raw/, not the first version
    assert latest(container, "AAA")[("AAA", T0 + 60 * 35)][3] == 135.25
    [quarantine] = list(container.list_blobs(name_starts_with=f"{QUARANTINE_PREFIX}AAA/"))
    assert container.download_blob(quarantine.name).readall() == BAD


class _FailLatest:
    """Fail every PUT of one symbol's latest blob, as a storage fault on that blob would."""

    def __init__(self, symbol: str) -> None:
        self.marker, self.failed = f"/{latest_blob_name(symbol)}", 0

    def __call__(self, request) -> None:
        if request.http_request.method == "PUT" and self.marker in request.http_request.url:
            self.failed += 1
            raise ServiceRequestError("injected storage outage")


def test_failing_symbol_fails_the_batch_after_updating_the_others(container, runtime, monkeypatch):
    """BBB's latest blob failing: AAA and CCC still update, and neither raw/ nor deadletter/ is written."""
    hook = _FailLatest("BBB")
    client = BlobServiceClient.from_connection_string(
        runtime.azurite.connection_string, raw_request_hook=hook, retry_total=0
    )
    monkeypatch.setattr(
        functions.ingest.blueprint, "bars_container", lambda s: client.get_container_client(s.bars_container)
    )
    [batch] = make_batches([*hour_bodies(0), b"{not json"], 1, 100, 0)
    host = at(3, 0)
    with pytest.raises(LatestUpdateError, match="BBB"):
        host.invoke(host.function("eventHubTrigger", "ingest"), batch)
    assert hook.failed == 3  # one per attempt: the host retried the whole batch
    for symbol in ("AAA", "CCC"):
        assert sorted(latest(container, symbol)) == [(symbol, T0 + 60 * i) for i in range(20)]
    # BBB's marker was written before its blob failed: a later read of BBB rebuilds from raw/ (none yet)
    assert [b.name for b in container.list_blobs()] == [
        latest_blob_name("AAA"),
        latest_blob_name("CCC"),
        *(symbol_marker_name(s) for s in ("AAA", "BBB", "CCC")),
    ]
