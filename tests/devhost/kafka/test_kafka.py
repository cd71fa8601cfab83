"""The Kafka path offline: a real local broker, the Event Hubs trigger emulation, real Azurite in private homes.

Every test runs devhost in a home of its own (``STOCKCAST_AZURITE_PORT=0``), as subprocesses, so
the session's Azurite and app settings are never touched.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import orjson
import pyarrow.parquet as pq
import pytest

from devhost.kafka import broker as kafka
from devhost.kafka.publish import publish_local
from devhost.kafka.trigger import TriggerOptions, to_events
from devhost.market.feed import FeedConfig, generate
from devhost.shared.processes import alive, free_port
from tests.e2e.cli import ROOT, devhost, private_env
from tests.e2e.test_poison import poison
from tests.factories import oracle, table_bars

TOPIC, GROUP = "stock_bars", "ingest"  # local.settings.sample.json's BARS_EVENTHUB_NAME and BARS_CONSUMER_GROUP
NEVER = "0 0 0 1 1 *"  # a timer schedule that does not fire during a test


class FakeMessage:
    """The part of a confluent-kafka Message that the trigger reads."""

    def __init__(self, offset: int, value: bytes | None, key: bytes | None, ts_ms: int) -> None:
        self._offset, self._value, self._key, self._ts = offset, value, key, ts_ms

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)  # TIMESTAMP_CREATE_TIME


def test_host_json_batching_options():
    """TriggerOptions carry host.json's eventHubs batch size, wait, prefetch, checkpoint frequency and start."""
    options = TriggerOptions.from_host_json()
    assert (options.max_batch, options.min_batch, options.max_wait_s) == (256, 1, 60.0)
    assert (options.prefetch, options.checkpoint_every, options.from_start) == (512, 1, True)
    assert options.due(1, 0.0) and not options.due(0, 60.0)
    filling = TriggerOptions.from_host_json(min_batch=32, max_wait_s=5.0)
    assert filling.due(256, 0.0) and filling.due(32, 0.0) and not filling.due(31, 4.9) and filling.due(31, 5.0)


def test_events_carry_azure_metadata():
    """Records become EventHubEvents with Azure's partition context, sequence number = offset, enqueued time, key."""
    ts = int(dt.datetime(2026, 11, 3, 14, 30, 0, 123000, tzinfo=dt.UTC).timestamp() * 1000)
    messages = [
        FakeMessage(41, b'{"a":1}', b"k-1", ts),
        FakeMessage(42, b"\xff\xfe", None, ts + 5),
        FakeMessage(43, None, b"", ts),
    ]
    context = {
        "ConsumerGroup": GROUP,
        "EventHubName": TOPIC,
        "FullyQualifiedNamespace": "127.0.0.1",
        "PartitionId": "3",
    }
    events = to_events(messages, context)
    assert [e.get_body() for e in events] == [b'{"a":1}', b"\xff\xfe", b""]
    assert [e.sequence_number for e in events] == [41, 42, 43]
    assert [e.offset for e in events] == [41, 42, 43]
    assert [e.partition_key for e in events] == ["k-1", None, ""]
    assert events[0].enqueued_time == dt.datetime(2026, 11, 3, 14, 30, 0, 123000, tzinfo=dt.UTC)
    assert events[1].enqueued_time - events[0].enqueued_time == dt.timedelta(milliseconds=5)
    assert events[0].metadata["PartitionContext"] == context
    assert [p["SequenceNumber"] for p in events[0].metadata["SystemPropertiesArray"]] == [41, 42, 43]


