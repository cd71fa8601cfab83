"""devhost publish: the producer settings, the messages as Airbyte sends them, and failed deliveries."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import pytest

from devhost.kafka import publish
from devhost.market.feed import FeedConfig, write_feed
from devhost.shared.processes import free_port


class CapturingProducer:
    """Records what would be sent and acknowledges it on the next poll or flush."""

    def __init__(self, config: dict, fail_every: int = 0) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, str]] = []
        self.pending: list = []
        self.fail_every = fail_every

    def produce(self, topic, value, key, on_delivery):
        """Queue one message."""
        self.sent.append((topic, value, key))
        failed = self.fail_every and len(self.sent) % self.fail_every == 0
        self.pending.append((on_delivery, "Broker: Message size too large" if failed else None))

    def poll(self, timeout):
        """Deliver everything queued."""
        served = len(self.pending)
        for callback, err in self.pending:
            callback(err, None)
        self.pending.clear()
        return served

    def flush(self, timeout):
        """Deliver everything queued; nothing remains."""
        self.poll(timeout)
        return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    publish.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["publish", *argv])


@pytest.mark.parametrize(
    ("protocol", "password", "expected"),
    [
        (
            "SASL_SSL",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k;EntityPath=stock_bars",
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "PLAIN",
                "sasl.username": "$ConnectionString",
                "sasl.password": "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;"
                "SharedAccessKey=k;EntityPath=stock_bars",
            },
        ),
        ("PLAINTEXT", None, {"security.protocol": "PLAINTEXT"}),
        ("PLAINTEXT", "ignored", {"security.protocol": "PLAINTEXT"}),
    ],
)
def test_producer_config(protocol, password, expected):
    """SASL_SSL signs in as $ConnectionString with the given password; PLAINTEXT carries no credentials."""
    config = publish.producer_config("ns.servicebus.windows.net:9093", protocol, password, timeout_s=2.5)
    assert {k: v for k, v in config.items() if k.startswith(("security", "sasl"))} == expected
    assert (config["bootstrap.servers"], config["message.timeout.ms"]) == ("ns.servicebus.windows.net:9093", 2500)
    assert (config["metadata.max.age.ms"], config["connections.max.idle.ms"]) == (180_000, 180_000)
    assert ("ssl.ca.location" in config) == (protocol == "SASL_SSL")


def test_missing_password_names_the_variable():
    """SASL_SSL without a password fails before connecting, naming KAFKA_SASL_PASSWORD."""
    with pytest.raises(publish.PublishError, match="KAFKA_SASL_PASSWORD"):
        publish.producer_config("ns.servicebus.windows.net:9093", "SASL_SSL", None)
    with pytest.raises(publish.PublishError, match="HOST:PORT"):
        publish.producer_config("localhost", "PLAINTEXT")


def test_cli_reads_the_password_from_the_environment_only(tmp_path, monkeypatch, capsys):
    """The password comes from KAFKA_SASL_PASSWORD, reaches the producer, and is never printed."""
    secret = "Endpoint=sb://ns/;SharedAccessKeyName=send;SharedAccessKey=s3cr3t"
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b'{"a": 1}\n')
    made: list[CapturingProducer] = []

    def factory(config):
        made.append(CapturingProducer(config))
        return made[-1]

    monkeypatch.delenv(publish.PASSWORD_ENV, raising=False)
    args = _parse(["--bootstrap", "ns.servicebus.windows.net:9093", str(feed)])
    assert publish.run(args, factory) == 2 and made == []
    assert "KAFKA_SASL_PASSWORD" in capsys.readouterr().out
    monkeypatch.setenv(publish.PASSWORD_ENV, secret)
    assert publish.run(args, factory) == 0
    [producer] = made
    assert (producer.config["sasl.username"], producer.config["sasl.password"]) == ("$ConnectionString", secret)
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "delivered 1, failed 0" in out
    with pytest.raises(SystemExit):
        _parse(["--bootstrap", "x:1", "--password", secret, str(feed)])


def test_messages_are_the_exact_lines_under_random_uuid_keys(tmp_path):
    """Each line of a feed file is one message: the value is the line's bytes, the key a fresh uuid4."""
    path = tmp_path / "feed.jsonl"
    count = write_feed(FeedConfig(symbols=("AAA", "BBB"), days=1, sync_every=60, bad_events=6), str(path))
    lines = path.read_bytes().splitlines()
    made: list[CapturingProducer] = []

    def factory(config):
        made.append(CapturingProducer(config))
        return made[-1]

    result = publish.publish(iter(lines), "stock_bars", publish.producer_config("h:1", "PLAINTEXT"), factory)
    [producer] = made
    assert (result.sent, result.delivered, result.failed, result.ok) == (count, count, 0, True)
    assert [value for _, value, _ in producer.sent] == lines
    assert {topic for topic, _, _ in producer.sent} == {"stock_bars"}
    keys = [key for _, _, key in producer.sent]
    assert all(uuid.UUID(key).version == 4 and str(uuid.UUID(key)) == key for key in keys)
    assert len(set(keys)) == count


def test_failed_deliveries_are_counted_by_error():
    """Delivery callbacks with an error count as failed, grouped by the error text."""
    result = publish.publish(
        [b"1", b"2", b"3", b"4"],
        "t",
        {},
        lambda config: CapturingProducer(config, fail_every=2),
    )
    assert (result.sent, result.delivered, result.failed, result.ok) == (4, 2, 2, False)
    assert result.errors == {"Broker: Message size too large": 2}


def test_rate_paces_the_messages():
    """--rate N spaces message i at i/N seconds from the start."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    result = publish.publish(
        [b"a", b"b", b"c", b"d"], "t", {}, CapturingProducer, rate=10.0, clock=lambda: now[0], sleep=sleep
    )
    assert result.sent == 4 and slept == [0.1, 0.1, 0.1]


@pytest.mark.integration
def test_closed_port_fails_every_message_and_exits_non_zero(tmp_path: Path, capsys):
    """A real confluent-kafka producer against a loopback port with no broker: all failed, exit 1."""
    path = tmp_path / "replay.jsonl"
    path.write_bytes(b'{"_airbyte_stream": "price"}\n\n{"_airbyte_stream": "price", "n": 2}\n')
    args = _parse(
        ["--bootstrap", f"127.0.0.1:{free_port()}", "--security-protocol", "PLAINTEXT", "--timeout", "1.5", str(path)]
    )
    assert args.run(args) == 1
    out = capsys.readouterr().out
    assert "sent 2, delivered 0, failed 2" in out
    assert "2 x Local: Message timed out" in out
