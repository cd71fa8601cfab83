"""The one typed settings object of the Function App, read once from app settings.

This is the only module that reads the environment. :func:`get_settings` parses it on first use
(never at import time) and raises :class:`SettingsError` naming every missing or invalid key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any


class SettingsError(RuntimeError):
    """App settings are missing or invalid; the message names every offending key."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed app settings. Field metadata names the app setting and how to parse it."""

    bars_container: str
    bars_eventhub_name: str
    bars_consumer_group: str
    bars_storage_connection_string: str | None = None
    bars_storage_blob_service_uri: str | None = None
    bars_storage_client_id: str | None = None
    latest_window: int = 512
    latest_max_attempts: int = 8

    @property
    def uses_identity(self) -> bool:
        """Whether storage is reached with a managed identity rather than a connection string."""
        return self.bars_storage_connection_string is None


# field name -> (app setting, parser, required)
_KEYS: dict[str, tuple[str, Callable[[str], Any], bool]] = {
    "bars_container": ("BARS_CONTAINER", str, True),
    "bars_eventhub_name": ("BARS_EVENTHUB_NAME", str, True),
    "bars_consumer_group": ("BARS_CONSUMER_GROUP", str, True),
    "bars_storage_connection_string": ("BarsStorage", str, False),
    "bars_storage_blob_service_uri": ("BarsStorage__blobServiceUri", str, False),
    "bars_storage_client_id": ("BarsStorage__clientId", str, False),
    "latest_window": ("LATEST_WINDOW", _positive_int, False),
    "latest_max_attempts": ("LATEST_MAX_ATTEMPTS", _positive_int, False),
}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse settings from a mapping of app settings; raise SettingsError listing every problem."""
    assert set(_KEYS) == {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    missing: list[str] = []
    invalid: list[str] = []
    for name, (key, parse, required) in _KEYS.items():
        raw = environ.get(key, "").strip()
        if not raw:
            if required:
                missing.append(key)
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            invalid.append(f"{key}={raw!r} ({exc})")
    if not values.get("bars_storage_connection_string") and not values.get("bars_storage_blob_service_uri"):
        missing.append("BarsStorage or BarsStorage__blobServiceUri")
    problems = []
    if missing:
        problems.append("missing app settings: " + ", ".join(missing))
    if invalid:
        problems.append("invalid app settings: " + "; ".join(invalid))
    if problems:
        raise SettingsError("; ".join(problems))
    return Settings(**values)


@cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first call."""
    return load_settings(os.environ)
