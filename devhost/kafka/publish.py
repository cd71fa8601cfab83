"""``python -m devhost publish``: send Airbyte JSON lines over the Kafka protocol, as Airbyte does.

destination-kafka writes each record as the JSON of its Airbyte message (the value) under a
random uuid (the key), to one topic. Event Hubs' Kafka endpoint (``<ns>.servicebus.windows.net:9093``)
takes SASL PLAIN over TLS with the user ``$ConnectionString`` and a connection string of a Send rule
as the password; that password is read from ``KAFKA_SASL_PASSWORD`` only, never from a flag, and is
never printed. ``--plaintext`` (``--security-protocol PLAINTEXT``) talks to a local broker without
auth, such as the one ``devhost up`` runs (``devhost status`` prints its address).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

PASSWORD_ENV = "KAFKA_SASL_PASSWORD"
DEFAULT_TOPIC = "stock_bars"
SECURITY_PROTOCOLS = ("SASL_SSL", "PLAINTEXT")
EVENT_HUBS_USER = "$ConnectionString"

log = logging.getLogger("devhost.publish")


class PublishError(RuntimeError):
    """The publish command cannot start: a missing password or a bad option."""


class Producer(Protocol):
    """The part of confluent_kafka.Producer that publishing uses."""

    def produce(self, topic: str, value: bytes, key: str, on_delivery: Callable[[Any, Any], None]) -> None:
        """Queue one message."""
        ...

    def poll(self, timeout: float) -> int:
        """Serve delivery callbacks."""
        ...

    def flush(self, timeout: float) -> int:
        """Wait for outstanding messages; return how many are still queued."""
        ...


ProducerFactory = Callable[[dict[str, Any]], Producer]


def producer_config(
    bootstrap: str,
    security_protocol: str = "SASL_SSL",
    password: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The librdkafka settings for ``bootstrap``; SASL_SSL needs ``password`` (from KAFKA_SASL_PASSWORD)."""
    if security_protocol not in SECURITY_PROTOCOLS:
        raise PublishError(f"security protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, not {security_protocol}")
    if not bootstrap or ":" not in bootstrap:
        raise PublishError(f"bootstrap must be HOST:PORT, not {bootstrap!r}")
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": security_protocol,
        "client.id": "stockcast-devhost-publish",
        "acks": "all",
        # Event Hubs' recommendations: it drops idle TCP connections after 240 s
        "metadata.max.age.ms": 180_000,
        "connections.max.idle.ms": 180_000,
        "socket.keepalive.enable": True,
        "request.timeout.ms": 60_000,
        "message.timeout.ms": max(1, int(timeout_s * 1000)),
    }
    if security_protocol == "SASL_SSL":
        if not password:
            raise PublishError(
                f"SASL_SSL needs the password in the environment variable {PASSWORD_ENV} "
                "(for Event Hubs: the connection string of the hub's Send rule)"
            )
        import certifi  # the wheel's OpenSSL does not always find the system's CA bundle

        config.update(
            {
                "sasl.mechanisms": "PLAIN",
                "sasl.username": EVENT_HUBS_USER,
                "sasl.password": password,
                "ssl.ca.location": certifi.where(),
            }
        )
    return config


def kafka_producer(config: Mapping[str, Any]) -> Producer:
    """A confluent-kafka producer whose client log goes to Python logging (shown with -v)."""
    from confluent_kafka import Producer as KafkaProducer

    return KafkaProducer({**config, "logger": logging.getLogger("devhost.kafka")})


