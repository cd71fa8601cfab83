"""The backend a tick uses, by ``ML_BACKEND``: Azure ML here; the local one is provided by devhost.

devhost calls :func:`provide` with its local backend before it fires the timer, so the Function
App package carries only what Azure runs and still drives the same tick code offline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from functions.settings import Settings, SettingsError
from functions.shared.identity import ml_client
from functions.shared.storage import bars_container
from functions.train_trigger.aml_jobs import AmlSubmitter
from functions.train_trigger.aml_rollout import AmlModels, AmlRollout
from functions.train_trigger.job_record import JobRecordStore
from functions.train_trigger.ports import Backend

BackendFactory = Callable[[Settings], Backend]


def aml_backend(settings: Settings) -> Backend:
    """Azure ML: the command job, the managed online endpoint and the registry, through one MLClient."""
    client = ml_client(settings)
    records = JobRecordStore(bars_container(settings), settings.training_record_blob)
    return Backend(AmlSubmitter(client, settings, records), AmlRollout(client, settings), AmlModels(client, settings))


_factories: dict[str, BackendFactory] = {"aml": aml_backend}
_lock = threading.Lock()


def provide(name: str, factory: BackendFactory) -> None:
    """Make ``ML_BACKEND=<name>`` build its backend with ``factory`` (devhost provides ``local``)."""
    with _lock:
        _factories[name] = factory


def create(settings: Settings) -> Backend:
    """Build the backend named by the settings; fail clearly if nothing provides it."""
    with _lock:
        factory = _factories.get(settings.ml_backend)
    if factory is None:
        raise SettingsError(
            f"ML_BACKEND={settings.ml_backend!r} has no backend in this host: "
            "'local' is provided by devhost; in Azure set ML_BACKEND=aml"
        )
    return factory(settings)
