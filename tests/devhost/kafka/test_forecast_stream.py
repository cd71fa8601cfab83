"""The forecast stream offline: bars published to the real broker become forecasts on ``stock_forecasts``.

Ingest and the forecast function run on their own consumer groups of the bars topic (the trigger
emulation, in this process), with the session's Azurite and the trained champion behind azmlinfsrv.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import orjson
import pyarrow.parquet as pq
import pytest

from devhost.app.host import Host
from devhost.kafka import broker as kafka
from devhost.kafka.forecast_stream import forecast_trigger, read
from devhost.kafka.publish import publish_local
from devhost.kafka.trigger import KafkaTrigger
from devhost.market.feed import FeedConfig, generate
from functions.predict.client import scoring_client
from functions.predict.live import ledger_worker
from functions.settings import get_settings
from functions.shared.ledger import SERVED_PREFIX

SYMBOLS = ("AAA", "BBB")
ROUNDS = 4  # syncs published, one at a time
WAIT_S = 30.0


def _bars(body: bytes) -> list[dict]:
    """The bars of one Airbyte message as scoring records (the forming minute included, as ingest stores it)."""
    result = orjson.loads(body)["_airbyte_data"]["chart"]["result"][0]
    symbol, quote = result["meta"]["symbol"], result["indicators"]["quote"][0]
    rows = []
    for i, ts in enumerate(result["timestamp"]):
        values = {k: quote[k][i] for k in ("open", "high", "low", "close", "volume")}
        if any(v is None for v in values.values()):
            continue  # a minute without trades is no bar
        rows.append({"symbol": symbol, "ts": int(ts), **values})
    return rows


@pytest.fixture
def stream(runtime, champion_server) -> Iterator[tuple[kafka.Broker, threading.Event]]:
    """The home's broker with ingest's and the forecast function's triggers consuming, until the test ends."""
    settings = get_settings()
    broker = kafka.ensure(runtime.home, settings.bars_eventhub_name, settings.bars_consumer_group)
    host = Host()
    stop = threading.Event()
    ingest = KafkaTrigger(host, broker.bootstrap, broker.topic, broker.group, owner_lock=kafka.owner_lock(runtime.home))
    forecasts = forecast_trigger(host, runtime.home, broker.bootstrap)
    threads = [threading.Thread(target=t.run, args=(stop,), daemon=True) for t in (ingest, forecasts)]
    for thread in threads:
        thread.start()
    try:
        yield broker, stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        kafka.stop(runtime.home)


@pytest.mark.integration
def test_published_bars_yield_keyed_forecasts(stream, champion_server):
    """Each sync's newest bar per symbol yields one forecast, keyed by symbol, valued as the endpoint scores it."""
    broker, _ = stream
    settings = get_settings()
    start = dt.date(2026, 11, 2)  # a Monday, in the past: in session from 09:30 New York
    bodies = list(generate(FeedConfig(symbols=SYMBOLS, days=1, seed=11, start=start, null_rate=0.0)))
    client = scoring_client(settings)
    needed = client.bars_needed("test-stream")
    # the first syncs (15, 30 bars) are too short for the model: the rounds start once a window fills
    syncs = [bodies[i : i + len(SYMBOLS)] for i in range(0, len(bodies), len(SYMBOLS))]
    rounds = [sync for sync in syncs if min(len(_bars(b)) for b in sync) >= needed][:ROUNDS]
    assert len(rounds) == ROUNDS
    received: list[dict] = []
    reader_stop = threading.Event()

    def collect() -> None:
        received.extend(read(broker.bootstrap, settings.forecasts_eventhub_name, reader_stop, follow=True))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    expected: dict[str, dict] = {}
    try:
        for messages in rounds:
            publish_local(broker.bootstrap, broker.topic, messages)
            for body in messages:
                bars = _bars(body)
                scored, _ = client.score(bars[-needed:], "test-stream-expected")
                [row] = scored["forecasts"]
                version = str(scored["model"]["version"])
                expected[f"{row['symbol']}|{row['as_of']}|{version}"] = row
            deadline = time.monotonic() + WAIT_S
            while {m["key"] for m in received} < set(expected) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        reader_stop.set()
        reader.join(timeout=10)
    by_key = {m["key"]: m for m in received}
    assert sorted(by_key) == sorted(expected), "one forecast per symbol and sync, none missing, none extra"
    assert len(received) == len(by_key), "no duplicates"
    for key, message in by_key.items():
        row = expected[key]
        assert message["_kafka"]["key"] == message["symbol"] == row["symbol"]
        assert (message["as_of"], message["target_ts"]) == (row["as_of"], row["target_ts"])
        assert message["forecast"] == pytest.approx(row["predicted_close"], rel=1e-9)
        assert message["version"] == key.rsplit("|", 1)[1] and message["kind"]
        assert message["interval"] is None or message["interval"]["low"] <= message["interval"]["high"]
    # the stream's forecasts feed the live skill ledger, labelled "stream"
    ledger_worker(settings).flush()
    sources = set()
    for blob in stream_container_blobs():
        sources.update(pq.read_table(blob).column("source").to_pylist())
    assert "stream" in sources


def stream_container_blobs() -> Iterator:
    """The ledger's served blobs in the bars container, as readable files."""
    import io

    from functions.shared.storage import bars_container

    container = bars_container(get_settings())
    for item in container.list_blobs(name_starts_with=SERVED_PREFIX):
        yield io.BytesIO(container.download_blob(item.name).readall())
