"""Local submitter: the same training command as Azure ML, as a background subprocess.

Raw bars are synced incrementally from storage (Azurite) into ``$STOCKCAST_HOME/jobs/inputs``;
a lock file with the job's pid keeps it single-flight, and is cleared when that pid is dead.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
from azure.storage.blob import ContainerClient

from functions.settings import Settings, child_environment
from functions.train_trigger.aml_jobs import Submission
from functions.train_trigger.processes import alive, live_record

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
_children: dict[int, subprocess.Popen] = {}  # reaped on the next check, so no zombie lingers


def sync_raw(container: ContainerClient, dest: Path) -> tuple[int, int]:
    """Copy new ``raw/`` blobs into ``dest`` (same relative paths); returns (copied, total)."""
    copied = total = 0
    for blob in container.list_blobs(name_starts_with="raw/"):
        total += 1
        target = dest / blob.name
        if target.exists() and target.stat().st_size == blob.size:
            continue  # raw blob names are unique per batch and never rewritten
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(container.download_blob(blob.name).readall())
        partial.replace(target)
        copied += 1
    return copied, total


def running_job(home: Path) -> dict | None:
    """The lock record of the local training job under ``home``, if its process still runs."""
    return live_record(home / "jobs" / "train.lock")


class LocalSubmitter:
    """Runs ``python -m training_job.train`` in the background, one at a time."""

    def __init__(self, settings: Settings, container: ContainerClient) -> None:
        self.settings = settings
        self.container = container
        self.home = Path(str(settings.stockcast_home))
        self.jobs = self.home / "jobs"
        self.lock = self.jobs / "train.lock"

    def active(self) -> dict | None:
        """The running job's lock record, or None (a stale lock is removed)."""
        if not self.lock.exists():
            return None
        try:
            record = orjson.loads(self.lock.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            record = {"pid": -1}
        child = _children.get(record.get("pid", -1))
        if child is not None and child.poll() is not None:
            _children.pop(record["pid"], None)
        if record.get("pid", -1) > 0 and alive(record["pid"]):
            return record
        self.lock.unlink(missing_ok=True)
        return None

    def summary(self, job_name: str) -> dict | None:
        """The decision summary a finished job wrote."""
        path = self.jobs / f"{job_name}.summary.json"
        return orjson.loads(path.read_bytes()) if path.exists() else None

    def submit_unless_active(self, tick_id: str, now: dt.datetime) -> Submission:
        """Single-flight: start the job unless one is running."""
        running = self.active()
        if running:
            return Submission(False, running["name"], f"local job {running['name']} is still running")
        self.jobs.mkdir(parents=True, exist_ok=True)
        name = f"train-{now:%Y%m%dT%H%M%S}Z-{tick_id[-4:]}"
        try:  # O_EXCL: of two racing ticks, only one creates the lock
            fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return Submission(False, None, "another tick is starting a job")
        try:
            inputs = self.jobs / "inputs" / "bars"
            copied, total = sync_raw(self.container, inputs)
            log.info("tick=%s job=%s synced %d new of %d raw blobs", tick_id, name, copied, total)
            proc = self._start(name, inputs)
            os.write(fd, orjson.dumps({"pid": proc.pid, "name": name, "started": now.isoformat()}))
        except BaseException:
            os.close(fd)
            self.lock.unlink(missing_ok=True)
            raise
        os.close(fd)
        return Submission(True, name, "submitted")

    def _start(self, name: str, inputs: Path) -> subprocess.Popen:
        s = self.settings
        mlflow_dir = self.home / "mlflow"
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "training_job.train",
            "--bars",
            str(inputs),
            "--model-name",
            s.model_name,
            "--experiment",
            s.experiment,
            "--summary-out",
            str(self.jobs / f"{name}.summary.json"),
            *shlex.split(s.train_args),
        ]
        env = child_environment(
            {
                "MLFLOW_TRACKING_URI": str(s.mlflow_tracking_uri),
                "PYTHONPATH": str(REPO_ROOT),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        with open(self.jobs / f"{name}.log", "wb") as out:
            # cwd = the MLflow folder: a new experiment's artifact root is relative to it
            proc = subprocess.Popen(
                command,
                cwd=mlflow_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        return proc
