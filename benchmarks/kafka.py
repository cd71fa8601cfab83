"""The Kafka path offline, sustained: broker → Event Hubs trigger emulation → ingest function → Azurite.

Set-up (not timed): a temporary home with its own Azurite and Tansu broker (topic ``stock_bars``,
4 partitions), and the trigger consuming in consumer group ``ingest`` with host.json's batching
(``maxEventBatchSize`` 256, no ``minEventBatchSize``: a batch is whatever has arrived).

1. **Throughput**: a generated feed (5 symbols, every sync re-sends the day so far, so a message
   carries up to 390 bars) is published as fast as the broker acknowledges while the trigger
   consumes; ``bars_per_s`` is the bars the function received over the time from the first
   produce to the completion of the invocation that stored the last message.
2. **Lag**: messages published at a steady rate (half the measured capacity, at most 200/s); each
   message's lag is the completion time of the invocation that stored it minus its produce time
   (the record's timestamp, which the producer stamps). Reported as p50/p99, then again with
   batch filling (``minEventBatchSize`` 32, ``maxWaitTime`` 5 s) to show what host.json would cost
   in latency if it filled batches (docs/design.md, forecast stream: why it does not).

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

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from devhost import azurite, kafka  # noqa: E402
from devhost.feed import FeedConfig, generate  # noqa: E402
from devhost.host import Host  # noqa: E402
from devhost.kafka import Broker  # noqa: E402
from devhost.kafka_trigger import BatchDone, KafkaTrigger, TriggerOptions  # noqa: E402
from devhost.publish import producer_config, publish, publish_local  # noqa: E402

SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG")
THROUGHPUT_DAYS = 30
LAG_SECONDS = 20.0


def _bars(body: bytes) -> int:
    """Bars a message carries (minutes in its chart result)."""
    doc = orjson.loads(body)
    return sum(len(r.get("timestamp") or []) for r in doc["_airbyte_data"]["chart"]["result"])


class Recorder:
    """Collects what the trigger reports: per message, its produce time and its invocation's completion."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pairs: list[tuple[int, float]] = []  # (produced ms, finished s)
        self.batches = 0

    def __call__(self, done: BatchDone) -> None:
        """Record one stored batch (the trigger's ``on_batch``)."""
        with self.lock:
            self.batches += 1
            self.pairs.extend((ts, done.finished) for ts in done.batch.timestamps_ms)

    def since(self, start_ms: int) -> list[float]:
        """Lags (ms) of the messages produced at or after ``start_ms``."""
        with self.lock:
            return [finished * 1000 - ts for ts, finished in self.pairs if ts >= start_ms]


def _run_trigger(
    host: Host, home: Path, broker: Broker, recorder: Recorder, **overrides: float
) -> tuple[KafkaTrigger, threading.Event, threading.Thread]:
    """Start a trigger in a thread, with host.json's options and ``overrides``."""
    options = TriggerOptions.from_host_json(**overrides)
    owner = kafka.owner_lock(home)
    trigger = KafkaTrigger(host, broker.bootstrap, broker.topic, broker.group, options, recorder, owner_lock=owner)
    stop = threading.Event()
    thread = threading.Thread(target=trigger.run, args=(stop,), daemon=True)
    thread.start()
    return trigger, stop, thread


def _steady(broker: Broker, bodies: list[bytes], rate: float, recorder: Recorder, trigger: KafkaTrigger) -> list[float]:
    """Publish ``bodies`` at ``rate`` per second, wait until they are checkpointed; return their lags (ms)."""
    start_ms = int(time.time() * 1000)
    result = publish(bodies, broker.topic, producer_config(broker.bootstrap, "PLAINTEXT"), rate=rate)
    assert result.ok, result.errors
    assert trigger.wait_for(result.ends, timeout=300)
    return recorder.since(start_ms)


def main() -> None:
    """Run both phases in a temporary home and print the figures."""
    home = Path(tempfile.mkdtemp(prefix="stockcast-bench-kafka-"))
    os.environ.update({"STOCKCAST_HOME": str(home), "STOCKCAST_AZURITE_PORT": "0"})
    from devhost.runtime import prepare  # the app settings are read from here on
    from functions.settings import get_settings

    runtime = prepare()
    settings = get_settings()
    broker = kafka.ensure(home, settings.bars_eventhub_name, settings.bars_consumer_group)
    host = Host()
    try:
        # in the past: ingest dead-letters events emitted more than a day ahead of the clock
        start = dt.date.today() - dt.timedelta(days=2 * THROUGHPUT_DAYS)
        bodies = list(generate(FeedConfig(symbols=SYMBOLS, days=THROUGHPUT_DAYS, seed=3, start=start)))
        bars = sum(_bars(b) for b in bodies)
        recorder = Recorder()
        trigger, stop, thread = _run_trigger(host, home, broker, recorder)
        warm = publish_local(broker.bootstrap, broker.topic, bodies[:5]).ends  # connect and warm up: not timed
        assert trigger.wait_for(warm, timeout=60)
        started = time.perf_counter()
        wall_start = time.time()
        ends = publish_local(broker.bootstrap, broker.topic, bodies[5:]).ends
        assert trigger.wait_for(ends, timeout=600)
        finished = max(f for _, f in recorder.pairs)
        elapsed = finished - wall_start
        measured_bars = bars - sum(_bars(b) for b in bodies[:5])
        bars_per_s = measured_bars / elapsed
        messages_per_s = (len(bodies) - 5) / elapsed
        print(
            f"throughput: {len(bodies) - 5} messages ({measured_bars} bars) in {elapsed:.2f}s "
            f"(wall {time.perf_counter() - started:.2f}s): {messages_per_s:.0f} messages/s, "
            f"{bars_per_s / 1000:.0f} k bars/s, {recorder.batches} batches"
        )

        rate = min(200.0, messages_per_s / 2)
        count = int(rate * LAG_SECONDS)
        steady = [bodies[i % len(bodies)] for i in range(count)]
        lags = np.array(_steady(broker, steady, rate, recorder, trigger))
        p50, p99 = float(np.percentile(lags, 50)), float(np.percentile(lags, 99))
        print(
            f"lag at {rate:.0f} messages/s (host.json: batches of what has arrived, up to 256): "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(lags)} messages"
        )
        stop.set()
        thread.join(timeout=30)

        trigger, stop, thread = _run_trigger(host, home, broker, recorder, min_batch=32, max_wait_s=5.0)
        filling = np.array(_steady(broker, steady[: count // 2], rate, recorder, trigger))
        f50, f99 = float(np.percentile(filling, 50)), float(np.percentile(filling, 99))
        print(
            f"lag at {rate:.0f} messages/s filling batches (minEventBatchSize 32, maxWaitTime 5 s): "
            f"p50 {f50:.0f} ms, p99 {f99:.0f} ms"
        )
        stop.set()
        thread.join(timeout=30)
        lag = kafka.lag(broker.bootstrap, broker.topic, broker.group).total
        print(f"consumer group lag at the end: {lag}")
        print(
            json.dumps(
                {
                    "bars_per_s": round(bars_per_s),
                    "messages_per_s": round(messages_per_s, 1),
                    "lag_p50_ms": round(p50, 1),
                    "lag_p99_ms": round(p99, 1),
                    "rate_messages_per_s": round(rate, 1),
                    "lag_p50_ms_filling_batches": round(f50, 1),
                    "lag_p99_ms_filling_batches": round(f99, 1),
                    "messages": len(bodies) - 5,
                    "bars": measured_bars,
                    "final_lag": lag,
                }
            )
        )
    finally:
        kafka.stop(home)
        azurite.stop(runtime.home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
