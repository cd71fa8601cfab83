"""The forecast stream offline: bar message published → forecast message readable on ``stock_forecasts``.

Set-up (not timed): a temporary home with its own Azurite and Tansu broker (topic ``stock_bars``,
4 partitions), a small model trained on the simulated feed and served by azmlinfsrv, and both
Event Hubs functions consuming through the trigger emulation, each on its own consumer group and
with host.json's batching: ``forecast_stream`` in this process, ``ingest`` in a process of its own
(in Azure, Flex Consumption scales each Event Hubs function on instances of its own); the stream's
own Kafka producer (``functions/forecast/producer.py``) writes its forecasts to the broker.

Measured: 50 symbols, one market minute per ``1 / MINUTES_PER_S`` seconds, each minute's 50 sync
messages (the day so far, as Airbyte sends it) published evenly spread, at a steady rate. Each
message's latency is the time its forecast (key ``symbol|as_of|version``, as_of the message's
newest bar) was read by a consumer of ``stock_forecasts`` minus the time it was handed to the
producer. ``missing``: messages whose bar got no forecast; ``duplicates``: forecast messages
read more than once for one key.

Prints the figures, then one JSON object as the last line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

if TYPE_CHECKING:
    from devhost.kafka.broker import Broker
    from devhost.kafka.publish import Producer
    from devhost.market.feed import Day, Market
    from functions.settings import Settings

SYMBOLS = tuple(f"S{i:02d}" for i in range(50))
FIRST_MINUTE = 70  # the first message carries 70 bars: more than the 60 the benchmark model needs
MINUTES = 40  # market minutes published (one message per symbol each)
MINUTES_PER_S = 1.0  # market minutes per wall second: 50 messages/s
DRAIN_S = 30.0  # how long forecasts may still arrive after the last message


def _epoch(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


class _Reads:
    """When each forecast was read from ``stock_forecasts`` (ms), by (symbol, as_of): one time per copy read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[tuple[str, int], list[float]] = {}

    def collect(self, bootstrap: str, topic: str, stop: threading.Event) -> None:
        """Follow ``topic`` until ``stop``, stamping each forecast with the time it was read."""
        from devhost.kafka.forecast_stream import read

        for doc in read(bootstrap, topic, stop, follow=True):
            now = time.time() * 1000
            with self.lock:
                self.at.setdefault((doc["symbol"], _epoch(doc["as_of"])), []).append(now)

    def count_at(self, ts: int) -> int:
        """How many forecasts for the minute ``ts`` (of any symbol) were read."""
        with self.lock:
            return sum(1 for (_, at) in self.at if at == ts)

    def have_all(self, keys: Iterable[tuple[str, int]]) -> bool:
        """Whether a forecast was read for every one of ``keys``."""
        with self.lock:
            return all(key in self.at for key in keys)


def _serve_model(home: Path, settings: Settings) -> subprocess.Popen:
    """A small model trained on the simulated feed, served by azmlinfsrv on the scoring port."""
    from common import save_pyfunc, train_small  # benchmarks/common.py, beside this script

    from devhost.market.feed import FeedConfig, write_bars
    from devhost.serving.local_rollout import start_scoring_server
    from training_job.config import TrainConfig

    cfg = TrainConfig(epochs=1, units=8, window=20, seeds=1, batch_size=256, min_windows_per_symbol=100, patience=1)
    write_bars(FeedConfig(symbols=SYMBOLS[:5], days=2, seed=9), home / "bars")
    model_dir = save_pyfunc(train_small(home / "bars", cfg), cfg, home)
    return start_scoring_server(
        model_dir, settings.scoring_port, "bench", "1", home / "score.log", settings.scoring_workers
    )


# ingest's trigger in a process of its own: in Azure (Flex Consumption) every Event Hubs function
# scales on instances of its own, so ingest's work never shares a Python interpreter with the stream's
INGEST = """
import signal, sys, threading
from pathlib import Path
from devhost.app.host import Host
from devhost.app.runtime import prepare
from devhost.kafka import broker as kafka
from devhost.kafka.trigger import KafkaTrigger
runtime = prepare()
broker = kafka.running(runtime.home)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
trigger = KafkaTrigger(Host(), broker.bootstrap, broker.topic, broker.group, owner_lock=kafka.owner_lock(runtime.home))
print("READY", flush=True)
trigger.run(stop)
"""


