"""Chaos against a private Azurite: killed mid-replay, storage down, two commands racing, kill -9 after success.

Each test runs in its own $STOCKCAST_HOME with its own Azurite on a free port; the session's
Azurite (tests/conftest.py) is never touched, let alone killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import AzureError

from devhost.app.host import Host
from devhost.app.runtime import prepare
from devhost.kafka.replay import make_batches
from devhost.market.feed import FeedConfig, generate
from devhost.storage import azurite
from devhost.storage.store import stored_bars
from functions.settings import get_settings
from functions.shared.bars import from_parquet
from functions.shared.latest import LatestUpdateError, latest_blob_name
from functions.shared.storage import bars_container
from tests.devhost.storage.test_azurite import kill9, private_home
from tests.factories import oracle, table_bars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
CFG = FeedConfig(symbols=("AAA", "BBB", "CCC"), days=2, sync_every=15, seed=11)
BODIES = list(generate(CFG))
TRUTH = oracle(BODIES)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A private, empty home; its Azurite is stopped afterwards."""
    with private_home(tmp_path / "home") as path:
        yield path


def _devhost(*args: str) -> subprocess.Popen:
    """Start ``python -m devhost`` with this (private) environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "devhost", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Consumer:
    """Delivers batches in order as an Event Hubs consumer does, with a checkpoint that means "on disk".

    A failed batch is redelivered (the function's retry policy is unbounded). The checkpoint
    moves only after Azurite confirmed it saved what the batches wrote, to the same Azurite
    process that took the writes; when anything fails, delivery resumes from the checkpoint, as
    a consumer restarted after a crash would.
    """

    def __init__(self, home: Path, batches: list, every: int = 3) -> None:
        self.home, self.batches, self.every = home, batches, every
        self.host = Host(retry_cap=1, retry_wait_cap=0.05)
        self.checkpoint = 0
        self.rewinds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """Deliver every batch; keep the first unexpected error for the test."""
        try:
            self._deliver()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def _deliver(self) -> None:
        fn = self.host.function("eventHubTrigger", "ingest")
        deadline = time.monotonic() + 180
        position, serving = 0, azurite.running(self.home)
        while position < len(self.batches):
            assert time.monotonic() < deadline, "replay did not finish"
            try:
                if serving is None:
                    raise azurite.NotSavedError("no Azurite")
                self.host.invoke(fn, self.batches[position])
                position += 1
                if position % self.every == 0 or position == len(self.batches):
                    azurite.flush(self.home, since=serving)
                    self.checkpoint = position
            except (AzureError, LatestUpdateError, azurite.NotSavedError):  # storage down, as the host sees it
                self.rewinds += 1
                position = self.checkpoint
                time.sleep(0.1)
                serving = azurite.running(self.home)


def test_azurite_killed_mid_replay_loses_nothing(home):
    """SIGKILL Azurite a third of the way through a replay, restart it: the stored true bars equal the oracle."""
    runtime = prepare()
    consumer = Consumer(home, make_batches(BODIES, 2, 2, seed=3))
    assert len(consumer.batches) > 30
    thread = threading.Thread(target=consumer.run, name="consumer")
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while consumer.checkpoint < len(consumer.batches) // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert consumer.checkpoint < len(consumer.batches), "the replay finished before the kill"
        kill9(runtime.azurite)
        time.sleep(0.5)  # the consumer meets a dead storage for a while
        restarted = azurite.ensure(home)
    finally:
        thread.join(timeout=240)
    assert consumer.error is None, repr(consumer.error)
    assert restarted.port == runtime.azurite.port and restarted.pid != runtime.azurite.pid
    assert consumer.rewinds >= 1 and consumer.checkpoint == len(consumer.batches)
    container = bars_container(get_settings())
    assert table_bars(stored_bars(container)) == TRUTH
    for symbol in CFG.symbols:  # latest/ merged by the true-bar rule; a day is within LATEST_WINDOW
        latest = from_parquet(container.download_blob(latest_blob_name(symbol)).readall())
        expected = {k: v for k, v in TRUTH.items() if k[0] == symbol}
        assert table_bars(latest) == dict(sorted(expected.items())[-get_settings().latest_window :])


def test_dead_azurite_fails_a_storage_call_within_five_seconds(home):
    """Storage down for real: after Azurite is killed, the app's container client fails in under 5 s."""
    runtime = prepare()
    kill9(runtime.azurite)
    started = time.perf_counter()
    with pytest.raises(AzureError):
        bars_container(get_settings()).upload_blob("latest/AAA.parquet", b"x", overwrite=True)
    assert time.perf_counter() - started < 5.0


def test_two_commands_on_an_empty_home_start_one_azurite(home):
    """`devhost bars` twice at once on a home without Azurite: both succeed, on one Azurite process."""
    procs = [_devhost("bars") for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("bars stored: 0" in " ".join(out.split()) for out in outputs), outputs
    blob = azurite.running(home)
    assert blob is not None and azurite.instances(home) == [blob.pid]
    assert (home / "run" / "azurite.log").read_text().count("successfully listens") == 1


def test_replay_success_survives_kill_9_right_after(home, tmp_path):
    """Once `devhost replay` exits 0, kill -9 of Azurite loses nothing: the command waited for the save."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"".join(b + b"\n" for b in BODIES))
    proc = _devhost("replay", str(feed), "--batch-size", "8")
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output
    blob = azurite.running(home)
    assert blob is not None
    kill9(blob)  # right after the command reported success
    runtime = prepare()  # restarts it
    assert runtime.azurite.pid != blob.pid
    assert table_bars(stored_bars(runtime.container)) == TRUTH