@pytest.mark.integration
def test_one_broker_per_home_and_a_restart_says_what_memory_storage_lost(tmp_path):
    """Concurrent ensures start one broker; a killed one is replaced on its port, topic recreated empty, loss told."""
    home = tmp_path / "home"
    try:
        with ThreadPoolExecutor(4) as pool:
            brokers = list(pool.map(lambda _: kafka.ensure(home, TOPIC, GROUP), range(4)))
        assert len({b.pid for b in brokers}) == 1 and brokers[0] == kafka.running(home)
        first = brokers[0]
        assert publish_local(first.bootstrap, TOPIC, [b"x"] * 7).ok
        assert kafka.lag(first.bootstrap, TOPIC, GROUP).total == 7
        os.kill(first.pid, signal.SIGKILL)
        told: list[str] = []
        again = kafka.ensure(home, TOPIC, GROUP, say=told.append)
        assert again.pid != first.pid and again.port == first.port
        [message] = told
        assert f"pid {first.pid}" in message and "in memory" in message and "not yet ingested" in message
        lag = kafka.lag(again.bootstrap, TOPIC, GROUP)
        assert [(p.partition, p.high, p.committed) for p in lag.partitions] == [(p, 0, None) for p in range(4)]
        assert kafka.ensure(home, TOPIC, GROUP, say=told.append) == again and len(told) == 1
    finally:
        assert kafka.stop(home)
    assert kafka.running(home) is None and not kafka.stop(home)


def _status(env: dict[str, str]) -> dict:
    done = devhost(env, "status", "--json", timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout)


