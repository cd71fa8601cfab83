"""Pick the submitter and rollout for ``ML_BACKEND`` (``aml`` in Azure, ``local`` under devhost)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
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
class Backend:
    """The pair a tick uses."""

    submitter: Submitter
    rollout: Rollout


def create(settings: Settings) -> Backend:
    """Build the backend named by the settings."""
    if settings.ml_backend == "aml":
        from functions.train_trigger.aml_jobs import AmlSubmitter, ml_client
        from functions.train_trigger.aml_rollout import AmlRollout

        client = ml_client(settings)
        return Backend(AmlSubmitter(client, settings), AmlRollout(client, settings))
    from functions.ingest.storage import bars_container
    from functions.train_trigger.local_jobs import LocalSubmitter
    from functions.train_trigger.local_rollout import LocalRollout

    return Backend(LocalSubmitter(settings, bars_container(settings)), LocalRollout(settings))
