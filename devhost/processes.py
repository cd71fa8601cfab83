"""Small helpers for the local backend's background processes."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import orjson


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process of the local backend: this one plus ``overrides``."""
    return {**os.environ, **overrides}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None where that cannot be read.

    With the pid it names one process for good: a recorded pid that the kernel has since given to
    another process shows a different start.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def live_record(path: Path) -> dict | None:
    """The JSON record of a background process (``{"pid", ...}``), if it exists and that process runs."""
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("pid", -1) > 0 and alive(record["pid"]) else None


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """Terminate a process group started with ``start_new_session``; kill it if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on loopback ``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preferred_or_free(preferred: int) -> int:
    """``preferred`` if nothing listens there, else any free loopback port (0 asks for any)."""
    return preferred if preferred and not listening(preferred) else free_port()
