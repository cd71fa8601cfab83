"""The background processes devhost starts for a home: what ``python -m devhost status`` shows, and stopping them.

Each service records ``{"pid", "port", ...}`` in a state file under ``$STOCKCAST_HOME``, so any
later command can find, show or stop it; a record whose process is gone counts as stopped. Only
the records' readers and stoppers are imported here, not the host or the services' clients, so
``status`` and ``stop`` start in a fraction of a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devhost.jobs.local_jobs import running_job
from devhost.kafka import broker as kafka
from devhost.serving.local_rollout import serving_state, stop_serving
from devhost.serving.mlflow_ui import mlflow_ui, stop_mlflow_ui
from devhost.shared.home import running_up
from devhost.shared.processes import stop_group
from devhost.storage import azurite


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
            f"azmlinfsrv http://127.0.0.1:{serving['port']}/score, model v{serving['version']}"
            + (" (unrecorded: the next reconcile adopts or stops it)" if serving.get("recorded") is False else "")
            if serving
            else "",
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


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


# what status shows of each version's live figures (the ledger's bookkeeping stays out)
STATUS_FIGURES = ("kind", "n", "ratio_to_persistence", "p_value", "p_worse", "coverage", "interval_n")


def live_skill(home: Path) -> dict[str, Any] | None:
    """The live figures per version from ``ledger/skill.json`` in the home's Azurite; None if it is down or none yet.

    Azurite is never started for this, and the storage SDK is imported only when it runs, so
    ``status`` stays light on a home where nothing runs.
    """
    blob = azurite.running(home)
    if blob is None:
        return None
    from azure.storage.blob import ContainerClient

    from devhost.shared.home import local_settings
    from functions.shared.ledger import read_skill

    name = os.environ.get("BARS_CONTAINER") or local_settings().get("BARS_CONTAINER", "bars")
    document = read_skill(ContainerClient.from_connection_string(blob.connection_string, name)).document
    if document is None:
        return None
    return {
        "updated_at": document.updated_at,
        "versions": {
            version: {key: value for key, value in f.as_json().items() if key in STATUS_FIGURES}
            for version, f in sorted(document.versions.items(), key=lambda item: _version_order(item[0]))
        },
    }


def live_skill_status(home: Path) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`live_skill`, or why it could not be read (status shows the rest regardless)."""
    try:
        return live_skill(home), None
    except Exception as exc:  # Azurite half up, a damaged blob: report it, do not fail status
        return None, f"{type(exc).__name__}: {exc}"


def status_json(home: Path) -> dict[str, Any]:
    """``devhost status --json``: the Kafka path, every service's state, and the live skill per version."""
    skill, error = live_skill_status(home)
    return {
        "home": str(home),
        "kafka": kafka_status(home),
        "services": {s.name: {"running": s.running, "pid": s.pid, "detail": s.detail} for s in status(home)},
        "live_skill": skill,
        **({"live_skill_error": error} if error else {}),
    }


def stop_children(home: Path) -> list[str]:
    """Stop every process devhost started for ``home``; return what was stopped."""
    stopped = []
    if stop_mlflow_ui(home):
        stopped.append("mlflow ui")
    if stop_serving(home):
        stopped.append("scoring server")
    job = running_job(home)
    if job:
        stop_group(job["pid"])
        stopped.append(f"training job {job['name']}")
    if kafka.stop(home):
        stopped.append("kafka broker")
    if azurite.stop(home):
        stopped.append("azurite")
    return stopped
