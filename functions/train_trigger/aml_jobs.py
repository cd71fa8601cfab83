"""Azure ML submitter: the training command job, and single-flight submission.

:func:`build_training_job` is pure (it builds the azure-ai-ml request, sends nothing), so the
job spec is tested as it will be sent.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from functions.settings import Settings
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
ACTIVE_STATES = frozenset(
    {"NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "Finalizing", "CancelRequested"}
)


def build_training_job(settings: Settings, tick_id: str, now: dt.datetime) -> Any:
    """The azure-ai-ml command job the timer submits."""
    from azure.ai.ml import Input, Output, command
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.entities import Environment, ManagedIdentityConfiguration

    return command(
        code=str(TRAINING_CODE),
        command=TRAIN_COMMAND,
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
        tags={"app": "stockcast", "trigger": "timer", "tick": tick_id, "model_name": settings.model_name},
        identity=ManagedIdentityConfiguration(),
    )


class AmlSubmitter:
    """Submits the training job unless one of the experiment is already active."""

    def __init__(self, ml_client: Any, settings: Settings) -> None:
        self.ml_client = ml_client
        self.settings = settings

    def active_jobs(self) -> list[str]:
        """Names of this experiment's jobs that are not finished."""
        return [
            job.name
            for job in self.ml_client.jobs.list()
            if job.experiment_name == self.settings.experiment and job.status in ACTIVE_STATES
        ]

    def submit_unless_active(self, tick_id: str, now: dt.datetime) -> Submission:
        """Single-flight submission."""
        active = self.active_jobs()
        if active:
            return Submission(False, active[0], f"job {active[0]} is still active")
        job = self.ml_client.jobs.create_or_update(build_training_job(self.settings, tick_id, now))
        log.info("tick=%s submitted Azure ML job %s", tick_id, job.name)
        return Submission(True, job.name, "submitted")
