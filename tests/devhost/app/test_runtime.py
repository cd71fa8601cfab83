"""The runtime of a home: its scoring port, and a storage connection that follows its Azurite."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from devhost.app.runtime import DEFAULT_SCORING_PORT, keep_connected, prepare, scoring_port
from devhost.shared.processes import free_port
from devhost.storage import azurite
from functions.settings import get_settings
from functions.shared.storage import bars_container
from tests.devhost.storage.test_azurite import kill9, private_home


def test_environment_wins(tmp_path, monkeypatch):
    """SCORING_PORT from the environment is used as it is, and nothing is recorded."""
    monkeypatch.setenv("SCORING_PORT", "6123")
    assert scoring_port(tmp_path) == 6123
    assert not (tmp_path / "run" / "scoring-port").exists()


def test_recorded_port_is_reused(tmp_path, monkeypatch):
    """A port recorded for the home is what later commands get."""
    monkeypatch.delenv("SCORING_PORT", raising=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "scoring-port").write_text("6124")
    assert scoring_port(tmp_path) == 6124


def test_default_port_taken_by_another_home_gives_a_free_one(tmp_path, monkeypatch):
    """With the default port held by someone else, the home records a different, free port."""
    monkeypatch.delenv("SCORING_PORT", raising=False)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            other.bind(("127.0.0.1", DEFAULT_SCORING_PORT))
            other.listen()
        except OSError:
            pass  # already held by another process: the same situation
        port = scoring_port(tmp_path)
    assert port != DEFAULT_SCORING_PORT
    assert (tmp_path / "run" / "scoring-port").read_text() == str(port)
    assert scoring_port(tmp_path) == port


@pytest.fixture
def private(tmp_path):
    """A private home with its own Azurite (stopped afterwards), never the session's."""
    with private_home(tmp_path / "home") as home:
        yield home


@pytest.mark.integration
def test_reconnect_restarts_a_dead_azurite_on_its_port(private):
    """A runtime whose Azurite died gets it back on the same port: the clients built before work again."""
    runtime = prepare()
    runtime.container.upload_blob("raw/a", b"a")
    assert runtime.persist() is True
    kill9(runtime.azurite)
    again = runtime.reconnect()
    assert again is not runtime and again.azurite.pid != runtime.azurite.pid
    assert again.azurite.port == runtime.azurite.port
    assert runtime.container.download_blob("raw/a").readall() == b"a"
    assert again.reconnect() is again  # nothing changed since: no new clients


@pytest.mark.integration
def test_reconnect_follows_an_azurite_that_moved(private):
    """If another command restarted the home's Azurite on another port, reconnect exports the new one."""
    runtime = prepare()
    azurite.stop(runtime.home)
    os.environ["STOCKCAST_AZURITE_PORT"] = str(free_port())  # restored with the rest by private_home
    moved = azurite.ensure(runtime.home)
    assert moved.port != runtime.azurite.port
    again = runtime.reconnect()
    assert again.azurite == moved
    assert os.environ.get("BarsStorage") == moved.connection_string  # noqa: SIM112 (the binding's name)
    assert get_settings().bars_storage_connection_string == moved.connection_string
    assert bars_container(get_settings()) is again.container  # what ingest and predict use now
    assert again.container.exists()


@pytest.mark.integration
def test_keep_connected_restarts_azurite_under_a_long_running_command(private):
    """The watcher `devhost up` runs brings a killed Azurite back and says so."""
    runtime = prepare()
    stop, said = threading.Event(), []
    watcher = threading.Thread(target=keep_connected, args=(runtime, stop, said.append, 0.2))
    watcher.start()
    try:
        kill9(runtime.azurite)
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said and "restarted" in said[0]
        back = azurite.running(runtime.home)
        assert back is not None and back.port == runtime.azurite.port and back.pid != runtime.azurite.pid
        assert runtime.container.exists()
    finally:
        stop.set()
        watcher.join(timeout=10)
