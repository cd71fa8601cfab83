"""Azure ML submitter: the training command job, and single-flight submission.

:func:`build_training_job` is pure (it builds the azure-ai-ml request, sends nothing), so the
job spec is tested as it will be sent. Single-flight costs one blob read and one ``jobs.get`` a
tick, whatever the workspace holds: the timer records the name of each job before submitting it
(:mod:`functions.train_trigger.job_record`) and asks Azure ML about that job alone. The same record
says when the last full retrain was submitted, from which each submission's ``--mode`` follows.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from functions.settings import Settings
from functions.train_trigger.job_record import (
    MODES,
    WARM,
    JobRecord,
    JobRecordStore,
    RecordConflictError,
    job_name,
    training_mode,
)
from functions.train_trigger.ports import Submission

log = logging.getLogger(__name__)

# The code folder ships inside the Function App package as files; the app never imports it.
TRAINING_CODE = Path(__file__).resolve().parents[2] / "training_job"
CONDA_FILE = TRAINING_CODE / "environment" / "conda.yaml"
# Azure ML uploads the code folder as the working directory; the job imports it as a package.
TRAIN_COMMAND = (
    'mkdir -p /tmp/stockcast && ln -sfn "$PWD" /tmp/stockcast/training_job && '
    "PYTHONPATH=/tmp/stockcast python -m training_job.train "
    "--bars ${{inputs.bars}} --model-name ${{inputs.model_name}} --experiment ${{inputs.experiment}} "
    "--summary-out ${{outputs.summary}}/summary.json"
)
# Azure ML's JobStatus values: a job in a terminal state no longer holds the single flight; any
# other state (active, paused, not responding, or one this code does not know) still may
TERMINAL_STATES = frozenset({"Completed", "Failed", "Canceled"})
ACTIVE_STATES = frozenset(
    {
        "NotStarted",
        "Starting",
        "Provisioning",
        "Preparing",
        "Queued",
        "Running",
        "Finalizing",
        "CancelRequested",
        "NotResponding",
        "Paused",
        "Scheduled",
    }
)
MISSING = "<missing>"  # Azure ML has no job of the recorded name: the tick that recorded it died first
# a job whose state cannot be read is taken as active until its time limit and this much more have passed
UNREADABLE_GRACE = dt.timedelta(hours=1)


def training_command(mode: str) -> str:
    """The job's command for ``mode`` (``warm`` or ``full``): :data:`TRAIN_COMMAND`, the CLI twin's, plus its mode."""
    if mode not in MODES:  # it becomes part of a shell command: only the two known words may
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    return f"{TRAIN_COMMAND} --mode {mode}"


def build_training_job(
    settings: Settings, tick_id: str, now: dt.datetime, name: str | None = None, mode: str = WARM
) -> Any:
    """The azure-ai-ml command job the timer submits, named ``name`` (the name its tick recorded), in ``mode``.

    On more than one node (``TRAINING_NODES``) it runs under Azure ML's TensorFlow distribution, one
    worker a node: Azure ML starts the command on each with ``TF_CONFIG`` naming them all, and the
    job fits on all of them while the first alone registers (training_job/cluster.py).
    """
    from azure.ai.ml import Input, Output, TensorFlowDistribution, command
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.entities import Environment, ManagedIdentityConfiguration

    nodes = settings.training_nodes
    spread: dict[str, Any] = {}
    if nodes > 1:  # one node: no distribution at all, so no TF_CONFIG and the job runs as on one machine
        spread = {
            "distribution": TensorFlowDistribution(worker_count=nodes, parameter_server_count=0),
            "instance_count": nodes,
        }
    return command(
        name=name,
        code=str(TRAINING_CODE),
        command=training_command(mode),
        inputs={
            "bars": Input(
                type=AssetTypes.URI_FOLDER,
                path=f"azureml://datastores/{settings.aml_bars_datastore}/paths/raw/",
                mode=InputOutputModes.RO_MOUNT,
            ),
            "model_name": settings.model_name,
            "experiment": settings.experiment,
        },
        outputs={"summary": Output(type=AssetTypes.URI_FOLDER)},
        environment=Environment(image=settings.aml_environment_image, conda_file=str(CONDA_FILE)),
        compute=settings.aml_compute,
        experiment_name=settings.experiment,
        display_name=f"stockcast-train-{now:%Y%m%d-%H%M}Z",
        description="LSTM-Attention forecaster: train on stored bars, compare with the champion",
        tags={
            "app": "stockcast",
            "trigger": "timer",
            "tick": tick_id,
            "model_name": settings.model_name,
            "mode": mode,
        },
        identity=ManagedIdentityConfiguration(),
        timeout=settings.training_timeout_s,
        **spread,
    )


def should_submit(record: JobRecord | None, status: str | None, now: dt.datetime, timeout_s: int) -> tuple[bool, str]:
    """Whether a tick submits, given the recorded job and its state; returns (submit, reason).

    ``status`` is Azure ML's state of the recorded job, :data:`MISSING` when Azure ML has no such
    job, or None when it could not be read (an unparseable job). A job in a state that is not
    terminal holds the single flight; an unreadable one holds it until its time limit has passed.
    """
    if record is None:
        return True, "no job recorded"
    name = record.job_name
    if status == MISSING:
        return True, f"job {name} was recorded but never created"
    if status in TERMINAL_STATES:
        return True, f"job {name} ended {status}"
    if status in ACTIVE_STATES:
        return False, f"job {name} is still active ({status})"
    deadline = record.submitted_at + dt.timedelta(seconds=timeout_s) + UNREADABLE_GRACE
    if now >= deadline:
        return True, f"job {name}'s state ({status}) is unknown and its time limit has passed"
    return False, f"job {name}'s state ({status}) is unknown; it counts as active until {deadline:%Y-%m-%dT%H:%MZ}"


class AmlSubmitter:
    """Submits the training job unless the last one it submitted is still active: one record read, one ``jobs.get``."""

    def __init__(self, ml_client: Any, settings: Settings, records: JobRecordStore) -> None:
        self.ml_client = ml_client
        self.settings = settings
        self.records = records

    def job_status(self, name: str, tick_id: str) -> str | None:
        """Azure ML's state of job ``name``; :data:`MISSING` if it has none, None if the job cannot be read."""
        from azure.ai.ml.exceptions import JobException, JobParsingError
        from azure.core.exceptions import ResourceNotFoundError

        try:
            job = self.ml_client.jobs.get(name)
        except ResourceNotFoundError:
            return MISSING
        except (JobParsingError, JobException) as exc:  # the SDK cannot read what the service sent
            log.warning("tick=%s job %s cannot be read: %s", tick_id, name, exc)
            return None
        status = getattr(job, "status", None)
        return status if isinstance(status, str) and status else None

    def submit_unless_active(self, tick_id: str, now: dt.datetime) -> Submission:
        """Single-flight submission: record the new job's name and mode, then submit it under that name.

        The mode is ``full`` when no full retrain was submitted within ``TRAINING_FULL_EVERY_HOURS``
        (:func:`training_mode`); the time of this one is recorded with the job, before it is submitted.
        """
        stored = self.records.read(tick_id)
        record = stored.record
        status = None if record is None else self.job_status(record.job_name, tick_id)
        submit, reason = should_submit(record, status, now, self.settings.training_timeout_s)
        log.info("tick=%s last job %s: %s", tick_id, record.job_name if record else None, reason)
        if not submit:
            return Submission(False, record.job_name if record else None, reason)
        name = job_name(now, tick_id)
        last_full = record.last_full_at if record else None
        every = dt.timedelta(hours=self.settings.training_full_every_hours)
        mode, why = training_mode(last_full, now, every)
        try:
            self.records.write(JobRecord(name, tick_id, now, mode, now if mode != WARM else last_full), stored.etag)
        except RecordConflictError:  # another tick recorded its job in between: that one submits
            log.warning("tick=%s the job record changed under this tick; another tick is submitting", tick_id)
            return Submission(False, None, "another tick recorded a job first")
        job = self.ml_client.jobs.create_or_update(build_training_job(self.settings, tick_id, now, name, mode))
        log.info("tick=%s submitted Azure ML job %s mode=%s: %s", tick_id, job.name, mode, why)
        return Submission(True, job.name, f"submitted {mode}: {why}")
