"""Custom metrics and events in Application Insights, through azure-monitor-opentelemetry.

The Functions OpenTelemetry mode does not cover timer triggers, so the host keeps its own
Application Insights logging (requests, invocations, the functions' log lines; see ``host.json``)
and this module adds what the host cannot see: custom metrics (``customMetrics``, attributes in
``customDimensions``) and the training decision as a ``traces`` record whose ``extra`` fields
become ``customDimensions``.

:func:`configure` runs once per process, on the first invocation (never at import), and only when
``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set; Application Insights has local auth off, so the
exporter signs in with a Microsoft Entra credential. Without it the OpenTelemetry API's no-op
provider swallows every measurement. The helpers below are the only way handlers record, so the
metric names live here and nowhere else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, MeterProvider, _Gauge

from functions.settings import Settings
from functions.shared.identity import azure_credential

log = logging.getLogger(__name__)

METER = "stockcast"
BARS_INGESTED = "stockcast.bars.ingested"
INGEST_LAG = "stockcast.ingest.lag"
DEADLETTERS = "stockcast.deadletters"
PREDICT_DURATION = "stockcast.predict.duration"
TRAINING_SUBMISSIONS = "stockcast.training.submissions"
ROLLOUT = "stockcast.rollout"
MODEL_RMSE = "stockcast.model.rmse"
LIVE_FOLDS = "stockcast.live.folds"
LIVE_SKILL_RATIO = "stockcast.live.skill_ratio"
LIVE_WORSE = "stockcast.live.worse_than_persistence"
COMPACTION_HOURS = "stockcast.compaction.hours"
COMPACTION_BLOBS = "stockcast.compaction.blobs"
COMPACTION_BYTES = "stockcast.compaction.bytes"
TRAINING_DECISION = "training decision"
SUBMISSION_OUTCOMES = ("submitted", "active", "failed")
ROLLOUT_OUTCOMES = ("succeeded", "failed")
LIVE_FOLD_OUTCOMES = ("succeeded", "failed")

# Records of this logger go to App Insights through OpenTelemetry, with their extras as
# customDimensions; the host forwards only the message of a record, so it gets none of them.
events = logging.getLogger("stockcast.events")

# Instrumentations the distro would switch on. The host already records requests and bindings;
# without the host's OpenTelemetry mode these spans would have no parent, and tracing every blob
# call costs time on the ingest and predict paths.
_INSTRUMENTATIONS = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3")

ConfigureFn = Callable[..., None]
CredentialFactory = Callable[[str | None], Any]

_lock = threading.Lock()
_configured: bool | None = None  # None: not decided yet in this process


@dataclass(frozen=True)
class _Instruments:
    bars_ingested: Counter
    ingest_lag: Histogram
    deadletters: Counter
    predict_duration: Histogram
    training_submissions: Counter
    rollouts: Counter
    model_rmse: _Gauge
    live_folds: Counter
    live_skill_ratio: _Gauge
    live_worse: _Gauge
    compaction_hours: Counter
    compaction_blobs: Counter
    compaction_bytes: Counter


_provider: MeterProvider | None = None  # None: the global provider (set by configure_azure_monitor)
_instruments: _Instruments | None = None
# predict attributes per (route, status): built once, so a request allocates nothing to record
_predict_attributes: dict[str, dict[int, dict[str, Any]]] = {}


def configure(
    settings: Settings,
    configure_fn: ConfigureFn | None = None,
    credential_factory: CredentialFactory = azure_credential,
) -> bool:
    """Export custom metrics and events to App Insights, once per process; return whether they are.

    A failure is logged and leaves the no-op provider in place: telemetry never fails an invocation.
    """
    global _configured
    if _configured is not None:
        return _configured
    with _lock:
        if _configured is not None:
            return _configured
        connection_string = settings.applicationinsights_connection_string
        if not connection_string:
            _configured = False
            return False
        try:
            if configure_fn is None:
                from azure.monitor.opentelemetry import configure_azure_monitor as configure_fn
            configure_fn(
                connection_string=connection_string,
                credential=credential_factory(settings.azure_client_id),
                logger_name=events.name,
                instrumentation_options={name: {"enabled": False} for name in _INSTRUMENTATIONS},
                enable_live_metrics=False,  # the host already feeds Live Metrics
            )
        except Exception:
            log.exception("telemetry: configure_azure_monitor failed; custom metrics are off in this process")
            _configured = False
            return False
        # only the OpenTelemetry copy of an event carries its dimensions; keep the host's bare copy out
        events.setLevel(logging.INFO)
        events.propagate = False
        _configured = True
        log.info("telemetry: custom metrics and events go to Application Insights")
        return True


def use_meter_provider(provider: MeterProvider | None) -> None:
    """Record into ``provider`` from now on (tests); None returns to the global provider."""
    global _provider, _instruments
    with _lock:
        _provider = provider
        _instruments = None
        _predict_attributes.clear()


def reset() -> None:
    """Forget configuration and instruments (tests); the next :func:`configure` decides again."""
    global _configured
    use_meter_provider(None)
    with _lock:
        _configured = None
    events.propagate = True
    events.setLevel(logging.NOTSET)


def _get() -> _Instruments:
    global _instruments
    found = _instruments
    if found is not None:
        return found
    with _lock:
        if _instruments is None:
            # the API's proxy meter forwards to the provider configure_azure_monitor installs later
            meter = (_provider or metrics.get_meter_provider()).get_meter(METER)
            _instruments = _Instruments(
                bars_ingested=meter.create_counter(
                    BARS_INGESTED, unit="{bar}", description="true bars written to raw/ per invocation"
                ),
                ingest_lag=meter.create_histogram(
                    INGEST_LAG, unit="ms", description="per event: enqueued in Event Hubs to stored by ingest"
                ),
                deadletters=meter.create_counter(
                    DEADLETTERS, unit="{event}", description="events written to deadletter/, by reason"
                ),
                predict_duration=meter.create_histogram(
                    PREDICT_DURATION, unit="ms", description="predict function time, by status code and route"
                ),
                training_submissions=meter.create_counter(
                    TRAINING_SUBMISSIONS, unit="{tick}", description="what each tick did about training"
                ),
                rollouts=meter.create_counter(
                    ROLLOUT, unit="{tick}", description="whether each tick's rollout reconcile succeeded"
                ),
                model_rmse=meter.create_gauge(
                    MODEL_RMSE, description="decision-slice RMSE of the champion and of persistence"
                ),
                live_folds=meter.create_counter(
                    LIVE_FOLDS, unit="{tick}", description="whether each tick's live skill fold succeeded"
                ),
                live_skill_ratio=meter.create_gauge(
                    LIVE_SKILL_RATIO, description="live log-RMSE ratio to persistence of a version served"
                ),
                live_worse=meter.create_gauge(
                    LIVE_WORSE, description="live one-sided DM p-value that a version is worse than persistence"
                ),
                compaction_hours=meter.create_counter(
                    COMPACTION_HOURS, unit="{hour}", description="raw/ hours a compaction run handled, by outcome"
                ),
                compaction_blobs=meter.create_counter(
                    COMPACTION_BLOBS, unit="{blob}", description="raw/ blobs merged, deleted or left unreadable"
                ),
                compaction_bytes=meter.create_counter(
                    COMPACTION_BYTES, unit="By", description="raw/ bytes compaction merged (read) and wrote"
                ),
            )
        return _instruments


def bars_ingested(count: int) -> None:
    """Count the true bars one invocation hands to raw/ (0 too: the series shows ingest is alive)."""
    _get().bars_ingested.add(count)


def ingest_lag_ms(values: Iterable[float]) -> None:
    """Record each event's lag, enqueued time to stored, in milliseconds."""
    histogram = _get().ingest_lag
    for value in values:
        histogram.record(max(0.0, value))  # clock skew between Event Hubs and the worker


