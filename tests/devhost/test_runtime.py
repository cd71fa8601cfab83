"""The scoring port of a home: every devhost command of the home agrees, and homes never share one."""

from __future__ import annotations

import socket

from devhost.runtime import DEFAULT_SCORING_PORT, scoring_port


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
