"""The one typed settings object of the Function App, read once from app settings.

This is the only module that reads the environment. :func:`get_settings` parses it on first use
(never at import time) and raises :class:`SettingsError` naming every missing or invalid key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any


class SettingsError(RuntimeError):
    """App settings are missing or invalid; the message names every offending key."""


def _backend(raw: str) -> str:
    if raw not in ("aml", "local"):
        raise ValueError("must be 'aml' or 'local'")
    return raw


def _scoring_auth(raw: str) -> str:
    if raw not in ("none", "key", "aml_token"):
        raise ValueError("must be 'none', 'key' or 'aml_token'")
    return raw


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_seconds(raw: str) -> float:
    value = float(raw)
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(raw: str) -> float:
    value = float(raw)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be zero or a positive integer")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed app settings. Field metadata names the app setting and how to parse it."""

    bars_container: str
    bars_eventhub_name: str
    bars_consumer_group: str
    train_schedule: str
    bars_storage_connection_string: str | None = None
    bars_storage_blob_service_uri: str | None = None
    bars_storage_client_id: str | None = None
    # storage clients: bounded, so a dead endpoint fails in seconds, not the SDK's minutes
    storage_connect_timeout_s: float = 3.0
    storage_timeout_s: float = 10.0
    storage_retries: int = 2
    storage_retry_backoff_s: float = 0.5
    latest_window: int = 512
    latest_max_attempts: int = 8
    ml_backend: str = "local"
    model_name: str = "stockcast-lstm-attention"
    experiment: str = "stockcast"
    # local backend (devhost)
    stockcast_home: str | None = None
    mlflow_tracking_uri: str | None = None
    scoring_port: int = 5001
    train_args: str = ""
    # predict
    scoring_url: str | None = None
    scoring_auth: str = "none"
    scoring_timeout_s: float = 5.0
    scoring_retries: int = 2
    predict_history_bars: int = 90
    predict_cache_seconds: float = 2.0
    predict_max_bars: int = 5000
    # Azure ML backend
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    aml_workspace: str | None = None
    aml_compute: str = "cpu-cluster"
    aml_bars_datastore: str = "bars"
    aml_environment_image: str = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    aml_endpoint: str | None = None
    aml_instance_type: str = "stockcast-scoring"  # bicep/hooks/instancetype.yaml
    azure_client_id: str | None = None
    # telemetry: custom metrics and events go to App Insights only when this is set
    applicationinsights_connection_string: str | None = None

    @property
    def scoring_endpoint(self) -> str:
        """Where predict sends scoring requests: SCORING_URL, else the local scoring server."""
        return self.scoring_url or f"http://127.0.0.1:{self.scoring_port}/score"

    @property
    def uses_identity(self) -> bool:
        """Whether storage is reached with a managed identity rather than a connection string."""
        return self.bars_storage_connection_string is None


# field name -> (app setting, parser, required)
_KEYS: dict[str, tuple[str, Callable[[str], Any], bool]] = {
    "bars_container": ("BARS_CONTAINER", str, True),
    "bars_eventhub_name": ("BARS_EVENTHUB_NAME", str, True),
    "bars_consumer_group": ("BARS_CONSUMER_GROUP", str, True),
    "train_schedule": ("TRAIN_SCHEDULE", str, True),
    "bars_storage_connection_string": ("BarsStorage", str, False),
    "bars_storage_blob_service_uri": ("BarsStorage__blobServiceUri", str, False),
    "bars_storage_client_id": ("BarsStorage__clientId", str, False),
    "storage_connect_timeout_s": ("STORAGE_CONNECT_TIMEOUT_SECONDS", _positive_seconds, False),
    "storage_timeout_s": ("STORAGE_TIMEOUT_SECONDS", _positive_seconds, False),
    "storage_retries": ("STORAGE_RETRIES", _non_negative_int, False),
    "storage_retry_backoff_s": ("STORAGE_RETRY_BACKOFF_SECONDS", _non_negative_seconds, False),
    "latest_window": ("LATEST_WINDOW", _positive_int, False),
    "latest_max_attempts": ("LATEST_MAX_ATTEMPTS", _positive_int, False),
    "ml_backend": ("ML_BACKEND", _backend, False),
    "model_name": ("MODEL_NAME", str, False),
    "experiment": ("EXPERIMENT_NAME", str, False),
    "stockcast_home": ("STOCKCAST_HOME", str, False),
    "mlflow_tracking_uri": ("MLFLOW_TRACKING_URI", str, False),
    "scoring_port": ("SCORING_PORT", _positive_int, False),
    "train_args": ("TRAIN_ARGS", str, False),
    "scoring_url": ("SCORING_URL", str, False),
    "scoring_auth": ("SCORING_AUTH", _scoring_auth, False),
    "scoring_timeout_s": ("SCORING_TIMEOUT_SECONDS", float, False),
    "scoring_retries": ("SCORING_RETRIES", int, False),
    "predict_history_bars": ("PREDICT_HISTORY_BARS", _positive_int, False),
    "predict_cache_seconds": ("PREDICT_CACHE_SECONDS", float, False),
    "predict_max_bars": ("PREDICT_MAX_BARS", _positive_int, False),
    "azure_subscription_id": ("AZURE_SUBSCRIPTION_ID", str, False),
    "azure_resource_group": ("AZURE_RESOURCE_GROUP", str, False),
    "aml_workspace": ("AML_WORKSPACE", str, False),
    "aml_compute": ("AML_COMPUTE", str, False),
    "aml_bars_datastore": ("AML_BARS_DATASTORE", str, False),
    "aml_environment_image": ("AML_ENVIRONMENT_IMAGE", str, False),
    "aml_endpoint": ("AML_ENDPOINT", str, False),
    "aml_instance_type": ("AML_INSTANCE_TYPE", str, False),
    "azure_client_id": ("AZURE_CLIENT_ID", str, False),
    "applicationinsights_connection_string": ("APPLICATIONINSIGHTS_CONNECTION_STRING", str, False),
}
# what each ML backend cannot run without
_BACKEND_KEYS = {
    "aml": ("azure_subscription_id", "azure_resource_group", "aml_workspace", "aml_endpoint"),
    "local": ("stockcast_home", "mlflow_tracking_uri"),
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
    backend = values.get("ml_backend", "local")
    missing.extend(f"{_KEYS[name][0]} (ML_BACKEND={backend})" for name in _BACKEND_KEYS[backend] if name not in values)
    problems = []
    if missing:
        problems.append("missing app settings: " + ", ".join(missing))
    if invalid:
        problems.append("invalid app settings: " + "; ".join(invalid))
    if problems:
        raise SettingsError("; ".join(problems))
    return Settings(**values)


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process of the local backend: this one plus ``overrides``."""
    return {**os.environ, **overrides}


@cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first call."""
    return load_settings(os.environ)