def deadletters(reason_counts: Mapping[str, int]) -> None:
    """Count dead-lettered events by reason."""
    counter = _get().deadletters
    for reason, count in reason_counts.items():
        counter.add(count, {"reason": reason})


def predict_duration(ms: float, status_code: int, route: str) -> None:
    """Record one predict request's duration with its status code and route template."""
    by_status = _predict_attributes.get(route)
    attributes = by_status.get(status_code) if by_status is not None else None
    if attributes is None:
        attributes = {"status_code": status_code, "route": route}
        _predict_attributes.setdefault(route, {})[status_code] = attributes
    _get().predict_duration.record(ms, attributes)


def training_submission(outcome: str) -> None:
    """Count a tick's training outcome: submitted, active (a job still runs) or failed (submit raised)."""
    if outcome not in SUBMISSION_OUTCOMES:
        raise ValueError(f"outcome must be one of {SUBMISSION_OUTCOMES}, not {outcome!r}")
    _get().training_submissions.add(1, {"outcome": outcome})


def rollout(outcome: str) -> None:
    """Count a tick's rollout reconcile: succeeded (a step taken or nothing to do) or failed (it raised)."""
    if outcome not in ROLLOUT_OUTCOMES:
        raise ValueError(f"outcome must be one of {ROLLOUT_OUTCOMES}, not {outcome!r}")
    _get().rollouts.add(1, {"outcome": outcome})


