"""Pick the submitter and rollout for ``ML_BACKEND`` (``aml`` in Azure, ``local`` under devhost)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from functions.settings import Settings
from functions.train_trigger.aml_jobs import Submission


class Submitter(Protocol):
    """Starts the training job unless one is active."""

    def submit_unless_active(self, tick_id: str, now: dt.datetime) -> Submission:
        """Single-flight submission."""
        ...


class Rollout(Protocol):
    """Makes the endpoint serve the champion."""

    def reconcile(self, tick_id: str) -> str:
        """One reconciliation; returns what it found or did."""
        ...


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version and its tags (the training job writes its decision there)."""

    version: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSnapshot:
    """The champion and the newest version of the model, as the registry holds them now."""

    champion: ModelVersion | None
    newest: ModelVersion | None


class Models(Protocol):
    """Reads the registry for telemetry."""

    def snapshot(self) -> ModelSnapshot:
        """The champion and the newest version, with their tags."""
        ...


@dataclass(frozen=True)
class Backend:
    """What a tick uses."""

    submitter: Submitter
    rollout: Rollout
    models: Models


def create(settings: Settings) -> Backend:
    """Build the backend named by the settings."""
    if settings.ml_backend == "aml":
        from functions.train_trigger.aml_jobs import AmlSubmitter, ml_client
        from functions.train_trigger.aml_rollout import AmlModels, AmlRollout

        client = ml_client(settings)
        return Backend(AmlSubmitter(client, settings), AmlRollout(client, settings), AmlModels(client, settings))
    from functions.ingest.storage import bars_container
    from functions.train_trigger.local_jobs import LocalSubmitter
    from functions.train_trigger.local_rollout import LocalModels, LocalRollout

    return Backend(LocalSubmitter(settings, bars_container(settings)), LocalRollout(settings), LocalModels(settings))
