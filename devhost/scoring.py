"""Run ``azmlinfsrv`` (azureml-inference-server-http) on ``training_job/score.py``, like the AKS endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from devhost.home import REPO_ROOT

ENTRY_SCRIPT = REPO_ROOT / "training_job" / "score.py"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model_dir: Path, port: int, name: str, version: str, log_path: Path) -> subprocess.Popen:
    """Start the scoring server for the MLflow model in ``model_dir``; returns at once."""
    binary = Path(sys.executable).with_name("azmlinfsrv")
    env = {
        **os.environ,
        "AZUREML_MODEL_DIR": str(model_dir),
        "STOCKCAST_MODEL_NAME": name,
        "STOCKCAST_MODEL_VERSION": str(version),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [str(binary), "--entry_script", str(ENTRY_SCRIPT), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_healthy(port: int, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> dict:
    """Wait until the server has loaded the model; return what ``GET /score`` reports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"scoring server exited with {proc.returncode}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/score", timeout=2.0)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"scoring server on port {port} not healthy after {timeout:.0f}s")
