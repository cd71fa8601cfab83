"""Local rollout: serve the champion with ``azmlinfsrv`` on ``training_job/score.py``.

The champion is read from the local MLflow registry (alias, else the ``role`` tag); its model is
downloaded into ``$STOCKCAST_HOME/serving/<version>/`` and the scoring server is (re)started on
the configured port. The serving state lives in ``serving/current.json``, so any tick (or
``devhost stop``) can see and repair it.

- One reconcile at a time per home: each holds an ``flock`` on ``run/rollout.lock``.
- The record (pid, the pid's start, port, version, the model's identity) is written, temp file
  then ``os.replace``, only once the server answers; it never names a server that is not up.
- A server this home started carries ``STOCKCAST_SERVING_HOME`` in its environment. One that runs
  unrecorded (its reconcile was killed between start and record) is adopted when it serves the
  champion on the port, else stopped; ``devhost stop`` stops it too.
- A model folder is downloaded into a temp folder and renamed into place with a marker naming the
  model version; a folder without that marker (half made, or another registry's) is fetched again.
- The server listens on loopback only and gets the least environment: no storage key,
  connection string or Azure setting of the host that starts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from devhost.serving.mlflow_store import check_store
from devhost.shared.home import REPO_ROOT, home_lock, port_released
from devhost.shared.processes import (
    PASSTHROUGH,
    alive,
    command_line,
    environment_of,
    group_leaders_with,
    groups_with,
    least_environment,
    live_record,
    started,
    stop_group,
    terminate_group,
)
from functions.settings import Settings
from functions.train_trigger.aml_rollout import scoring_worker_environment
from functions.train_trigger.ports import ModelSnapshot, ModelVersion

log = logging.getLogger("devhost.local_rollout")
ENTRY_SCRIPT = REPO_ROOT / "training_job" / "score.py"
HOME_VARIABLE = "STOCKCAST_SERVING_HOME"  # marks a scoring server as started by a home's rollout
# What the scoring server takes from the environment of whoever starts it: how to find programs and
# libraries, the user, locale, time zone and temp folder. Never storage keys, connection strings or
# Azure settings (BarsStorage, AZURE_*): the server needs none, and it answers HTTP.
SCORING_PASSTHROUGH = PASSTHROUGH  # the scoring server takes no more than any other child
DOWNLOADED = ".downloaded"  # written last into a model folder: which model version it holds
ROLLOUT_LOCK = "rollout"  # run/rollout.lock


def scoring_environment(
    model_dir: Path, name: str, version: str, workers: int, home: Path | None = None
) -> dict[str, str]:
    """The scoring server's whole environment: :data:`SCORING_PASSTHROUGH`, the model's and the workers' settings.

    ``home``: the home whose rollout starts it, recorded so that an unrecorded server can be found.
    """
    own = {
        "AZUREML_MODEL_DIR": str(model_dir),
        "STOCKCAST_MODEL_NAME": name,
        "STOCKCAST_MODEL_VERSION": str(version),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(REPO_ROOT),  # for `-m devhost.serving.azmlinfsrv_loopback` from any working directory
        **scoring_worker_environment(workers),
    }
    if home is not None:
        own[HOME_VARIABLE] = str(home.resolve())
    return least_environment(SCORING_PASSTHROUGH, own)


def start_scoring_server(
    model_dir: Path,
    port: int,
    name: str,
    version: str,
    log_path: Path,
    workers: int = 1,
    entry_script: Path = ENTRY_SCRIPT,
    home: Path | None = None,
) -> subprocess.Popen:
    """Start ``azmlinfsrv`` on 127.0.0.1, ``workers`` workers, for the MLflow model in ``model_dir``; returns at once.

    The workers get the environment the Azure deployment sets (one TensorFlow thread each), and
    nothing else of this process's environment but :data:`SCORING_PASSTHROUGH`.
    ``entry_script``: the scoring script (benchmarks swap in their own). ``home``: the home whose
    rollout starts it (see :func:`scoring_environment`).
    """
    env = scoring_environment(model_dir, name, version, workers, home)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devhost.serving.azmlinfsrv_loopback",
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
    return _wait_answer(port, lambda: None if proc is None or proc.poll() is None else proc.returncode, timeout)


def _wait_answer(port: int, exited: Callable[[], int | None], timeout: float) -> dict:
    """What the server on ``port`` reports once it answers; raises if ``exited()`` gives its exit status first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = exited()
        if code is not None:
            raise RuntimeError(f"scoring server exited with {code}")
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


