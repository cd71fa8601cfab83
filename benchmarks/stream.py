"""The forecast stream offline: bar message published → forecast message readable on ``stock_forecasts``.

Set-up (not timed): a temporary home with its own Azurite and Tansu broker (topic ``stock_bars``,
4 partitions), a small model trained on the simulated feed and served by azmlinfsrv, and both
Event Hubs functions consuming in this process through the trigger emulation, each on its own
consumer group: ``ingest`` and ``forecast_stream``, both with host.json's batching; the stream's
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
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

SYMBOLS = tuple(f"S{i:02d}" for i in range(50))
FIRST_MINUTE = 70  # the first message carries 70 bars: more than the 60 the benchmark model needs
MINUTES = 40  # market minutes published (one message per symbol each)
MINUTES_PER_S = 1.0  # market minutes per wall second: 50 messages/s
DRAIN_S = 30.0  # how long forecasts may still arrive after the last message


def _epoch(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def main() -> None:
    """Train, serve, run both triggers, publish at a steady rate and print the figures."""
    home = Path(tempfile.mkdtemp(prefix="stockcast-bench-stream-"))
    from devhost.processes import free_port, stop_group

    os.environ.update({"STOCKCAST_HOME": str(home), "STOCKCAST_AZURITE_PORT": "0", "SCORING_PORT": str(free_port())})
    from common import save_pyfunc, train_small  # benchmarks/common.py, beside this script

    from devhost import azurite, kafka
    from devhost.feed import SESSION_MINUTES, FeedConfig, Market, trading_days, write_bars
    from devhost.forecast_stream import forecast_trigger, read
    from devhost.host import Host
    from devhost.kafka_trigger import KafkaTrigger
    from devhost.local_rollout import start_scoring_server, wait_healthy
    from devhost.publish import kafka_producer, producer_config
    from devhost.runtime import prepare
    from functions.predict.live import close_workers
    from functions.settings import get_settings
    from training_job.config import TrainConfig

    runtime = prepare()
    settings = get_settings()
    cfg = TrainConfig(epochs=1, units=8, window=20, seeds=1, batch_size=256, min_windows_per_symbol=100, patience=1)
    write_bars(FeedConfig(symbols=SYMBOLS[:5], days=2, seed=9), home / "bars")
    model_dir = save_pyfunc(train_small(home / "bars", cfg), cfg, home)
    scorer = start_scoring_server(
        model_dir, settings.scoring_port, "bench", "1", home / "score.log", settings.scoring_workers
    )
    broker = kafka.ensure(home, settings.bars_eventhub_name, settings.bars_consumer_group)
    stop, reader_stop = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        wait_healthy(settings.scoring_port, scorer)
        host = Host()
        ingest = KafkaTrigger(host, broker.bootstrap, broker.topic, broker.group, owner_lock=kafka.owner_lock(home))
        forecasts = forecast_trigger(host, home, broker.bootstrap)
        threads = [threading.Thread(target=t.run, args=(stop,), daemon=True) for t in (ingest, forecasts)]
        for thread in threads:
            thread.start()
        read_at: dict[tuple[str, int], list[float]] = {}
        lock = threading.Lock()

        def collect() -> None:
            for doc in read(broker.bootstrap, settings.forecasts_eventhub_name, reader_stop, follow=True):
                now = time.time() * 1000
                with lock:
                    read_at.setdefault((doc["symbol"], _epoch(doc["as_of"])), []).append(now)

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        kafka.ensure_topic(broker.bootstrap, settings.forecasts_eventhub_name)

        market = Market(SYMBOLS, seed=5, null_rate=0.0)  # no empty minute: every bar is forecast
        day = market.simulate(trading_days(dt.date(2026, 11, 2), 1)[0])  # a Monday in the past
        assert FIRST_MINUTE + MINUTES + 1 < SESSION_MINUTES  # every target minute is in the session
        producer = kafka_producer({**producer_config(broker.bootstrap, "PLAINTEXT"), "linger.ms": 0})
        produced: dict[tuple[str, int], float] = {}
        # warm-up (not timed): one minute, so that connections, the model and the caches are warm
        warm = FIRST_MINUTE - 1
        for message in market.sync(day, warm):
            producer.produce(
                broker.topic,
                orjson.dumps(message),
                key=message["_airbyte_data"]["chart"]["result"][0]["meta"]["symbol"],
            )
        producer.flush(10)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with lock:
                if sum(1 for (_, ts) in read_at if ts == int(day.paths[SYMBOLS[0]].ts[warm])) >= len(SYMBOLS):
                    break
            time.sleep(0.1)
        gap = 1.0 / (MINUTES_PER_S * len(SYMBOLS))
        started = time.monotonic()
        sent = 0
        for k in range(FIRST_MINUTE, FIRST_MINUTE + MINUTES):
            for message in market.sync(day, k):
                symbol = message["_airbyte_data"]["chart"]["result"][0]["meta"]["symbol"]
                wait = started + sent * gap - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                produced[(symbol, int(day.paths[symbol].ts[k]))] = time.time() * 1000
                producer.produce(broker.topic, orjson.dumps(message), key=symbol)
                producer.poll(0)
                sent += 1
        producer.flush(10)
        publish_s = time.monotonic() - started
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            with lock:
                if all(key in read_at for key in produced):
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates, if any
        with lock:
            lags = np.array([read_at[key][0] - at for key, at in produced.items() if key in read_at])
            missing = sum(1 for key in produced if key not in read_at)
            duplicates = sum(len(v) - 1 for v in read_at.values())
            total = sum(len(v) for v in read_at.values())
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
    finally:
        reader_stop.set()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        stop_group(scorer.pid)
        close_workers()  # the ledger's last flush, while Azurite still runs
        kafka.stop(home)
        azurite.stop(runtime.home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
