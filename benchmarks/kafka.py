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
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from devhost.app.host import Host  # noqa: E402
from devhost.kafka import broker as kafka  # noqa: E402
from devhost.kafka.broker import Broker  # noqa: E402
from devhost.kafka.publish import producer_config, publish, publish_local  # noqa: E402
from devhost.kafka.trigger import BatchDone, KafkaTrigger, TriggerOptions  # noqa: E402
from devhost.market.feed import FeedConfig, generate  # noqa: E402
from devhost.storage import azurite  # noqa: E402

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


class _Throughput(NamedTuple):
    """What the throughput phase measured."""

    messages: int
    bars: int
    elapsed: float  # seconds from the first produce to the completion of the invocation that stored the last

    @property
    def bars_per_s(self) -> float:
        """Bars the function received per second."""
        return self.bars / self.elapsed

    @property
    def messages_per_s(self) -> float:
        """Messages stored per second."""
        return self.messages / self.elapsed


class _Lag(NamedTuple):
    """Percentiles of the lags of one steady phase (ms), and how many messages they are of."""

    p50: float
    p99: float
    n: int


def _feed() -> list[bytes]:
    """The throughput phase's messages: every sync of ``THROUGHPUT_DAYS`` days, each re-sending the day so far."""
    # in the past: ingest dead-letters events emitted more than a day ahead of the clock
    start = dt.date.today() - dt.timedelta(days=2 * THROUGHPUT_DAYS)
    return list(generate(FeedConfig(symbols=SYMBOLS, days=THROUGHPUT_DAYS, seed=3, start=start)))


def _throughput(broker: Broker, trigger: KafkaTrigger, recorder: Recorder, bodies: list[bytes]) -> _Throughput:
    """Publish ``bodies`` as fast as the broker acknowledges, wait until all are stored, and print the rate."""
    warm = publish_local(broker.bootstrap, broker.topic, bodies[:5]).ends  # connect and warm up: not timed
    assert trigger.wait_for(warm, timeout=60)
    started = time.perf_counter()
    wall_start = time.time()
    ends = publish_local(broker.bootstrap, broker.topic, bodies[5:]).ends
    assert trigger.wait_for(ends, timeout=600)
    finished = max(f for _, f in recorder.pairs)
    measured = _Throughput(len(bodies) - 5, sum(_bars(b) for b in bodies[5:]), finished - wall_start)
    print(
        f"throughput: {measured.messages} messages ({measured.bars} bars) in {measured.elapsed:.2f}s "
        f"(wall {time.perf_counter() - started:.2f}s): {measured.messages_per_s:.0f} messages/s, "
        f"{measured.bars_per_s / 1000:.0f} k bars/s, {recorder.batches} batches"
    )
    return measured


def _lag(broker: Broker, bodies: list[bytes], rate: float, recorder: Recorder, trigger: KafkaTrigger) -> _Lag:
    """The lags of ``bodies`` published at ``rate`` per second through ``trigger``."""
    lags = np.array(_steady(broker, bodies, rate, recorder, trigger))
    return _Lag(float(np.percentile(lags, 50)), float(np.percentile(lags, 99)), len(lags))


def _json_figures(throughput: _Throughput, rate: float, lag: _Lag, filling: _Lag, final_lag: int) -> dict[str, Any]:
    """The figures of the last line's JSON object, rounded."""
    return {
        "bars_per_s": round(throughput.bars_per_s),
        "messages_per_s": round(throughput.messages_per_s, 1),
        "lag_p50_ms": round(lag.p50, 1),
        "lag_p99_ms": round(lag.p99, 1),
        "rate_messages_per_s": round(rate, 1),
        "lag_p50_ms_filling_batches": round(filling.p50, 1),
        "lag_p99_ms_filling_batches": round(filling.p99, 1),
        "messages": throughput.messages,
        "bars": throughput.bars,
        "final_lag": final_lag,
    }


def main() -> None:
    """Run both phases in a temporary home and print the figures."""
    home = Path(tempfile.mkdtemp(prefix="stockcast-bench-kafka-"))
    os.environ.update({"STOCKCAST_HOME": str(home), "STOCKCAST_AZURITE_PORT": "0"})
    from devhost.app.runtime import prepare  # the app settings are read from here on
    from functions.settings import get_settings

    runtime = prepare()
    settings = get_settings()
    broker = kafka.ensure(home, settings.bars_eventhub_name, settings.bars_consumer_group)
    host = Host()
    try:
        bodies = _feed()
        recorder = Recorder()
        trigger, stop, thread = _run_trigger(host, home, broker, recorder)
        throughput = _throughput(broker, trigger, recorder, bodies)
        rate = min(200.0, throughput.messages_per_s / 2)
        count = int(rate * LAG_SECONDS)
        steady = [bodies[i % len(bodies)] for i in range(count)]
        lag = _lag(broker, steady, rate, recorder, trigger)
        print(
            f"lag at {rate:.0f} messages/s (host.json: batches of what has arrived, up to 256): "
            f"p50 {lag.p50:.0f} ms, p99 {lag.p99:.0f} ms over {lag.n} messages"
        )
        stop.set()
        thread.join(timeout=30)

        trigger, stop, thread = _run_trigger(host, home, broker, recorder, min_batch=32, max_wait_s=5.0)
        filling = _lag(broker, steady[: count // 2], rate, recorder, trigger)
        print(
            f"lag at {rate:.0f} messages/s filling batches (minEventBatchSize 32, maxWaitTime 5 s): "
            f"p50 {filling.p50:.0f} ms, p99 {filling.p99:.0f} ms"
        )
        stop.set()
        thread.join(timeout=30)
        final_lag = kafka.lag(broker.bootstrap, broker.topic, broker.group).total
        print(f"consumer group lag at the end: {final_lag}")
        print(json.dumps(_json_figures(throughput, rate, lag, filling, final_lag)))
    finally:
        kafka.stop(home)
        azurite.stop(runtime.home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