def unrecorded_servers(home: Path) -> list[dict[str, Any]]:
    """Scoring servers that ``home``'s rollout started and ``serving/current.json`` does not name.

    Each as a record like the one written for a recorded server, read from the process: pid, its
    start, port (from its command line), version and model folder (from its environment).
    """
    home = home.resolve()
    recorded = live_record(home / "serving" / "current.json")
    return [
        _describe(pid)
        for pid in group_leaders_with(HOME_VARIABLE, str(home))
        if recorded is None or pid != recorded["pid"]
    ]


def serving_state(home: Path) -> dict | None:
    """The scoring server of ``home``: the one recorded, if its process still runs, else one running unrecorded.

    An unrecorded one carries ``"recorded": False``; the next reconcile adopts or stops it.
    """
    recorded = live_record(home / "serving" / "current.json")
    if recorded is not None:
        return recorded
    strays = unrecorded_servers(home)
    return {**strays[0], "recorded": False} if strays else None


def stop_serving(home: Path) -> bool:
    """Stop every scoring server of ``home``, recorded or not; return whether one was running.

    Those running are stopped first (a reconcile waiting for the one it started then fails at
    once), then again under the rollout lock, so a reconcile that was under way leaves nothing.
    """
    stopped = _stop_all(home)
    if not (home / "run" / f"{ROLLOUT_LOCK}.lock").exists():  # no reconcile ever ran here
        return stopped
    with home_lock(home, ROLLOUT_LOCK):
        stopped = _stop_all(home) or stopped
        (home / "serving" / "current.json").unlink(missing_ok=True)
    return stopped


def _stop_all(home: Path) -> bool:
    recorded = live_record(home / "serving" / "current.json")
    pids = ([recorded["pid"]] if recorded else []) + [stray["pid"] for stray in unrecorded_servers(home)]
    for pid in pids:
        stop_group(pid)
    return bool(pids) | bool(stop_orphans(home))


def stop_orphans(home: Path, timeout: float = 15.0) -> list[int]:
    """Stop what is left of ``home``'s scoring servers whose leader died (gunicorn workers hold the port a while).

    Returns the process groups stopped. They are no server: ``serving_state`` never shows them.
    """

    def left() -> list[int]:
        return [group for group in groups_with(HOME_VARIABLE, str(home.resolve())) if not alive(group)]

    orphans = left()
    for group in orphans:
        with contextlib.suppress(ProcessLookupError):
            terminate_group(group)
    deadline = time.monotonic() + timeout
    while orphans and left() and time.monotonic() < deadline:
        time.sleep(0.05)
    for group in left() if orphans else []:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return orphans


def _describe(pid: int) -> dict[str, Any]:
    """The record of a running scoring server, read from /proc."""
    args, env = command_line(pid), environment_of(pid)
    port = args[args.index("--port") + 1] if "--port" in args[:-1] else ""
    model_dir = env.get("AZUREML_MODEL_DIR")
    return {
        "pid": pid,
        "pid_started": started(pid),
        "port": int(port) if port.isdigit() else None,
        "version": env.get("STOCKCAST_MODEL_VERSION"),
        "model": _downloaded(Path(model_dir)) if model_dir else None,
    }


def _downloaded(model_dir: Path) -> str | None:
    """Which model version a complete model folder holds (its marker), or None for a folder not made whole."""
    try:
        return (model_dir / DOWNLOADED).read_text()
    except OSError:
        return None


