"""Run the training job locally, as Azure ML would run it: same command, bars from storage.

Raw bars are synced from Azurite into ``$STOCKCAST_HOME/jobs/inputs/bars`` (only blobs not yet
copied), then ``python -m training_job.train`` runs as a subprocess against the local MLflow
store ``$STOCKCAST_HOME/mlflow/mlflow.db``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from azure.storage.blob import ContainerClient

from devhost.home import REPO_ROOT


def mlflow_dir(home: Path) -> Path:
    """Where the local MLflow store and its artifacts live."""
    path = home / "mlflow"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri(home: Path) -> str:
    """The local MLflow tracking URI (SQLite)."""
    return f"sqlite:///{mlflow_dir(home) / 'mlflow.db'}"


def sync_raw(container: ContainerClient, dest: Path) -> tuple[int, int]:
    """Copy new ``raw/`` blobs into ``dest`` (same relative paths); returns (copied, total)."""
    copied = total = 0
    for blob in container.list_blobs(name_starts_with="raw/"):
        total += 1
        target = dest / blob.name
        if target.exists() and target.stat().st_size == blob.size:
            continue  # blob names are unique per batch and never rewritten: size is enough
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(container.download_blob(blob.name).readall())
        partial.replace(target)
        copied += 1
    return copied, total


def run_job(home: Path, bars: Path, name: str, extra: list[str] | None = None) -> tuple[int, dict | None, Path]:
    """Run the training command as a subprocess; returns (exit code, summary, log path)."""
    jobs = home / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    log_path, summary_path = jobs / f"{name}.log", jobs / f"{name}.summary.json"
    command = [sys.executable, "-m", "training_job.train", "--bars", str(bars), "--summary-out", str(summary_path)]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(home),
        "PYTHONPATH": str(REPO_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    with open(log_path, "wb") as log:
        # cwd is the MLflow folder: a new experiment's artifact root is relative to it
        code = subprocess.call(
            [*command, *(extra or [])], cwd=mlflow_dir(home), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    summary = orjson.loads(summary_path.read_bytes()) if code == 0 and summary_path.exists() else None
    return code, summary, log_path
