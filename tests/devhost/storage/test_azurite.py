"""Azurite per home: one process under a lock, restarts on its recorded port, and writes made durable on demand.

Every test runs its own Azurite in a private $STOCKCAST_HOME on a free port; the session's
Azurite (tests/conftest.py) is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from azure.core.exceptions import AzureError

from devhost.shared.processes import alive, free_port, stop_group
from devhost.storage import azurite
from functions.settings import get_settings
from functions.shared.storage import bars_container, connection_string_client

pytestmark = pytest.mark.integration


@contextmanager
def private_home(path: Path) -> Iterator[Path]:
    """``path`` as $STOCKCAST_HOME with its own Azurite port; the environment and caches restored after."""
    saved = dict(os.environ)
    os.environ.update({"STOCKCAST_HOME": str(path), "STOCKCAST_AZURITE_PORT": "0", "SCORING_PORT": str(free_port())})
    for key in ("BarsStorage", "MLFLOW_TRACKING_URI"):  # the session's services stay out of it
        os.environ.pop(key, None)
    get_settings.cache_clear()
    bars_container.cache_clear()
    try:
        yield path
    finally:
        azurite.stop(path)
        for pid in azurite.instances(path):  # whatever a failed test left behind
            stop_group(pid)
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        bars_container.cache_clear()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A private, empty home; its Azurite is stopped afterwards."""
    with private_home(tmp_path / "home") as path:
        yield path


def container(blob: azurite.Azurite):
    """The bars container of ``blob``, created if needed, with the app's bounded client."""
    client = connection_string_client(blob.connection_string, get_settings()).get_container_client("bars")
    if not client.exists():
        client.create_container()
    return client


def kill9(blob: azurite.Azurite) -> None:
    """SIGKILL Azurite and wait until it is gone: no chance to save anything."""
    os.killpg(blob.pid, signal.SIGKILL)
    while alive(blob.pid):
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _settings_for_clients(home: Path) -> None:
    """get_settings() needs the app settings; the local sample's values are what devhost exports."""
    from devhost.shared.home import apply_app_settings

    apply_app_settings({"BarsStorage": "UseDevelopmentStorage=true", "MLFLOW_TRACKING_URI": "sqlite://"})
    get_settings.cache_clear()


def test_concurrent_ensure_starts_one_azurite(home):
    """Eight threads asking for the home's Azurite at once get the same one; one process serves the folder."""
    results: list[azurite.Azurite] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        results.append(azurite.ensure(home))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8 and len(set(results)) == 1
    assert azurite.instances(home) == [results[0].pid]


def test_dead_azurite_restarts_on_its_recorded_port(home):
    """After a crash the next ensure() starts a new process on the same port, so old connection strings work."""
    first = azurite.ensure(home)
    kill9(first)
    assert azurite.running(home) is None
    second = azurite.ensure(home)
    assert second.pid != first.pid and second.port == first.port
    assert second.connection_string == first.connection_string


def test_an_unrecorded_azurite_on_the_folder_is_stopped_before_a_new_one_starts(home):
    """An Azurite on this home's data that the record does not name (lost record) is stopped, its data kept."""
    first = azurite.ensure(home)
    container(first).upload_blob("raw/kept", b"kept")
    (home / "run" / "azurite.json").unlink()  # as if an older devhost or a crash lost the record
    second = azurite.ensure(home)
    assert not alive(first.pid)
    assert azurite.instances(home) == [second.pid]
    assert container(second).download_blob("raw/kept").readall() == b"kept"  # SIGTERM saved the index


@pytest.mark.slow
def test_without_flush_a_kill_loses_acknowledged_writes(home):
    """The problem, shown: Azurite autosaves its index every 5 s, so kill -9 right after writes loses them."""
    blob = azurite.ensure(home)
    index = home / "azurite" / "__azurite_db_blob__.json"
    saved_at = index.stat().st_mtime_ns
    bars = container(blob)
    deadline = time.monotonic() + azurite.AUTOSAVE_SECONDS + 2
    while index.stat().st_mtime_ns == saved_at and time.monotonic() < deadline:
        time.sleep(0.01)  # the autosave that stores the new container: the next one is ~5 s away
    assert index.stat().st_mtime_ns != saved_at
    for i in range(20):
        bars.upload_blob(f"raw/{i}", b"x")
    kill9(blob)
    after = container(azurite.ensure(home))
    assert list(after.list_blobs()) == []


