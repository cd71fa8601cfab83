"""Replay through the registered ingest function into real Azurite: lossless and idempotent."""

from __future__ import annotations

import base64

import orjson
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient

import devhost.app.host
import functions.ingest.blueprint
from devhost.__main__ import main
from devhost.app.host import Host
from devhost.kafka.replay import make_batches, replay
from devhost.market.feed import FeedConfig, generate
from devhost.storage.store import dead_letters, stored_bars
from functions.shared.bars import from_parquet
from functions.shared.latest import latest_blob_name, symbol_marker_name
from tests.factories import oracle, table_bars

pytestmark = pytest.mark.integration

CFG = FeedConfig(symbols=("AAA", "BBB", "CCC", "DDD", "EEE"), days=1, sync_every=45, bad_events=6)
BODIES = list(generate(CFG))
TRUTH = oracle(BODIES)


def run(bodies, batch_size=16, seed=1):
    return replay(Host(retry_wait_cap=0.01), make_batches(bodies, 3, batch_size, seed))


def raw_rows(container) -> int:
    return sum(from_parquet(container.download_blob(b.name).readall()).num_rows for b in container.list_blobs("raw/"))


def test_replay_stores_exactly_the_true_bars(container):
    """After replay, storage holds the oracle's true bars and every malformed event is dead-lettered."""
    stats = run(BODIES)
    assert stats.events == len(BODIES)
    assert table_bars(stored_bars(container)) == TRUTH
    letters = dead_letters(container)
    assert letters.by_reason() == {
        "invalid_bars": 1,
        "invalid_json": 1,
        "invalid_symbol": 1,
        "invalid_utf8": 1,
        "yahoo_error": 1,
    }
    names = [b.name for b in container.list_blobs()]
    assert all(n.startswith(("raw/date=", "deadletter/date=", "latest/", "symbols/")) for n in names)
    assert {n for n in names if n.startswith("latest/")} == {latest_blob_name(s) for s in CFG.symbols}
    assert {n for n in names if n.startswith("symbols/")} == {symbol_marker_name(s) for s in CFG.symbols}


def test_replaying_twice_changes_nothing(container):
    """A second replay of the same file leaves the true bars and dead-letter counts unchanged."""
    run(BODIES)
    first_bars, first_letters = table_bars(stored_bars(container)), dead_letters(container).by_reason()
    run(BODIES, batch_size=7, seed=2)
    assert table_bars(stored_bars(container)) == first_bars == TRUTH
    assert dead_letters(container).by_reason() == first_letters


def test_dead_letter_keeps_original_body_reason_and_lineage(container):
    """The non-UTF-8 event is stored base64 with its reason, partition and sequence number."""
    run(BODIES)
    [record] = [r for r in dead_letters(container).records if r["reason"] == "invalid_utf8"]
    original = base64.b64decode(record["body"])
    assert record["body_encoding"] == "base64" and original in BODIES
    assert record["partition"] in {"0", "1", "2"} and isinstance(record["sequence_number"], int)
    [bars_record] = [r for r in dead_letters(container).records if r["reason"] == "invalid_bars"]
    assert bars_record["rejected"][0]["reason"] == "inconsistent_ohlc"
    assert orjson.loads(bars_record["body"])["_airbyte_stream"] == "price"


class _Outage:
    """Fail chosen PUTs once each with a transport error, as a storage outage would."""

    def __init__(self, marker: str, fail_on: set[int]) -> None:
        self.marker, self.fail_on, self.seen, self.failed = marker, fail_on, 0, 0

    def __call__(self, request) -> None:
        if request.http_request.method == "PUT" and self.marker in request.http_request.url:
            self.seen += 1
            if self.seen in self.fail_on:
                self.failed += 1
                raise ServiceRequestError("injected storage outage")


def test_storage_failure_mid_batch_then_retry_loses_nothing(container, runtime, monkeypatch):
    """latest/ and raw/ writes failing mid-batch are retried: no loss, no duplicate."""
    latest_outage, raw_outage = _Outage("/latest/", {3}), _Outage("/raw/", {1})

    def client(hook):
        return BlobServiceClient.from_connection_string(
            runtime.azurite.connection_string, raw_request_hook=hook, retry_total=0
        )

    monkeypatch.setattr(
        functions.ingest.blueprint,
        "bars_container",
        lambda s: client(latest_outage).get_container_client(s.bars_container),
    )
    monkeypatch.setattr(devhost.app.host, "_blob_service", lambda cs: client(raw_outage))
    good = [b for b in BODIES if b'_airbyte_stream":"price' in b][:60]
    stats = replay(Host(retry_wait_cap=0.01), make_batches(good, 1, 60, 0))
    assert (latest_outage.failed, raw_outage.failed) == (1, 1)
    assert (stats.batches, stats.attempts) == (1, 3)
    truth = oracle(good)
    stored = stored_bars(container)
    assert table_bars(stored) == truth
    assert raw_rows(container) == len(truth)  # one raw blob: the failed attempts wrote none
    for symbol in CFG.symbols:
        latest = from_parquet(container.download_blob(latest_blob_name(symbol)).readall())
        assert table_bars(latest) == {k: v for k, v in truth.items() if k[0] == symbol}


def test_cli_feed_replay_bars_roundtrip(container, tmp_path, capsys):
    """`devhost feed`, `replay` and `bars --out` exit 0 and export exactly the true bars."""
    feed = tmp_path / "feed.jsonl"
    assert main(["feed", "--symbols", "AAA,BBB", "--days", "1", "--bad-events", "3", "--out", str(feed)]) == 0
    assert main(["replay", str(feed), "--batch-size", "20"]) == 0
    out = tmp_path / "bars.parquet"
    assert main(["bars", "--out", str(out)]) == 0
    import pyarrow.parquet as pq

    bodies = feed.read_bytes().splitlines()
    assert table_bars(pq.read_table(out)) == oracle(bodies)
    printed = " ".join(capsys.readouterr().out.split())
    assert f"bars stored: {len(oracle(bodies))}" in printed
    assert "dead-lettered events: 3" in printed
