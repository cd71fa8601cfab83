"""The forecast stream offline: the ``forecast_stream`` function on its own consumer group, its output on the broker.

:func:`start` runs a second Kafka trigger (consumer group ``FORECAST_CONSUMER_GROUP``, default
``forecast``) on the bars topic and points the function's own Kafka producer
(``functions/forecast/producer.py``, PLAINTEXT here, OAUTHBEARER in Azure) at the same broker: each
invocation's forecasts are produced to the topic ``FORECASTS_EVENTHUB_NAME`` (default
``stock_forecasts``), keyed by symbol, and acknowledged before the invocation returns, so the
trigger's checkpoint comes after the forecasts are on the broker (at least once; the key
``symbol|as_of|version`` in each message deduplicates). The function writes nothing to Azurite
(its ledger records are flushed by their own thread), so its checkpoints wait for no Azurite save.

``devhost forecasts [--follow]`` prints the stream, one line per forecast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from devhost.app.host import Host
from devhost.kafka import broker as kafka
from devhost.kafka.trigger import BatchDone, KafkaTrigger, TriggerOptions
from devhost.storage import azurite
from functions.settings import Settings, get_settings, setting_specs

log = logging.getLogger("devhost.forecast_stream")
FUNCTION = "forecast_stream"
BOOTSTRAP_KEY = "FORECASTS_KAFKA_BOOTSTRAP"
SECURITY_KEY = "FORECASTS_KAFKA_SECURITY"


def export_settings() -> None:
    """Export the stream's binding settings (consumer group, output hub) with their defaults, unless set."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for name in ("forecast_consumer_group", "forecasts_eventhub_name"):
        os.environ.setdefault(setting_specs()[name].key, defaults[name])


def owner_lock(home: Path) -> Path:
    """The lock the forecast trigger holds while it owns the bars topic's partitions for its group."""
    return home / "run" / "kafka-forecast-trigger.lock"


class NothingToSave(azurite.UnsavedWrites):
    """The forecast trigger's checkpoints wait for no Azurite save: its output is on the broker, flushed."""

    def writing(self) -> None:
        """Nothing is written to Azurite by the invocation."""

    def save(self) -> None:
        """Nothing to save."""


def use_broker(bootstrap: str) -> None:
    """Point the function's producer at the local broker (PLAINTEXT); settings are read again on the next batch."""
    if os.environ.get(BOOTSTRAP_KEY) != bootstrap or os.environ.get(SECURITY_KEY) != "PLAINTEXT":
        os.environ[BOOTSTRAP_KEY] = bootstrap
        os.environ[SECURITY_KEY] = "PLAINTEXT"
        get_settings.cache_clear()


def forecast_trigger(
    host: Host,
    home: Path,
    bootstrap: str,
    options: TriggerOptions | None = None,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> KafkaTrigger:
    """The forecast function's trigger on the bars topic at ``bootstrap``, its producer writing to the same broker.

    Batches are cut with host.json's options unless ``options`` say otherwise.
    """
    export_settings()
    use_broker(bootstrap)
    settings = get_settings()
    kafka.ensure_topic(bootstrap, settings.forecasts_eventhub_name)
    trigger = KafkaTrigger(
        host,
        bootstrap,
        settings.bars_eventhub_name,
        os.environ["FORECAST_CONSUMER_GROUP"],
        options or TriggerOptions.from_host_json(),
        on_batch=on_batch,
        owner_lock=owner_lock(home),
        unsaved=NothingToSave(home),
        function=FUNCTION,
    )
    return trigger


def start(
    host: Host,
    home: Path,
    ingest: KafkaTrigger,
    stop: threading.Event,
    on_published: Callable[[int], None] | None = None,
) -> list[threading.Thread]:
    """Run the forecast trigger beside ``ingest``'s, following it to a restarted broker; returns the started threads.

    ``on_published`` is told of each forecast that became readable on the broker (the console counts them).
    """
    trigger = forecast_trigger(host, home, ingest.bootstrap)

    def follow_broker() -> None:
        while not stop.wait(2.0):
            if ingest.bootstrap != trigger.bootstrap:
                use_broker(ingest.bootstrap)
                trigger.reconnect(ingest.bootstrap)

    def count_published() -> None:
        topic = get_settings().forecasts_eventhub_name
        while not stop.is_set():
            try:
                for _doc in read(trigger.bootstrap, topic, stop, follow=True, from_start=False):
                    on_published(1)
            except Exception as exc:  # a restarting broker: count again from its new end
                log.debug("forecast counter restarts: %s", exc)
                stop.wait(2.0)

    threads = [
        threading.Thread(target=trigger.run, args=(stop,), name="kafka-forecast-trigger"),
        threading.Thread(target=follow_broker, name="kafka-forecast-watch"),
    ]
    if on_published is not None:
        threads.append(threading.Thread(target=count_published, name="kafka-forecast-count", daemon=True))
    for thread in threads:
        thread.start()
    return threads


def read(bootstrap: str, topic: str, stop: threading.Event, follow: bool, from_start: bool = True) -> Iterator[dict]:
    """The stream's messages, in arrival order per partition; without ``follow`` until the topic's end."""
    from confluent_kafka import Consumer, KafkaError

    kafka.ensure_topic(bootstrap, topic)  # a subscription to a missing topic would not see it for minutes
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"devhost-forecasts-{uuid.uuid4().hex[:8]}",  # a reader, never a checkpoint
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_start else "latest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            "logger": logging.getLogger(kafka.CLIENT_LOG),
        }
    )
    try:
        consumer.subscribe([topic])
        at_end: set[int] = set()
        partitions: int | None = None
        while not stop.is_set():
            message = consumer.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    if partitions is None:
                        partitions = len(consumer.list_topics(topic, timeout=5).topics[topic].partitions)
                    if not follow and len(at_end) >= partitions:
                        return
                continue
            at_end.discard(message.partition())
            doc = orjson.loads(message.value())
            doc["_kafka"] = {"key": (message.key() or b"").decode(), "timestamp_ms": message.timestamp()[1]}
            yield doc
    finally:
        consumer.close()


def line(doc: dict) -> str:
    """One forecast as a line: symbol, as_of, target, forecast, interval, version."""
    interval = doc.get("interval") or {}
    band = (
        f"[{interval['low']:.4f}, {interval['high']:.4f}] @{interval.get('level')}"
        if interval.get("low") is not None and interval.get("high") is not None
        else "-"
    )
    return (
        f"{doc['symbol']:<8} as_of {doc['as_of']}  target {doc['target_ts']}  "
        f"forecast {doc['forecast']:.4f}  interval {band}  v{doc['version']}"
    )


def run(args: argparse.Namespace) -> int:
    """The ``forecasts`` command: print the stream (0), or 1 when no broker runs for the home."""
    from rich.console import Console

    from devhost.shared.home import apply_app_settings, stockcast_home

    console = Console(soft_wrap=True, highlight=False)
    apply_app_settings({})
    export_settings()
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = kafka.running(stockcast_home())
        if broker is None:
            console.print("no Kafka broker runs for this home: start `python -m devhost up` first", markup=False)
            return 1
        bootstrap = broker.bootstrap
    stop = threading.Event()
    try:
        for doc in read(bootstrap, os.environ["FORECASTS_EVENTHUB_NAME"], stop, args.follow, not args.new):
            console.print(line(doc), markup=False)
    except KeyboardInterrupt:
        stop.set()
    return 0