@pytest.mark.slow
def test_flush_makes_every_acknowledged_write_survive_kill_9(home):
    """Writes acknowledged before flush() returns are all there after SIGKILL and a restart, with their bytes."""
    blob = azurite.ensure(home)
    bars = container(blob)
    acknowledged: list[str] = []
    stop = threading.Event()

    def write() -> None:  # keeps writing while flush runs: the index is saved under load
        i = 0
        while not stop.is_set():
            name = f"raw/{i:05d}"
            try:
                bars.upload_blob(name, name.encode())
            except AzureError:  # the kill below
                return
            acknowledged.append(name)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.0)
    before = list(acknowledged)
    started = time.perf_counter()
    assert azurite.flush(home, since=blob) is True
    took = time.perf_counter() - started
    kill9(blob)
    stop.set()
    writer.join(timeout=30)
    after = container(azurite.ensure(home))
    names = {b.name for b in after.list_blobs()}
    assert len(before) > 10 and set(before) <= names
    assert all(after.download_blob(n).readall() == n.encode() for n in before[-5:])
    assert took < 1.0, f"flush took {took:.3f}s"


def test_flush_refuses_to_vouch_for_a_restarted_azurite(home):
    """flush(since=old) after the Azurite was replaced says the writes may be lost, rather than True."""
    first = azurite.ensure(home)
    kill9(first)
    azurite.ensure(home)
    with pytest.raises(azurite.NotSavedError):
        azurite.flush(home, since=first)


def test_unsaved_writes_saved_by_the_azurite_that_took_them_survive_kill_9(home):
    """UnsavedWrites.save() after writes makes them durable; a second save with nothing new written is a no-op."""
    blob = azurite.ensure(home)
    bars = container(blob)
    unsaved = azurite.UnsavedWrites(home)
    unsaved.writing()
    bars.upload_blob("raw/a", b"a")
    unsaved.writing()  # still the same window: the Azurite that took the first write is the one to save
    bars.upload_blob("raw/b", b"b")
    unsaved.save()
    kill9(blob)
    unsaved.save()  # nothing written since: not even the dead Azurite is asked
    after = container(azurite.ensure(home))
    assert {b.name: after.download_blob(b.name).readall() for b in after.list_blobs()} == {"raw/a": b"a", "raw/b": b"b"}


def test_unsaved_writes_refuse_an_azurite_restarted_since_they_began(home):
    """Writes whose Azurite was replaced since they began are not vouched for; nor are writes begun with none up."""
    blob = azurite.ensure(home)
    bars = container(blob)
    unsaved = azurite.UnsavedWrites(home)
    unsaved.writing()
    bars.upload_blob("raw/lost", b"x")
    kill9(blob)
    restarted = azurite.ensure(home)  # up from its predecessor's last save, which may predate the write
    with pytest.raises(azurite.NotSavedError, match=f"pid {blob.pid} is gone"):
        unsaved.save()
    kill9(restarted)
    unsaved.writing()  # no Azurite runs now: whichever starts next takes the writes
    azurite.ensure(home)
    with pytest.raises(azurite.NotSavedError, match="no Azurite ran"):
        unsaved.save()


def test_stop_saves_and_leaves_no_process(home):
    """stop() saves the index, stops the process and removes the record."""
    blob = azurite.ensure(home)
    container(blob).upload_blob("raw/x", b"x")
    assert azurite.stop(home) is True
    assert not alive(blob.pid) and azurite.instances(home) == []
    assert not (home / "run" / "azurite.json").exists()
    assert container(azurite.ensure(home)).download_blob("raw/x").readall() == b"x"


def test_save_hook_is_loaded(home):
    """The preloaded hook announces itself with Azurite's pid; without it flush() would fall back to waiting."""
    blob = azurite.ensure(home)
    record = orjson.loads((home / "run" / "azurite-saved.json").read_bytes())
    assert record["pid"] == blob.pid


def test_azurite_loads_the_telemetry_stand_in_and_no_opentelemetry():
    """The npm install holds devhost's applicationinsights stand-in, which refuses any call, and no OpenTelemetry."""
    probe = "try { require('applicationinsights').setup('x') } catch (e) { console.log(e.message) }"
    out = subprocess.run(["node", "-e", probe], cwd=azurite.PACKAGE, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "Azurite telemetry is off in Stockcast: run Azurite with --disableTelemetry"
    assert not (azurite.REPO_ROOT / "node_modules" / "@opentelemetry").exists()
