"""The MLflow UI on the local tracking store: started by ``devhost up``, shown by ``devhost status``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from devhost.shared.processes import alive, live_record, stop_group

MLFLOW_UI_PORT = 5000


def mlflow_ui_state_file(home: Path) -> Path:
    """Where a running MLflow UI of this home is recorded."""
    return home / "run" / "mlflow-ui.json"


def mlflow_ui(home: Path) -> dict | None:
    """The MLflow UI this home started, if it still runs."""
    return live_record(mlflow_ui_state_file(home))


def start_mlflow_ui(home: Path, tracking_uri: str, port: int = MLFLOW_UI_PORT) -> dict:
    """Start ``mlflow ui`` on the local store in the background (or return the running one).

    It takes seconds to answer (7 s on two cores): :func:`wait_for_mlflow_ui` waits, so a
    caller can do other work meanwhile.
    """
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
                # one browser, one worker: the default four each import MLflow (~3 s of CPU apiece)
                "--workers",
                "1",
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
    return state


def wait_for_mlflow_ui(home: Path, state: dict, timeout: float = 60.0, stop: threading.Event | None = None) -> bool:
    """Wait until the UI ``state`` names answers; False if ``stop`` was set first.

    A UI that exits, or does not answer within ``timeout``, is stopped and raises.
    """
    import httpx  # imported here: `devhost status` and `stop` load this module but never call it

    log_path = home / "run" / "mlflow-ui.log"
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():
            return False
        if not alive(state["pid"]):  # an exited child not yet reaped is a zombie: not alive
            mlflow_ui_state_file(home).unlink(missing_ok=True)
            raise RuntimeError(f"mlflow ui exited; see {log_path}")
        try:
            if httpx.get(f"{state['url']}/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        stop.wait(0.25)
    stop_group(state["pid"])
    mlflow_ui_state_file(home).unlink(missing_ok=True)
    raise TimeoutError(f"mlflow ui did not answer on port {state['port']} within {timeout:.0f}s; see {log_path}")


def stop_mlflow_ui(home: Path) -> bool:
    """Stop this home's MLflow UI; return whether one was running."""
    state = mlflow_ui(home)
    mlflow_ui_state_file(home).unlink(missing_ok=True)
    if state is None:
        return False
    stop_group(state["pid"])
    return True
