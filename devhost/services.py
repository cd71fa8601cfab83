"""The background processes devhost starts for a home, and what ``python -m devhost status`` shows.

Each service records ``{"pid", "port", ...}`` in a state file under ``$STOCKCAST_HOME``, so any
later command can find, show or stop it; a record whose process is gone counts as stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from devhost import azurite, kafka
from functions.train_trigger.local_jobs import running_job
from functions.train_trigger.local_rollout import serving_state
from functions.train_trigger.processes import live_record, stop_group

MLFLOW_UI_PORT = 5000


def mlflow_ui_state_file(home: Path) -> Path:
    """Where a running MLflow UI of this home is recorded."""
    return home / "run" / "mlflow-ui.json"


def mlflow_ui(home: Path) -> dict | None:
    """The MLflow UI this home started, if it still runs."""
    return live_record(mlflow_ui_state_file(home))


def start_mlflow_ui(home: Path, tracking_uri: str, port: int = MLFLOW_UI_PORT, timeout: float = 60.0) -> dict:
    """Start ``mlflow ui`` on the local store (or return the running one) and wait until it answers."""
    current = mlflow_ui(home)
    if current:
        return current
    log_path = home / "run" / "mlflow-ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "ui",
                "--backend-store-uri",
                tracking_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=home,
            # the UI alone: MLflow 3's server also starts a pool of job-runner workers nobody uses here
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}"}
    mlflow_ui_state_file(home).write_bytes(orjson.dumps(state))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            mlflow_ui_state_file(home).unlink(missing_ok=True)
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{state['url']}/health", timeout=1).status_code == 200:
                return state
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_group(proc.pid)
    raise TimeoutError(f"mlflow ui did not answer on port {port} within {timeout:.0f}s; see {log_path}")


def stop_mlflow_ui(home: Path) -> bool:
    """Stop this home's MLflow UI; return whether one was running."""
    state = mlflow_ui(home)
    mlflow_ui_state_file(home).unlink(missing_ok=True)
    if state is None:
        return False
    stop_group(state["pid"])
    return True


@dataclass(frozen=True)
class Service:
    """One row of ``devhost status``."""

    name: str
    pid: int | None
    detail: str

    @property
    def running(self) -> bool:
        """Whether the service has a live process."""
        return self.pid is not None


def status(home: Path) -> list[Service]:
    """What devhost runs for ``home``: Azurite, Kafka broker, devhost up, scoring server, training job, MLflow UI."""
    from devhost.up import running_up

    blob = azurite.running(home)
    broker = kafka.running(home)
    up = running_up(home)
    serving = serving_state(home)
    job = running_job(home)
    ui = mlflow_ui(home)
    return [
        Service("azurite", blob.pid if blob else None, f"blob http://127.0.0.1:{blob.port}" if blob else ""),
        Service(
            "kafka broker",
            broker.pid if broker else None,
            f"{broker.bootstrap} (PLAINTEXT), topic {broker.topic}, {broker.partitions} partitions" if broker else "",
        ),
        Service(
            "devhost up",
            up["pid"] if up else None,
            (
                f"http://127.0.0.1:{up['port']}/api, timer {up['schedule']}, "
                + (f"feed every {up['feed_every']}s" if up.get("feed_every") else "feed off")
            )
            if up
            else "",
        ),
        Service(
            "scoring server",
            serving["pid"] if serving else None,
            f"azmlinfsrv http://127.0.0.1:{serving['port']}/score, model v{serving['version']}" if serving else "",
        ),
        Service("training job", job["pid"] if job else None, job["name"] if job else ""),
        Service("mlflow ui", ui["pid"] if ui else None, ui["url"] if ui else ""),
    ]


def kafka_status(home: Path) -> dict[str, Any]:
    """The broker's address and topic, and how many messages its consumer group has not ingested yet."""
    broker = kafka.running(home)
    state: dict[str, Any] = {
        "running": broker is not None,
        "pid": broker.pid if broker else None,
        "bootstrap": broker.bootstrap if broker else None,
        "security_protocol": "PLAINTEXT",
        "topic": broker.topic if broker else None,
        "partitions": broker.partitions if broker else None,
        "consumer_group": broker.group if broker else None,
        "consumer_running": kafka.owned(home),  # a trigger holds the partitions (devhost up, the demo)
        "lag": None,
        "lag_by_partition": None,
    }
    if broker is None:
        return state
    try:
        lag = kafka.lag(broker.bootstrap, broker.topic, broker.group)
    except Exception as exc:  # a broker that restarted without its topic, say: report it, do not fail status
        state["error"] = str(exc)
        return state
    state["lag"] = lag.total
    state["lag_by_partition"] = {
        str(p.partition): {"high": p.high, "committed": p.committed, "lag": p.lag} for p in lag.partitions
    }
    return state


def status_json(home: Path) -> dict[str, Any]:
    """``devhost status --json``: the Kafka path and every service's state."""
    return {
        "home": str(home),
        "kafka": kafka_status(home),
        "services": {s.name: {"running": s.running, "pid": s.pid, "detail": s.detail} for s in status(home)},
    }
