"""The one typed settings object of the Function App, read once from app settings.

This is the only module that reads the environment. :func:`get_settings` parses it on first use
(never at import time) and raises :class:`SettingsError` naming every missing or invalid key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
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


def _kafka_security(raw: str) -> str:
    if raw not in ("SASL_SSL", "PLAINTEXT"):
        raise ValueError("must be 'SASL_SSL' (Event Hubs, managed identity) or 'PLAINTEXT' (a local broker)")
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


@dataclass(frozen=True)
class AppSetting:
    """How one field is read: the app setting's name, its parser, and whether it must be set."""

    field: str
    key: str
    parse: Callable[[str], Any]
    required: bool


def setting(key: str, parse: Callable[[str], Any] = str, *, default: Any = MISSING) -> Any:
    """A settings field read from app setting ``key`` with ``parse``; without a default it is required."""
    return field(default=default, metadata={"key": key, "parse": parse})


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed app settings: each field names its app setting and how to parse it (:func:`setting`)."""

    bars_container: str = setting("BARS_CONTAINER")
    bars_eventhub_name: str = setting("BARS_EVENTHUB_NAME")
    bars_consumer_group: str = setting("BARS_CONSUMER_GROUP")
    train_schedule: str = setting("TRAIN_SCHEDULE")
    bars_storage_connection_string: str | None = setting("BarsStorage", default=None)
    bars_storage_blob_service_uri: str | None = setting("BarsStorage__blobServiceUri", default=None)
    bars_storage_client_id: str | None = setting("BarsStorage__clientId", default=None)
    # the forecast stream: its consumer group of the bars hub, and the hub it publishes to
    forecast_consumer_group: str = setting("FORECAST_CONSUMER_GROUP", default="forecast")
    forecasts_eventhub_name: str = setting("FORECASTS_EVENTHUB_NAME", default="stock_forecasts")
    # where the stream is produced over Kafka: the namespace's <name>.servicebus.windows.net:9093 in Azure
    forecasts_kafka_bootstrap: str | None = setting("FORECASTS_KAFKA_BOOTSTRAP", default=None)
    forecasts_kafka_security: str = setting("FORECASTS_KAFKA_SECURITY", _kafka_security, default="SASL_SSL")
    # storage clients: bounded, so a dead endpoint fails in seconds, not the SDK's minutes
    storage_connect_timeout_s: float = setting("STORAGE_CONNECT_TIMEOUT_SECONDS", _positive_seconds, default=3.0)
    storage_timeout_s: float = setting("STORAGE_TIMEOUT_SECONDS", _positive_seconds, default=10.0)
    storage_retries: int = setting("STORAGE_RETRIES", _non_negative_int, default=2)
    storage_retry_backoff_s: float = setting("STORAGE_RETRY_BACKOFF_SECONDS", _non_negative_seconds, default=0.5)
    latest_window: int = setting("LATEST_WINDOW", _positive_int, default=512)
    latest_max_attempts: int = setting("LATEST_MAX_ATTEMPTS", _positive_int, default=8)
    # raw/ compaction (functions/compact): the timer's NCRONTAB schedule, which the host resolves from the app
    # setting (this default is what local.settings.sample.json and Bicep set: every 15 minutes, 7 minutes after
    # train_trigger's ticks); how long after its end an hour counts as closed; the most hours one run compacts
    compact_schedule: str = setting("COMPACT_SCHEDULE", default="0 7-59/15 * * * *")
    # an ingest invocation names its raw/ folder as it starts and the host writes the blob as it returns, at
    # most functionTimeout (10 min, host.json) later; 30 min leaves 20 for upload retries and clock skew
    compact_margin_s: float = setting("COMPACT_MARGIN_SECONDS", _non_negative_seconds, default=1800.0)
    # a day of backlog per run: an hour of 720 batch blobs took 7 s on Azurite, 24 hours ~3 of functionTimeout's 10 min
    compact_max_hours: int = setting("COMPACT_MAX_HOURS", _positive_int, default=24)
    ml_backend: str = setting("ML_BACKEND", _backend, default="local")
    model_name: str = setting("MODEL_NAME", default="stockcast-lstm-attention")
    experiment: str = setting("EXPERIMENT_NAME", default="stockcast")
    # local backend (devhost)
    stockcast_home: str | None = setting("STOCKCAST_HOME", default=None)
    mlflow_tracking_uri: str | None = setting("MLFLOW_TRACKING_URI", default=None)
    scoring_port: int = setting("SCORING_PORT", _positive_int, default=5001)
    # scoring workers (gunicorn processes of azmlinfsrv): one per CPU of the scoring instance type, whose
    # 2 CPUs are sized in bicep/hooks/instancetype.yaml; one worker queued 8 concurrent requests
    scoring_workers: int = setting("SCORING_WORKERS", _positive_int, default=2)
    train_args: str = setting("TRAIN_ARGS", default="")
    # predict
    scoring_url: str | None = setting("SCORING_URL", default=None)
    scoring_auth: str = setting("SCORING_AUTH", _scoring_auth, default="none")
    scoring_timeout_s: float = setting("SCORING_TIMEOUT_SECONDS", _positive_seconds, default=5.0)
    scoring_retries: int = setting("SCORING_RETRIES", _non_negative_int, default=2)
    predict_history_bars: int = setting("PREDICT_HISTORY_BARS", _positive_int, default=90)
    predict_cache_seconds: float = setting("PREDICT_CACHE_SECONDS", _non_negative_seconds, default=2.0)
    predict_max_bars: int = setting("PREDICT_MAX_BARS", _positive_int, default=5000)
    # Azure ML backend
    azure_subscription_id: str | None = setting("AZURE_SUBSCRIPTION_ID", default=None)
    azure_resource_group: str | None = setting("AZURE_RESOURCE_GROUP", default=None)
    aml_workspace: str | None = setting("AML_WORKSPACE", default=None)
    aml_compute: str = setting("AML_COMPUTE", default="cpu-cluster")
    aml_bars_datastore: str = setting("AML_BARS_DATASTORE", default="bars")
    aml_environment_image: str = setting(
        "AML_ENVIRONMENT_IMAGE", default="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    )
    aml_endpoint: str | None = setting("AML_ENDPOINT", default=None)
    aml_instance_type: str = setting("AML_INSTANCE_TYPE", default="stockcast-scoring")  # bicep/hooks/instancetype.yaml
    # the training job's run-time limit: Azure ML cancels it after this long, so a tick that cannot read the
    # last job's state waits at most this (and an hour's grace) before it submits another
    training_timeout_s: int = setting("TRAINING_TIMEOUT_SECONDS", _positive_int, default=7200)
    # where the timer keeps the name of the last job it submitted (in the bars container)
    training_record_blob: str = setting("TRAINING_RECORD_BLOB", default="state/training-job.json")
    # a tick submits a full retrain (from scratch, on the longer history) when none was submitted within
    # this many hours, else a warm one; the job record keeps when the last full one was submitted
    training_full_every_hours: int = setting("TRAINING_FULL_EVERY_HOURS", _positive_int, default=24)
    # nodes of the compute cluster one training job runs on (Azure ML's TensorFlow distribution when more than one:
    # the nodes fit together, the first one alone registers); the cluster's maximum node count must allow as many
    training_nodes: int = setting("TRAINING_NODES", _positive_int, default=1)
    azure_client_id: str | None = setting("AZURE_CLIENT_ID", default=None)
    # telemetry: custom metrics and events go to App Insights only when this is set
    applicationinsights_connection_string: str | None = setting("APPLICATIONINSIGHTS_CONNECTION_STRING", default=None)

    @property
    def scoring_endpoint(self) -> str:
        """Where predict sends scoring requests when no endpoint is read: SCORING_URL, else the local server."""
        return self.scoring_url or f"http://127.0.0.1:{self.scoring_port}/score"

    @property
    def reads_scoring_uri(self) -> bool:
        """Whether the scoring address is the Azure ML endpoint's ``scoring_uri``, read at run time.

        In Azure (key or token auth) the endpoint says where it listens, and that address can change
        (an extension reinstall, an AKS stop and start); SCORING_URL, when set, overrides it.
        """
        return self.scoring_url is None and self.scoring_auth != "none"

    @property
    def uses_identity(self) -> bool:
        """Whether storage is reached with a managed identity rather than a connection string."""
        return self.bars_storage_connection_string is None


# what each ML backend cannot run without
BACKEND_FIELDS = {
    "aml": ("azure_subscription_id", "azure_resource_group", "aml_workspace", "aml_endpoint"),
    "local": ("stockcast_home", "mlflow_tracking_uri"),
}


@cache
def setting_specs() -> dict[str, AppSetting]:
    """Every settings field, by field name, with the app setting it is read from."""
    return {
        f.name: AppSetting(f.name, f.metadata["key"], f.metadata["parse"], f.default is MISSING)
        for f in fields(Settings)
    }


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse settings from a mapping of app settings; raise SettingsError listing every problem."""
    specs = setting_specs()
    values: dict[str, Any] = {}
    missing: list[str] = []
    invalid: list[str] = []
    for spec in specs.values():
        raw = environ.get(spec.key, "").strip()
        if not raw:
            if spec.required:
                missing.append(spec.key)
            continue
        try:
            values[spec.field] = spec.parse(raw)
        except ValueError as exc:
            invalid.append(f"{spec.key}={raw!r} ({exc})")
    if not values.get("bars_storage_connection_string") and not values.get("bars_storage_blob_service_uri"):
        missing.append("BarsStorage or BarsStorage__blobServiceUri")
    backend = values.get("ml_backend", "local")
    missing.extend(
        f"{specs[name].key} (ML_BACKEND={backend})" for name in BACKEND_FIELDS[backend] if name not in values
    )
    problems = []
    if missing:
        problems.append("missing app settings: " + ", ".join(missing))
    if invalid:
        problems.append("invalid app settings: " + "; ".join(invalid))
    if problems:
        raise SettingsError("; ".join(problems))
    return Settings(**values)


# what requests reads for certificates, in its order of precedence, besides the *_proxy variables
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def http_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """How the storage SDK's transport honours the process's HTTP variables: keyword arguments for its clients.

    Not an app setting. requests reads these itself on every call, by walking every variable of the
    process twice: a fifth of a conditional read's CPU, measured. Proxies need that reading, since
    ``no_proxy`` decides per URL, so any non-empty ``*_proxy`` variable keeps it. A CA bundle alone is
    read here, once, and handed to the transport as requests would use it; with neither, there is
    nothing to find and the lookups are skipped.
    """
    env = os.environ if environ is None else environ
    if any(value and key.lower().endswith("_proxy") for key, value in env.items()):
        return {"use_env_settings": True}
    bundle = next((env[key] for key in CA_BUNDLE_VARIABLES if env.get(key)), None)
    return {"use_env_settings": False, **({"connection_verify": bundle} if bundle else {})}


@cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first call."""
    return load_settings(os.environ)