def model_rmse(version: str, champion: float | None, persistence: float | None) -> None:
    """Set the champion's and persistence's decision-slice RMSE, tagged with the champion's version."""
    gauge = _get().model_rmse
    for predictor, value in (("champion", champion), ("persistence", persistence)):
        if value is not None:
            gauge.set(value, {"predictor": predictor, "version": version})


def live_fold(outcome: str) -> None:
    """Count a tick's live skill fold: succeeded or failed (it raised)."""
    if outcome not in LIVE_FOLD_OUTCOMES:
        raise ValueError(f"outcome must be one of {LIVE_FOLD_OUTCOMES}, not {outcome!r}")
    _get().live_folds.add(1, {"outcome": outcome})


def live_skill(version: str, kind: str, n: int, ratio: float | None, p_worse: float | None) -> None:
    """Set a served version's live figures: its log-RMSE ratio and the p-value that it is worse, with n."""
    instruments = _get()
    attributes = {"version": version, "kind": kind, "n": n}
    if ratio is not None:
        instruments.live_skill_ratio.set(ratio, attributes)
    if p_worse is not None:  # none for persistence itself, or below 3 forecasts
        instruments.live_worse.set(p_worse, attributes)


def compaction(hours: Mapping[str, int], blobs: Mapping[str, int], bytes_by_direction: Mapping[str, int]) -> None:
    """Count a compaction run: hours by outcome, blobs by action (merged, deleted, unreadable), bytes by direction."""
    instruments = _get()
    for counter, key, counts in (
        (instruments.compaction_hours, "outcome", hours),
        (instruments.compaction_blobs, "action", blobs),
        (instruments.compaction_bytes, "direction", bytes_by_direction),
    ):
        for value, count in counts.items():
            counter.add(count, {key: value})


def training_decision(
    tick: str,
    version: str,
    decision: str,
    reason: str,
    rmse_model: float | None,
    rmse_champion: float | None,
    rmse_persistence: float | None,
    significance: dict[str, float | None] | None = None,
) -> None:
    """Log the training decision of a model version; its fields become customDimensions.

    ``significance`` carries the gate's figures (``p_vs_persistence``, ``p_vs_champion``,
    ``n_decision``), so the portal shows why a version was or was not promoted.
    """
    extra: dict[str, Any] = {"tick": tick, "version": version, "decision": decision, "reason": reason}
    # OpenTelemetry drops None attributes with a warning; a missing figure is left out instead
    for key, value in (
        ("rmse_model", rmse_model),
        ("rmse_champion", rmse_champion),
        ("rmse_persistence", rmse_persistence),
        *(significance or {}).items(),
    ):
        if value is not None:
            extra[key] = value
    events.info(TRAINING_DECISION, extra=extra)
