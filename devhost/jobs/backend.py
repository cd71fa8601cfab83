"""The local ML backend (``ML_BACKEND=local``): training as a subprocess, serving with ``azmlinfsrv``.

It lives with devhost, not in the Function App package: :func:`provide_local` hands it to
:mod:`functions.train_trigger.backends` when devhost loads the app, and the timer's code is the
same one Azure runs.
"""

from __future__ import annotations

from devhost.jobs.local_jobs import LocalSubmitter
from devhost.serving.local_rollout import LocalModels, LocalRollout
from functions.settings import Settings
from functions.shared.storage import bars_container
from functions.train_trigger import backends
from functions.train_trigger.ports import Backend


def local_backend(settings: Settings) -> Backend:
    """Local submitter, rollout and registry reader, on the settings' home, MLflow and storage."""
    return Backend(LocalSubmitter(settings, bars_container(settings)), LocalRollout(settings), LocalModels(settings))


def provide_local() -> None:
    """Make the timer build :func:`local_backend` for ``ML_BACKEND=local``."""
    backends.provide("local", local_backend)
