"""Where devhost keeps its state, and the app settings it gives the functions."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from devhost.shared.processes import listening, live_record

REPO_ROOT = Path(__file__).resolve().parents[2]


def stockcast_home() -> Path:
    """``$STOCKCAST_HOME`` (default ``.local/`` in the repository), created on demand."""
    home = Path(os.environ.get("STOCKCAST_HOME") or REPO_ROOT / ".local").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def local_settings() -> dict[str, str]:
    """The ``Values`` of local.settings.json, or of the committed sample when there is none."""
    for name in ("local.settings.json", "local.settings.sample.json"):
        path = REPO_ROOT / name
        if path.exists():
            return {k: str(v) for k, v in orjson.loads(path.read_bytes()).get("Values", {}).items()}
    return {}


def apply_app_settings(overrides: dict[str, str]) -> None:
    """Export local settings as app settings (existing environment wins), then ``overrides``."""
    for key, value in local_settings().items():
        os.environ.setdefault(key, value)
    os.environ.update(overrides)


@contextlib.contextmanager
def home_lock(home: Path, service: str) -> Iterator[None]:
    """Hold the home's exclusive lock for ``service`` (``run/<service>.lock``) for the block.

    ``flock`` is released by the kernel when its holder dies, so a crashed command never leaves
    the home locked.
    """
    path = home / "run" / f"{service}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_released(port: int, patience: float) -> bool:
    """Whether nothing listens on ``port``, waiting up to ``patience`` seconds for a dying process to let go."""
    deadline = time.monotonic() + patience
    while listening(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def up_state_file(home: Path) -> Path:
    """Where a running ``devhost up`` records its pid and port."""
    return home / "run" / "devhost.json"


def running_up(home: Path) -> dict | None:
    """The running ``devhost up`` of this home, if any (read without importing the host)."""
    return live_record(up_state_file(home))
