"""What a timer tick needs from an ML backend: the protocols both backends implement, and their values.

Azure ML (``aml_jobs``, ``aml_rollout``) implements them in the Function App; the local backend
lives with devhost (``devhost/jobs/backend.py``) and is provided to :mod:`functions.train_trigger.backends`
at run time, so the package Azure runs holds no local-only code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Submission:
    """What a tick did about training."""

    submitted: bool
    job_name: str | None
    reason: str


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