class LocalRollout:
    """Makes the local scoring server serve the champion."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = Path(str(settings.stockcast_home)).resolve()
        self.serving = self.home / "serving"
        self.state_file = self.serving / "current.json"

    def reconcile(self, tick_id: str) -> str:
        """Serve the champion; returns what it found or did. One at a time per home (``run/rollout.lock``)."""
        check_store(str(self.settings.mlflow_tracking_uri))
        with home_lock(self.home, ROLLOUT_LOCK):
            return self._reconcile(tick_id)

    def _reconcile(self, tick_id: str) -> str:
        s = self.settings
        version = champion_version(str(s.mlflow_tracking_uri), s.model_name)
        if version is None:
            return "no champion yet"
        model = self._identity(version)
        state = live_record(self.state_file)
        adopted = False
        for stray in unrecorded_servers(self.home):  # started here, never recorded: its reconcile died
            if state is None and not adopted and self._serves(stray, version, model) and self._adopt(stray, tick_id):
                adopted = True
                continue
            log.warning("tick=%s stopping an unrecorded scoring server of this home: %s", tick_id, stray)
            stop_group(stray["pid"])
        if adopted:
            return f"adopted v{version}"
        for group in stop_orphans(self.home):
            log.warning("tick=%s stopped what was left of scoring server %d (its leader had died)", tick_id, group)
        if state and self._serves(state, version, model) and scoring_info(s.scoring_port):
            return f"serving v{version}"
        model_dir = self._download(version, model, tick_id)
        if state:
            log.info("tick=%s stopping v%s on port %d", tick_id, state["version"], state["port"])
            stop_group(state["pid"])
        self.state_file.unlink(missing_ok=True)
        if not port_released(s.scoring_port, 5.0):  # not ours: a health check would read the other server's model
            raise RuntimeError(
                f"port {s.scoring_port} is taken by a process this home did not start (another STOCKCAST_HOME's "
                "scoring server? `python -m devhost stop` there), so the champion cannot be served; set SCORING_PORT"
            )
        proc = start_scoring_server(
            model_dir,
            s.scoring_port,
            s.model_name,
            version,
            self.serving / "azmlinfsrv.log",
            s.scoring_workers,
            home=self.home,
        )
        try:
            info = wait_healthy(s.scoring_port, proc)
        except BaseException:
            stop_group(proc.pid)  # a server that never answered is not left running unrecorded
            raise
        pid = proc.pid
        self._record(
            {"pid": pid, "pid_started": started(pid), "port": s.scoring_port, "version": version, "model": model}
        )
        log.info("tick=%s serving %s on port %d (pid %d)", tick_id, info["model"], s.scoring_port, pid)
        return f"rolled out v{version}"

    def _serves(self, state: dict[str, Any], version: str, model: str) -> bool:
        """Whether the server ``state`` describes is meant to serve this model version on the configured port."""
        return (
            state.get("version") == version
            and state.get("port") == self.settings.scoring_port
            and state.get("model", model) == model  # records written before the model's identity was kept
        )

    def _adopt(self, stray: dict[str, Any], tick_id: str, timeout: float = 120.0) -> bool:
        """Record an unrecorded server once it answers with its model; False if it exits or never does."""
        pid, port = stray["pid"], self.settings.scoring_port
        try:
            info = _wait_answer(port, lambda: None if alive(pid) else -1, timeout)
        except (RuntimeError, TimeoutError):
            return False
        if str((info.get("model") or {}).get("version")) != stray["version"] or not alive(pid):
            return False
        self._record({key: stray[key] for key in ("pid", "pid_started", "port", "version", "model")})
        log.warning("tick=%s adopted the unrecorded scoring server %s", tick_id, stray)
        return True

    def _record(self, record: dict[str, Any]) -> None:
        """Write ``serving/current.json`` whole: readers see the old record or the new one."""
        self.serving.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".current.", suffix=".tmp", dir=self.serving)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(name, self.state_file)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def _registry(self) -> Any:
        """An MLflow client of the local store, for its registry too (not the process's global registry URI)."""
        from mlflow.tracking import MlflowClient

        uri = str(self.settings.mlflow_tracking_uri)
        return MlflowClient(uri, registry_uri=uri)

    def _identity(self, version: str) -> str:
        """The registry's identity of a model version: its creation time and source (another registry's v2 differs)."""
        found = self._registry().get_model_version(self.settings.model_name, version)
        return f"{found.creation_timestamp} {found.source}"

    def _download(self, version: str, model: str, tick_id: str) -> Path:
        """The model folder ``serving/<version>``, fetched whole unless it already holds ``model``.

        The files go to a temp folder beside it, which gets its marker last and is then renamed
        into place, so a download that dies half way leaves no folder that looks complete.
        """
        import mlflow.artifacts

        target = self.serving / version
        if _downloaded(target) == model:
            return target
        self.serving.mkdir(parents=True, exist_ok=True)
        for leftover in self.serving.glob(".download-*"):  # of a reconcile that died: none runs now
            shutil.rmtree(leftover, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f".download-{version}-", dir=self.serving))
        uri = f"models:/{self.settings.model_name}/{version}"
        try:
            source = self._registry().get_model_version_download_uri(self.settings.model_name, version)
            mlflow.artifacts.download_artifacts(
                source, dst_path=str(partial), tracking_uri=self.settings.mlflow_tracking_uri
            )
            if not any(partial.rglob("MLmodel")):
                raise RuntimeError(f"{uri} downloaded without an MLmodel file")
            (partial / DOWNLOADED).write_text(model)
            if target.exists():
                log.warning(
                    "tick=%s replacing %s: not %s whole (a download that died, another registry's)",
                    tick_id,
                    target,
                    uri,
                )
                target.rename(partial.with_name(partial.name + "-old"))
                shutil.rmtree(partial.with_name(partial.name + "-old"))
            partial.rename(target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info("tick=%s downloaded %s to %s", tick_id, uri, target)
        return target
