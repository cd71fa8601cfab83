"""Where devhost keeps its state, and the app settings it gives the functions."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]


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