def _start_triggers(home: Path, broker: Broker, stop: threading.Event) -> tuple[list[threading.Thread], Any]:
    """``forecast_stream`` consuming in this process until ``stop``, and ``ingest`` in a process of its own."""
    from devhost.app.host import Host
    from devhost.kafka.forecast_stream import forecast_trigger

    ingest = subprocess.Popen([sys.executable, "-c", INGEST], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert ingest.stdout is not None and ingest.stdout.readline().strip() == "READY"
    forecasts = forecast_trigger(Host(), home, broker.bootstrap)
    threads = [threading.Thread(target=forecasts.run, args=(stop,), daemon=True)]
    for thread in threads:
        thread.start()
    return threads, ingest


def _symbol(message: dict) -> str:
    """The symbol of a sync message."""
    return message["_airbyte_data"]["chart"]["result"][0]["meta"]["symbol"]


def _warm_up(producer: Producer, topic: str, market: Market, day: Day, reads: _Reads) -> None:
    """One minute published and its forecasts awaited (not timed): connections, the model and the caches warm."""
    warm = FIRST_MINUTE - 1
    for message in market.sync(day, warm):
        producer.produce(topic, orjson.dumps(message), key=_symbol(message))
    producer.flush(10)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if reads.count_at(int(day.paths[SYMBOLS[0]].ts[warm])) >= len(SYMBOLS):
            break
        time.sleep(0.1)


def _publish_steady(
    producer: Producer, topic: str, market: Market, day: Day
) -> tuple[dict[tuple[str, int], float], int, float]:
    """The measured minutes' messages, evenly spread: (produce time in ms by (symbol, bar), messages, seconds)."""
    produced: dict[tuple[str, int], float] = {}
    gap = 1.0 / (MINUTES_PER_S * len(SYMBOLS))
    started = time.monotonic()
    sent = 0
    for k in range(FIRST_MINUTE, FIRST_MINUTE + MINUTES):
        for message in market.sync(day, k):
            symbol = _symbol(message)
            wait = started + sent * gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            produced[(symbol, int(day.paths[symbol].ts[k]))] = time.time() * 1000
            producer.produce(topic, orjson.dumps(message), key=symbol)
            producer.poll(0)
            sent += 1
    producer.flush(10)
    return produced, sent, time.monotonic() - started


def _publish(broker: Broker, reads: _Reads) -> tuple[dict[tuple[str, int], float], int, float]:
    """Publish the warm-up minute, then the measured ones at a steady rate (see :func:`_publish_steady`)."""
    from devhost.kafka.publish import kafka_producer, producer_config
    from devhost.market.feed import SESSION_MINUTES, Market, trading_days

    market = Market(SYMBOLS, seed=5, null_rate=0.0)  # no empty minute: every bar is forecast
    day = market.simulate(trading_days(dt.date(2026, 11, 2), 1)[0])  # a Monday in the past
    assert FIRST_MINUTE + MINUTES + 1 < SESSION_MINUTES  # every target minute is in the session
    producer = kafka_producer({**producer_config(broker.bootstrap, "PLAINTEXT"), "linger.ms": 0})
    _warm_up(producer, broker.topic, market, day, reads)
    return _publish_steady(producer, broker.topic, market, day)


def _drain(reads: _Reads, produced: Iterable[tuple[str, int]]) -> None:
    """Wait until every message's forecast is read (``DRAIN_S`` at most), then a second more."""
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        if reads.have_all(produced):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # late duplicates, if any


def _report(reads: _Reads, produced: dict[tuple[str, int], float], sent: int, publish_s: float) -> None:
    """Print the latency figures, then the JSON line."""
    with reads.lock:
        lags = np.array([reads.at[key][0] - at for key, at in produced.items() if key in reads.at])
        missing = sum(1 for key in produced if key not in reads.at)
        duplicates = sum(len(v) - 1 for v in reads.at.values())
        total = sum(len(v) for v in reads.at.values())
    p50, p99 = float(np.percentile(lags, 50)), float(np.percentile(lags, 99))
    print(
        f"{sent} bar messages ({len(SYMBOLS)} symbols x {MINUTES} minutes) in {publish_s:.1f}s "
        f"({sent / publish_s:.0f}/s): forecast readable after p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"max {lags.max():.0f} ms; missing {missing}, duplicates {duplicates}"
    )
    print(
        json.dumps(
            {
                "bar_to_forecast_p50_ms": round(p50, 1),
                "bar_to_forecast_p99_ms": round(p99, 1),
                "forecasts": len(lags),
                "missing": missing,
                "duplicates": duplicates,
                "forecast_messages_read": total,
                "bars_published": sent,
                "rate_messages_per_s": round(sent / publish_s, 1),
                "symbols": len(SYMBOLS),
            }
        )
    )


def main() -> None:
    """Train, serve, run both triggers, publish at a steady rate and print the figures."""
    home = Path(tempfile.mkdtemp(prefix="stockcast-bench-stream-"))
    from devhost.shared.processes import free_port, stop_group

    os.environ.update({"STOCKCAST_HOME": str(home), "STOCKCAST_AZURITE_PORT": "0", "SCORING_PORT": str(free_port())})
    from devhost.app.runtime import prepare
    from devhost.kafka import broker as kafka
    from devhost.serving.local_rollout import wait_healthy
    from devhost.storage import azurite
    from functions.predict.live import close_workers
    from functions.settings import get_settings

    runtime = prepare()
    settings = get_settings()
    scorer = _serve_model(home, settings)
    broker = kafka.ensure(home, settings.bars_eventhub_name, settings.bars_consumer_group)
    stop, reader_stop = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    ingest = None
    try:
        wait_healthy(settings.scoring_port, scorer)
        threads, ingest = _start_triggers(home, broker, stop)
        reads = _Reads()
        reader_args = (broker.bootstrap, settings.forecasts_eventhub_name, reader_stop)
        threading.Thread(target=reads.collect, args=reader_args, daemon=True).start()
        kafka.ensure_topic(broker.bootstrap, settings.forecasts_eventhub_name)
        produced, sent, publish_s = _publish(broker, reads)
        _drain(reads, produced)
        _report(reads, produced, sent, publish_s)
    finally:
        reader_stop.set()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        if ingest is not None:
            ingest.terminate()
            ingest.wait(timeout=60)
        stop_group(scorer.pid)
        close_workers()  # the ledger's last flush, while Azurite still runs
        kafka.stop(home)
        azurite.stop(runtime.home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
