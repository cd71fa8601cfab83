"""The Event Hubs trigger, emulated over Kafka: what the Functions host does for ``eventHubTrigger``.

A consumer in the trigger's consumer group (``BARS_CONSUMER_GROUP``) reads every partition of the
topic (the hub, ``BARS_EVENTHUB_NAME``), cuts per-partition batches the way host.json's
``extensions.eventHubs`` says (``maxEventBatchSize``; ``minEventBatchSize`` with ``maxWaitTime``;
``prefetchCount``; ``batchCheckpointFrequency``; ``initialOffsetOptions``), and invokes the
registered function through :class:`devhost.app.host.Host`, which applies its retry policy.

**Partition ownership, not group membership.** Like the Event Hubs processor, which owns
partitions through its checkpoint store rather than through Kafka's group protocol, the trigger
assigns itself every partition, starts each from the group's committed offset, and commits its
checkpoints under the group. One trigger per home owns the partitions at a time (an ``flock``
that the kernel releases when its holder dies, so a successor takes over at once). Tansu's group
coordinator can also wedge: a member that joins and vanishes before its SyncGroup stays the
group's leader, and every later member is told "rebalance in progress" for good.

**Checkpoints come after success, and after durable.** The batch's next offsets are committed
synchronously only once the invocation (retries included) succeeded, as the Event Hubs extension
checkpoints, so a consumer that dies between the two hands the batch to its successor again: at
least once, and ingest is idempotent. Azurite acknowledges a write before its blob index is on
disk (it autosaves every 5 s), so a checkpoint also waits until Azurite saved what its batches
wrote (:class:`devhost.storage.azurite.UnsavedWrites`), one save for every batch stored meanwhile: after
each read of the topic that found no backlog, and at least every ``save_every_s`` while one is
read. A save that fails, or an Azurite that restarted since the writes, commits nothing and the
consumer starts over from the last checkpoint: a kill of Azurite, or a full disk, loses no event.

An invocation that still fails after the retries devhost allows is not skipped either: the
partition is rewound to the batch and tried again after a backoff, which is what the function's
unbounded retry policy asks of the host in Azure.

**The same metadata as in Azure.** Events are decoded by the azure-functions library's own
trigger converter from the trigger metadata the host sends for ``cardinality=many``:
``PartitionContext`` (``PartitionId`` and friends) and ``SystemPropertiesArray`` with sequence
number = offset, offset, enqueued time = the record's timestamp, and partition key = the Kafka key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
import orjson
from azure.functions import meta
from azure.functions.decorators.function_app import Function
from azure.functions.eventhub import EventHubTriggerConverter

from devhost.app.host import Host, RetryPolicy, timespan_seconds
from devhost.kafka.broker import CLIENT_LOG
from devhost.shared.home import REPO_ROOT, stockcast_home
from devhost.storage import azurite

log = logging.getLogger("devhost.kafka_trigger")

TRIGGER_TYPE = "eventHubTrigger"


@dataclass(frozen=True)
class TriggerOptions:
    """host.json's ``extensions.eventHubs``; the defaults are the extension's own."""

    max_batch: int = 100  # maxEventBatchSize
    min_batch: int = 1  # minEventBatchSize
    max_wait_s: float = 60.0  # maxWaitTime: how long a partial batch waits for min_batch
    prefetch: int = 300  # prefetchCount
    checkpoint_every: int = 1  # batchCheckpointFrequency: batches per checkpoint
    from_start: bool = True  # initialOffsetOptions.type: fromStart (else fromEnd) without a checkpoint
    retry_backoff_cap_s: float = 30.0  # devhost's cap on the wait before a failed batch is tried again
    save_every_s: float = 1.0  # devhost: while a backlog is read, stored batches wait this long at most for a save

    @classmethod
    def from_host_json(cls, path: Path | None = None, **overrides: Any) -> TriggerOptions:
        """Read ``extensions.eventHubs`` of host.json (the repository's by default)."""
        config = orjson.loads((path or REPO_ROOT / "host.json").read_bytes())
        hubs = config.get("extensions", {}).get("eventHubs", {})
        values: dict[str, Any] = {}
        if "maxEventBatchSize" in hubs:
            values["max_batch"] = int(hubs["maxEventBatchSize"])
        if "minEventBatchSize" in hubs:
            values["min_batch"] = int(hubs["minEventBatchSize"])
        if "maxWaitTime" in hubs:
            values["max_wait_s"] = timespan_seconds(hubs["maxWaitTime"])
        if "prefetchCount" in hubs:
            values["prefetch"] = int(hubs["prefetchCount"])
        if "batchCheckpointFrequency" in hubs:
            values["checkpoint_every"] = max(1, int(hubs["batchCheckpointFrequency"]))
        initial = (hubs.get("initialOffsetOptions") or {}).get("type", "fromStart")
        if initial not in ("fromStart", "fromEnd"):  # fromEnqueuedTime has no Kafka consumer setting
            log.warning("initialOffsetOptions.type %s is not emulated: reading from the start", initial)
        values["from_start"] = initial != "fromEnd"
        return cls(**{**values, **overrides})

    def due(self, waiting: int, waited_s: float) -> bool:
        """Whether a partition's ``waiting`` events make a batch now, ``waited_s`` after the first arrived."""
        if waiting >= self.max_batch or waiting >= self.min_batch:
            return True
        return waiting > 0 and waited_s >= self.max_wait_s


@dataclass(frozen=True)
class Batch:
    """One invocation's events, as read from one partition."""

    batch_id: str
    partition: int
    first_offset: int
    last_offset: int
    timestamps_ms: list[int] = field(repr=False)  # each record's Kafka timestamp (produce time here)

    @property
    def events(self) -> int:
        """How many events the batch holds."""
        return len(self.timestamps_ms)


@dataclass(frozen=True)
class BatchDone:
    """A batch the function stored: its invocation attempts, and whether its checkpoint was committed."""

    batch: Batch
    attempts: int
    checkpointed: bool
    finished: float  # time.time() when the invocation returned


@dataclass(frozen=True)
class _Stored:
    """A batch the function stored, waiting for Azurite's save before its checkpoint."""

    batch: Batch
    attempts: int
    blobs: int
    finished: float  # time.time() when the invocation returned
    due: bool  # whether its checkpoint is due (batchCheckpointFrequency)
    at: float  # time.monotonic() when it was stored


def batch_id(partition: int, first: int, last: int) -> str:
    """The correlation id of a batch in logs: partition and offset range, as ingest names batches."""
    return f"p{partition}-{first}-{last}"


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_events(messages: list[Any], context: Mapping[str, str]) -> list[func.EventHubEvent]:
    """Kafka records of one partition as the trigger's events, with Azure's ``cardinality=many`` metadata.

    ``context`` is the ``PartitionContext`` (``PartitionId``, ``ConsumerGroup``, ``EventHubName``,
    ``FullyQualifiedNamespace``).
    """
    now_ms = int(time.time() * 1000)
    system = []
    for m in messages:
        kind, ts = m.timestamp()
        key = m.key()
        system.append(
            {
                "SequenceNumber": m.offset(),
                "Offset": str(m.offset()),
                "EnqueuedTimeUtc": _utc(ts if kind and ts >= 0 else now_ms),
                "PartitionKey": key.decode("utf-8", "replace") if key is not None else None,
            }
        )

    def column(name: str) -> meta.Datum:
        return meta.Datum(orjson.dumps([s[name] for s in system]).decode(), "json")

    metadata = {
        "PartitionContext": meta.Datum(orjson.dumps(dict(context)).decode(), "json"),
        "SystemPropertiesArray": meta.Datum(orjson.dumps(system).decode(), "json"),
        "SequenceNumberArray": column("SequenceNumber"),
        "OffsetArray": column("Offset"),
        "EnqueuedTimeUtcArray": column("EnqueuedTimeUtc"),
        "PartitionKeyArray": column("PartitionKey"),
        "PropertiesArray": meta.Datum(orjson.dumps([{} for _ in system]).decode(), "json"),
    }
    # the worker hands the bodies over as a protobuf CollectionBytes: only its ``bytes`` field is read
    bodies = types.SimpleNamespace(bytes=[m.value() or b"" for m in messages])
    return EventHubTriggerConverter.decode(meta.Datum(bodies, "collection_bytes"), trigger_metadata=metadata)


def consumer_config(bootstrap: str, group: str, options: TriggerOptions) -> dict[str, Any]:
    """The librdkafka settings of the trigger's consumer: manual, synchronous checkpoints only."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,  # whose committed offsets are the checkpoints
        "client.id": "stockcast-devhost-trigger",
        "enable.auto.commit": False,  # a checkpoint only after the invocation succeeded
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest" if options.from_start else "latest",
        "fetch.wait.max.ms": 100,
        "logger": logging.getLogger(CLIENT_LOG),
    }


class KafkaTrigger:
    """Runs the registered Event Hubs function on a Kafka topic until stopped."""

    def __init__(
        self,
        host: Host,
        bootstrap: str,
        topic: str,
        group: str,
        options: TriggerOptions | None = None,
        on_batch: Callable[[BatchDone], None] | None = None,
        before_commit: Callable[[Batch], None] | None = None,
        owner_lock: Path | None = None,
        unsaved: azurite.UnsavedWrites | None = None,
        function: str = "ingest",
    ) -> None:
        self.host = host
        self.function_name = function  # the registered Event Hubs function this trigger runs
        # the writes its checkpoints wait for: the home's Azurite unless told otherwise
        self.unsaved = unsaved if unsaved is not None else azurite.UnsavedWrites(stockcast_home())
        self.owner_lock = owner_lock  # held while this trigger owns the partitions (one owner per home)
        self.topic = topic
        self.group = group
        self.options = options or TriggerOptions.from_host_json()
        self.on_batch = on_batch
        self.before_commit = before_commit  # tests crash here: after the invocation, before its checkpoint
        self._bootstrap = bootstrap
        self._changed = threading.Event()
        self._progress = threading.Condition()
        self._checkpoints: dict[int, int] = {}
        self._failures = 0
        self._broker_down = False
        self._cluster: str | None = None  # the broker's cluster id when the consumer was made

    @property
    def bootstrap(self) -> str:
        """The broker this trigger reads from."""
        return self._bootstrap

    def reconnect(self, bootstrap: str) -> None:
        """Start over with a new consumer on ``bootstrap``: the broker restarted (on this port or another).

        A restarted memory broker has a new, empty topic: a fresh consumer starts from its
        beginning, where the old one's fetch positions would point past its first messages.
        """
        self._bootstrap = bootstrap
        self._changed.set()

    def checkpoints(self) -> dict[int, int]:
        """The next offset committed per partition by this trigger so far."""
        with self._progress:
            return dict(self._checkpoints)

    def wait_for(self, ends: Mapping[int, int], timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until every partition in ``ends`` is checkpointed at least up to its offset; return whether it was."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while any(self._checkpoints.get(p, 0) < end for p, end in ends.items()):
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._progress.wait(min(left, 0.5))
        return True

    def run(self, stop: threading.Event) -> None:
        """Own the partitions, then consume, invoke and checkpoint until ``stop`` is set."""
        fn = self.host.function(TRIGGER_TYPE, self.function_name)
        with self._ownership(stop) as owned:
            while owned and not stop.is_set():
                self._changed.clear()
                consumer = self._consumer(stop)
                if consumer is None:
                    return
                try:
                    self._consume(consumer, fn, stop)
                except Exception:  # a bug or a broker gone mad: start over from the checkpoints
                    log.exception("Kafka trigger on %s failed; restarting from the checkpoints", self._bootstrap)
                    stop.wait(1.0)
                finally:
                    consumer.close()

    @contextlib.contextmanager
    def _ownership(self, stop: threading.Event) -> Iterator[bool]:
        """Hold ``owner_lock`` (waiting while another trigger of the home holds it); yield whether it is held."""
        if self.owner_lock is None:
            yield True
            return
        self.owner_lock.parent.mkdir(parents=True, exist_ok=True)
        with open(self.owner_lock, "a") as fh:
            told = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        log.warning("another trigger owns %s (%s): waiting for it to stop", self.topic, self.owner_lock)
                        told = True
                    if stop.wait(0.5):
                        yield False
                        return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _consumer(self, stop: threading.Event) -> Any:
        """A consumer assigned every partition of the topic from the group's checkpoints; None if stopped first."""
        from confluent_kafka import OFFSET_STORED, Consumer, KafkaException, TopicPartition

        def connect() -> Any:
            config = consumer_config(self._bootstrap, self.group, self.options)
            config["error_cb"] = self._on_client_error
            return Consumer(config)

        consumer = connect()
        told = False
        while True:
            if self._changed.is_set():  # the broker moved while we waited for it
                self._changed.clear()
                consumer.close()
                consumer = connect()
            try:
                cluster = consumer.list_topics(self.topic, timeout=5)
                metadata = cluster.topics.get(self.topic)
                if metadata is not None and metadata.error is None and metadata.partitions:
                    self._cluster = cluster.cluster_id  # a restarted broker has another: see _commit
                    break
            except KafkaException:
                pass  # the broker is down: the error callback said so
            if not told:
                log.warning("waiting for topic %s on %s", self.topic, self._bootstrap)
                told = True
            if stop.wait(1.0):
                consumer.close()
                return None
        self._pending: dict[int, list[Any]] = defaultdict(list)
        self._since: dict[int, float] = {}
        self._unsaved: dict[int, tuple[int, int]] = {}  # partition -> (next offset, batches) not yet committed
        self._stored: list[_Stored] = []  # invoked, waiting for a save and their checkpoint (in order)
        partitions = sorted(metadata.partitions)
        # OFFSET_STORED: the group's committed offset, else auto.offset.reset (initialOffsetOptions)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_STORED) for p in partitions])
        log.info("partitions %s of %s owned (checkpoints of group %s)", partitions, self.topic, self.group)
        return consumer

    def _on_client_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if not self._broker_down:  # once per outage, not once per reconnect attempt
                log.warning("Kafka broker %s unreachable (%s): waiting for it", self._bootstrap, error.str())
            self._broker_down = True
        else:
            log.warning("Kafka client error on %s: %s", self._bootstrap, error.str())

    def _consume(self, consumer: Any, fn: Function, stop: threading.Event) -> None:
        from confluent_kafka import KafkaError

        options = self.options
        while not stop.is_set() and not self._changed.is_set():
            # consume(n, t) blocks until n messages or t: take what is queued now, and block only for
            # the first message of the next batch (or until a partial batch has waited long enough)
            messages = consumer.consume(options.prefetch, 0)
            backlog = len(messages) >= options.prefetch  # more is queued: save once for several rounds
            if not messages:
                now = time.monotonic()
                waits = [options.max_wait_s - (now - t) for t in self._since.values()]
                messages = consumer.consume(1, max(0.0, min([0.2, *waits])))
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        log.warning(
                            "topic %s does not exist on %s: a memory-storage broker that restarted lost it "
                            "(devhost recreates it; what was published before the restart is gone)",
                            self.topic,
                            self._bootstrap,
                        )
                        self._changed.set()  # a new consumer waits for the topic and starts at its beginning
                    elif error.code() != KafkaError._PARTITION_EOF:
                        log.warning("Kafka consume error on %s: %s", self.topic, error.str())
                    continue
                self._broker_down = False
                self._pending[message.partition()].append(message)
                self._since.setdefault(message.partition(), time.monotonic())
            for partition in sorted(self._pending):
                self._drain(consumer, fn, partition, stop)
            if self._stored and (not backlog or time.monotonic() - self._stored[0].at >= options.save_every_s):
                self._checkpoint(consumer)
        self._checkpoint(consumer, final=True)

    def _drain(self, consumer: Any, fn: Function, partition: int, stop: threading.Event) -> None:
        """Invoke the function on every batch of ``partition`` that is due."""
        waiting = self._pending.get(partition, [])
        while waiting and not stop.is_set() and not self._changed.is_set():
            if not self.options.due(len(waiting), time.monotonic() - self._since.get(partition, 0.0)):
                return
            messages = waiting[: self.options.max_batch]
            del waiting[: self.options.max_batch]
            if waiting:
                self._since[partition] = time.monotonic()
            else:
                self._since.pop(partition, None)
            if not self._dispatch(consumer, fn, partition, messages, stop):
                waiting.clear()
                self._since.pop(partition, None)
                return

    def _dispatch(
        self, consumer: Any, fn: Function, partition: int, messages: list[Any], stop: threading.Event
    ) -> bool:
        """One invocation; its batch then waits for :meth:`_checkpoint`. False when it failed and was rewound."""
        from confluent_kafka import KafkaException, TopicPartition

        first, last = messages[0].offset(), messages[-1].offset()
        batch = Batch(batch_id(partition, first, last), partition, first, last, [m.timestamp()[1] for m in messages])
        context = {
            "ConsumerGroup": self.group,
            "EventHubName": self.topic,
            "FullyQualifiedNamespace": self._bootstrap.rsplit(":", 1)[0],
            "PartitionId": str(partition),
        }
        try:
            self.unsaved.writing()
            invocation = self.host.invoke(fn, to_events(messages, context))
        except Exception as exc:
            self._failures += 1
            policy = RetryPolicy.of(fn)
            wait = min(self.options.retry_backoff_cap_s, max(1.0, policy.minimum) * 2 ** (self._failures - 1))
            log.error(
                "batch=%s failed after its retries (%s: %s): not checkpointed; partition %d rewinds to offset %d "
                "and tries again in %.0fs",
                batch.batch_id,
                type(exc).__name__,
                exc,
                partition,
                first,
                wait,
            )
            try:
                consumer.seek(TopicPartition(self.topic, partition, first))
            except KafkaException:  # not seekable now (a rebalance): a new consumer starts from the checkpoint
                self._changed.set()
            stop.wait(wait)
            return False
        self._failures = 0
        finished = time.time()
        batches = self._unsaved.get(partition, (0, 0))[1] + 1
        due = batches >= self.options.checkpoint_every
        self._unsaved[partition] = (last + 1, 0 if due else batches)
        self._stored.append(_Stored(batch, invocation.attempts, len(invocation.blobs), finished, due, time.monotonic()))
        return True

    def _checkpoint(self, consumer: Any, final: bool = False) -> None:
        """Have Azurite save what the stored batches wrote, then commit their checkpoints in order.

        ``final``: on the way out, also checkpoint batches that waited for ``batchCheckpointFrequency``.
        A save that cannot be confirmed commits nothing: a new consumer reads again from the last
        checkpoint, so the batches are stored again on the Azurite running now.
        """
        stored, self._stored = self._stored, []
        if not any(s.due for s in stored) and not (final and self._unsaved):
            for s in stored:
                self._report(s, False)
            return
        correlation = f"{stored[0].batch.batch_id}..{stored[-1].batch.batch_id}" if stored else "shutdown"
        started = time.monotonic()
        try:
            self.unsaved.save()
        except azurite.NotSavedError as exc:
            log.warning(
                "batches=%s stored but not saved by Azurite (%s): not checkpointed; reading again from the checkpoints",
                correlation,
                exc,
            )
            self._unsaved.clear()
            self._changed.set()  # a new consumer starts from the committed offsets
            for s in stored:
                self._report(s, False)
            return
        log.debug("batches=%s saved by Azurite in %.3fs", correlation, time.monotonic() - started)
        for s in stored:
            checkpointed = False
            if s.due:
                if self.before_commit:
                    self.before_commit(s.batch)
                checkpointed = self._commit(consumer, {s.batch.partition: s.batch.last_offset + 1}, s.batch.batch_id)
            self._report(s, checkpointed)
        if final and self._unsaved:  # those that waited for batchCheckpointFrequency
            self._commit(consumer, {p: o for p, (o, _) in self._unsaved.items()}, "shutdown")

    def _report(self, stored: _Stored, checkpointed: bool) -> None:
        """Log a stored batch and hand it to ``on_batch``."""
        batch = stored.batch
        log.info(
            "batch=%s partition=%d events=%d attempts=%d blobs=%d checkpoint=%s",
            batch.batch_id,
            batch.partition,
            batch.events,
            stored.attempts,
            stored.blobs,
            batch.last_offset + 1 if checkpointed else "pending",
        )
        if self.on_batch:
            self.on_batch(BatchDone(batch, stored.attempts, checkpointed, stored.finished))

    def _commit(self, consumer: Any, offsets: Mapping[int, int], correlation: str) -> bool:
        """Commit ``offsets`` synchronously; a failure only means the batch will be delivered again."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            cluster = consumer.list_topics(self.topic, timeout=5).cluster_id
        except KafkaException:
            cluster = None
        if cluster != self._cluster:
            # a restarted memory broker: these offsets would point into its new topic and skip what
            # it holds before them, so start over from that topic's beginning instead
            log.warning(
                "batch=%s stored but not checkpointed: the broker at %s restarted (memory storage); "
                "reading its new topic from the beginning",
                correlation,
                self._bootstrap,
            )
            self._changed.set()
            return False
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            log.warning(
                "batch=%s stored but its checkpoint failed (%s): it will be delivered again (ingest is idempotent)",
                correlation,
                exc.args[0].str() if exc.args else exc,
            )
            return False
        with self._progress:
            for p, o in offsets.items():
                if self._unsaved.get(p, (o, 0))[0] == o:  # nothing stored after it waits for a checkpoint
                    self._unsaved.pop(p, None)
                self._checkpoints[p] = o
            self._progress.notify_all()
        return True