def _wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stored(env: dict[str, str], home: Path) -> tuple[dict, int, str]:
    """The true bars in the home's storage (oracle form), their row count, and what `devhost bars` printed."""
    out = home / "bars.parquet"
    done = devhost(env, "bars", "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out)
    return table_bars(table), table.num_rows, " ".join(done.stdout.split())


def _write(path: Path, bodies: list[bytes]) -> Path:
    assert not any(b"\n" in b for b in bodies)  # one event per line
    path.write_bytes(b"".join(b + b"\n" for b in bodies))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A private home and its environment; everything devhost started there is stopped afterwards."""
    home = tmp_path / "home"
    env = private_env(home)
    try:
        yield home, env
    finally:
        devhost(env, "stop", timeout=120)
        kafka.stop(home)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.e2e
def test_up_no_feed_ingests_published_truth_and_survives_a_broker_restart(home, tmp_path):
    """Published real and hostile events end as the exact truth; a killed broker is restarted, explained, used."""
    home, env = home
    good = list(generate(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=2, seed=11, bad_events=6)))
    bad = [b for _, b in poison()]
    first = good[: len(good) // 2] + bad + good[len(good) // 2 :]
    port = free_port()
    command = [sys.executable, "-m", "devhost", "up", "--no-feed", "--no-mlflow-ui", "--port", str(port), "--quiet"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--schedule", NEVER, "--no-first-tick"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        state = _wait_for(
            lambda: (s := _status(env))["services"]["devhost up"]["running"] and s, 120, "devhost up to be up"
        )
        kafka_state = state["kafka"]
        assert (kafka_state["topic"], kafka_state["consumer_group"], kafka_state["partitions"]) == (TOPIC, GROUP, 4)
        assert kafka_state["running"] and kafka_state["consumer_running"]
        bootstrap = kafka_state["bootstrap"]
        assert bootstrap == f"127.0.0.1:{orjson.loads((home / 'run' / 'kafka.json').read_bytes())['port']}"

        done = devhost(
            env, "publish", "--bootstrap", bootstrap, "--plaintext", str(_write(tmp_path / "a.jsonl", first))
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"sent {len(first)}, delivered {len(first)}, failed 0" in done.stdout
        caught_up = _wait_for(lambda: (s := _status(env)["kafka"])["lag"] == 0 and s, 120, "lag 0")
        assert sum(p["high"] for p in caught_up["lag_by_partition"].values()) == len(first)
        assert all(p["committed"] == p["high"] for p in caught_up["lag_by_partition"].values())
        stored, rows, printed = _stored(env, home)
        assert stored == oracle(first) and rows == len(stored)
        assert f"dead-lettered events: {5 + len(bad)}" in printed  # the feed's 5 malformed events and every poison

        broker_pid = kafka_state["pid"]
        os.kill(broker_pid, signal.SIGKILL)
        restarted = _wait_for(
            lambda: (s := _status(env)["kafka"])["running"] and s["pid"] != broker_pid and s, 60, "a new broker"
        )
        assert restarted["bootstrap"] == bootstrap and restarted["lag"] == 0  # same port, empty topic
        assert {p["high"] for p in restarted["lag_by_partition"].values()} == {0}
        text = _wait_for(
            lambda: "keeps everything in memory" in (t := " ".join(log.read_text().split())) and t, 30, "why"
        )
        assert "not yet ingested" in text and "are gone" in text

        more = list(generate(FeedConfig(symbols=("DDD",), days=1, seed=12, start=dt.date(2026, 11, 4))))
        done = devhost(env, "publish", "--bootstrap", bootstrap, "--plaintext", str(_write(tmp_path / "b.jsonl", more)))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _wait_for(lambda: _status(env)["kafka"]["lag"] == 0, 120, "lag 0 after the restart")
        stored, rows, _ = _stored(env, home)
        assert stored == oracle(first + more) and rows == len(stored)
        assert not (home / "jobs").exists()  # --no-first-tick and a schedule that never fires: no training
        broker_pid = _status(env)["kafka"]["pid"]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "stopped: " in text and "kafka broker" in text.split("stopped: ")[-1]
    assert not alive(broker_pid)
    assert [line for line in text.splitlines() if line.startswith(("feed:", "tick:", "rollout:"))] == []  # --quiet
    assert _status(env)["kafka"]["running"] is False


def _worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.devhost.kafka.kafka_worker", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _batches(stdout: str, kind: str) -> list[SimpleNamespace]:
    """Batch lines (``KIND p2-32-47 16``) the worker printed."""
    out = []
    for line in stdout.splitlines():
        word, *rest = line.split()
        if word == kind:
            partition, first, last = rest[0][1:].split("-")
            out.append(
                SimpleNamespace(
                    id=rest[0], partition=int(partition), first=int(first), last=int(last), events=int(rest[1])
                )
            )
    return out


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.e2e
def test_consumer_killed_between_invoke_and_checkpoint_redelivers_exactly(home):
    """A consumer killed before its checkpoint hands the batch on; storage ends exact, no true bar twice."""
    home, env = home
    bodies = list(generate(FeedConfig(symbols=("AAA", "BBB"), days=2, seed=21, sync_every=20, bad_events=6)))
    broker = kafka.ensure(home, TOPIC, GROUP)
    published = publish_local(broker.bootstrap, TOPIC, bodies)
    assert published.ok and sum(published.ends.values()) == len(bodies)
    before = _status(env)["kafka"]
    assert before["lag"] == len(bodies) and not before["consumer_running"]  # nobody consumes: N > 0
    assert {int(p): v["high"] for p, v in before["lag_by_partition"].items()} == {
        p: published.ends.get(p, 0) for p in range(4)
    }

    crashed = _worker(env, "--crash-before-checkpoint", "3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    committed = _batches(crashed.stdout, "checkpointed")
    [lost] = _batches(crashed.stdout, "crash")
    assert len(committed) == 2
    after_crash = _status(env)["kafka"]
    assert not after_crash["consumer_running"]  # the kernel released the dead owner's lock
    assert after_crash["lag"] == len(bodies) - sum(b.events for b in committed) > 0
    assert after_crash["lag_by_partition"][str(lost.partition)]["committed"] in (None, lost.first)

    resumed = _worker(env, "--fail-invocations", "1")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "lag 0" in resumed.stdout
    again = [b for b in _batches(resumed.stdout, "checkpointed") if b.partition == lost.partition]
    assert again[0].first == lost.first  # at least once: the batch stored before the crash came back
    assert "failed after its retries" in resumed.stderr and "rewinds to offset" in resumed.stderr
    assert sum(b.events for b in _batches(resumed.stdout, "checkpointed")) == after_crash["lag"]
    assert _status(env)["kafka"]["lag"] == 0

    stored, rows, printed = _stored(env, home)
    truth = oracle(bodies)
    assert stored == truth and rows == len(truth)  # exact, and no (symbol, minute) twice
    assert "dead-lettered events: 5" in printed