@dataclass
class PublishResult:
    """What a publish run did, as the delivery callbacks reported it."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ends: dict[int, int] = field(default_factory=dict)  # partition -> offset after its last delivered message

    @property
    def ok(self) -> bool:
        """Whether every message was acknowledged by the broker."""
        return self.failed == 0 and self.delivered == self.sent


def publish(
    lines: Iterable[bytes],
    topic: str,
    config: Mapping[str, Any],
    producer_factory: ProducerFactory = kafka_producer,
    rate: float | None = None,
    flush_timeout_s: float = 65.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishResult:
    """Send each line as one message (key: a random uuid), at most ``rate`` per second; wait for acks."""
    producer = producer_factory(dict(config))
    result = PublishResult()

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            result.delivered += 1
            if msg is not None and msg.offset() is not None and msg.offset() >= 0:
                result.ends[msg.partition()] = max(result.ends.get(msg.partition(), 0), msg.offset() + 1)
        else:
            result.failed += 1
            result.errors[err.str() if hasattr(err, "str") else str(err)] += 1  # KafkaError.str(): the text alone

    started = clock()
    for line in lines:
        if rate:
            wait = started + result.sent / rate - clock()
            if wait > 0:
                sleep(wait)
        while True:
            try:
                producer.produce(topic, value=line, key=str(uuid.uuid4()), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.5)
        result.sent += 1
        producer.poll(0)
    remaining = producer.flush(flush_timeout_s)
    if remaining:  # never acknowledged nor failed within the timeout: count them as failed
        result.failed += remaining
        result.errors[f"no delivery report within {flush_timeout_s:.0f}s"] += remaining
    return result


def publish_local(bootstrap: str, topic: str, bodies: Iterable[bytes], timeout_s: float = 10.0) -> PublishResult:
    """Send ``bodies`` to a local PLAINTEXT broker and wait for every ack; raise :class:`PublishError` otherwise."""
    config = producer_config(bootstrap, "PLAINTEXT", timeout_s=timeout_s)
    result = publish(bodies, topic, config, kafka_producer, flush_timeout_s=timeout_s + 5)
    if not result.ok:
        errors = "; ".join(f"{count} x {error}" for error, count in result.errors.most_common(3))
        raise PublishError(f"{result.failed} of {result.sent} messages to {topic} at {bootstrap} failed: {errors}")
    return result


def run(args: argparse.Namespace, producer_factory: ProducerFactory = kafka_producer) -> int:
    """The ``publish`` command: 0 when every message was delivered, 1 when any failed, 2 on bad options."""
    from rich.console import Console

    from devhost.kafka.replay import read_lines

    console = Console(soft_wrap=True)
    try:
        config = producer_config(args.bootstrap, args.security_protocol, os.environ.get(PASSWORD_ENV), args.timeout)
    except PublishError as exc:
        console.print(f"[red]publish[/]: {exc}")
        return 2
    console.print(
        f"publishing {', '.join(args.files)} to topic {args.topic} at {args.bootstrap} ({args.security_protocol}"
        f"{', user ' + EVENT_HUBS_USER if args.security_protocol == 'SASL_SSL' else ''})"
    )
    started = time.monotonic()
    result = publish(read_lines(args.files), args.topic, config, producer_factory, args.rate, args.timeout + 5)
    elapsed = time.monotonic() - started
    console.print(f"sent {result.sent}, delivered {result.delivered}, failed {result.failed} in {elapsed:.1f}s")
    for error, count in result.errors.most_common(5):
        console.print(f"[red]  {count} x {error}[/]")
    return 0 if result.ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``publish`` subcommand to devhost's command line."""
    p = sub.add_parser("publish", help="send feed or replay JSONL files to a Kafka topic, as Airbyte does")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL: one Airbyte message per line")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="e.g. <ns>.servicebus.windows.net:9093")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help=f"default {DEFAULT_TOPIC} (the event hub)")
    protocol = p.add_mutually_exclusive_group()
    protocol.add_argument(
        "--security-protocol",
        choices=SECURITY_PROTOCOLS,
        default="SASL_SSL",
        help=f"SASL_SSL: PLAIN as {EVENT_HUBS_USER}, password from ${PASSWORD_ENV}; PLAINTEXT: a local broker",
    )
    protocol.add_argument(
        "--plaintext",
        dest="security_protocol",
        action="store_const",
        const="PLAINTEXT",
        help="no TLS, no authentication: the local broker of `devhost up` (see `devhost status`)",
    )
    p.add_argument("--rate", type=float, metavar="N", help="at most N messages per second (default: as fast as acked)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="delivery timeout per message")
    p.set_defaults(run=run)
