"""Local rollout: serve the champion with ``azmlinfsrv`` on ``training_job/score.py``.

The champion is read from the local MLflow registry (alias, else the ``role`` tag); its model is
downloaded into ``$STOCKCAST_HOME/serving/<version>/`` and the scoring server is (re)started on
the configured port. The serving state lives in ``serving/current.json``, so any tick (or
``devhost stop``) can see and repair it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import orjson

from devhost.processes import child_environment, listening, live_record, stop_group
from functions.settings import Settings
from functions.train_trigger.aml_rollout import scoring_worker_environment
from functions.train_trigger.ports import ModelSnapshot, ModelVersion

log = logging.getLogger(__name__)
ENTRY_SCRIPT = Path(__file__).resolve().parents[1] / "training_job" / "score.py"


def start_scoring_server(
    model_dir: Path,
    port: int,
    name: str,
    version: str,
    log_path: Path,
    workers: int = 1,
    entry_script: Path = ENTRY_SCRIPT,
) -> subprocess.Popen:
    """Start ``azmlinfsrv`` with ``workers`` workers for the MLflow model in ``model_dir``; returns at once.

    The workers get the environment the Azure deployment sets (one TensorFlow thread each).
    ``entry_script``: the scoring script (benchmarks swap in their own).
    """
    env = child_environment(
        {
            "AZUREML_MODEL_DIR": str(model_dir),
            "STOCKCAST_MODEL_NAME": name,
            "STOCKCAST_MODEL_VERSION": str(version),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **scoring_worker_environment(workers),
        }
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [
                str(Path(sys.executable).with_name("azmlinfsrv")),
                "--entry_script",
                str(entry_script),
                "--port",
                str(port),
                "--worker_count",
                str(workers),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def scoring_info(port: int, timeout: float = 2.0) -> dict | None:
    """What the scoring server on ``port`` serves (``GET /score``), or None if it does not answer."""
    import httpx  # imported here: `devhost status` and `stop` load this module but never call it

    try:
        response = httpx.get(f"http://127.0.0.1:{port}/score", timeout=timeout)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_healthy(port: int, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> dict:
    """Wait until the server has loaded its model; return what it reports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"scoring server exited with {proc.returncode}")
        info = scoring_info(port)
        if info is not None:
            return info
        time.sleep(0.25)
    raise TimeoutError(f"scoring server on port {port} not healthy after {timeout:.0f}s")


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    """The champion's version in the local registry: the alias, else the ``role`` tag."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        return str(client.get_model_version_by_alias(model_name, "champion").version)
    except MlflowException:
        pass
    try:  # by name, tags compared here: the same registry subset as the job keeps to (Azure ML's)
        found = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return None
    return max((str(v.version) for v in found if (v.tags or {}).get("role") == "champion"), key=int, default=None)


class LocalModels:
    """The champion and the newest version from the local MLflow registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def snapshot(self) -> ModelSnapshot:
        """The champion (as the rollout finds it) and the newest version, with their tags."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri, name = str(self.settings.mlflow_tracking_uri), self.settings.model_name
        try:
            found = MlflowClient(uri).search_model_versions(f"name='{name}'")
        except MlflowException:
            return ModelSnapshot(None, None)
        versions = {str(v.version): ModelVersion(str(v.version), dict(v.tags or {})) for v in found}
        newest = max(versions, key=int, default=None)
        champion = champion_version(uri, name)
        return ModelSnapshot(versions.get(champion) if champion else None, versions.get(newest) if newest else None)


def serving_state(home: Path) -> dict | None:
    """The scoring server recorded under ``home``, if its process still runs."""
    return live_record(home / "serving" / "current.json")


def stop_serving(home: Path) -> bool:
    """Stop the scoring server recorded under ``home``; return whether one was running."""
    state = serving_state(home)
    (home / "serving" / "current.json").unlink(missing_ok=True)
    if state is None:
        return False
    stop_group(state["pid"])
    return True


class LocalRollout:
    """Makes the local scoring server serve the champion."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = Path(str(settings.stockcast_home))
        self.serving = self.home / "serving"
        self.state_file = self.serving / "current.json"

    def reconcile(self, tick_id: str) -> str:
        """Serve the champion; returns what it found or did."""
        s = self.settings
        version = champion_version(str(s.mlflow_tracking_uri), s.model_name)
        if version is None:
            return "no champion yet"
        state = serving_state(self.home)
        if state and state["version"] == version and scoring_info(s.scoring_port):
            return f"serving v{version}"
        model_dir = self._download(version)
        if state:
            log.info("tick=%s stopping v%s on port %d", tick_id, state["version"], state["port"])
            stop_group(state["pid"])
        if listening(s.scoring_port):  # not ours: a health check would read the other server's model
            raise RuntimeError(
                f"port {s.scoring_port} is taken by a process this home did not start (another STOCKCAST_HOME's "
                "scoring server? `python -m devhost stop` there), so the champion cannot be served; set SCORING_PORT"
            )
        proc = start_scoring_server(
            model_dir, s.scoring_port, s.model_name, version, self.serving / "azmlinfsrv.log", s.scoring_workers
        )
        self.serving.mkdir(parents=True, exist_ok=True)
        self.state_file.write_bytes(orjson.dumps({"pid": proc.pid, "port": s.scoring_port, "version": version}))
        info = wait_healthy(s.scoring_port, proc)
        log.info("tick=%s serving %s on port %d", tick_id, info["model"], s.scoring_port)
        return f"rolled out v{version}"

    def _download(self, version: str) -> Path:
        import mlflow.artifacts

        target = self.serving / version
        if not any(target.rglob("MLmodel")):
            target.mkdir(parents=True, exist_ok=True)
            uri = f"models:/{self.settings.model_name}/{version}"
            path = mlflow.artifacts.download_artifacts(
                uri, dst_path=str(target), tracking_uri=self.settings.mlflow_tracking_uri
            )
            log.info("downloaded %s to %s", uri, path)
        return target
