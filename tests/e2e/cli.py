"""Running devhost as a user would, in a private home of its own: what the end-to-end tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devhost.shared.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
# a tiny model; whether it is promoted is the gate's call on the data, and the tests follow the decision
TINY_TRAINING = "--epochs 1 --units 4 --window 20 --min-windows-per-symbol 50 --seeds 1"


def private_env(home: Path) -> dict[str, str]:
    """Environment for devhost in ``home``: its own Azurite, MLflow store and scoring port."""
    env = {
        **os.environ,
        "STOCKCAST_HOME": str(home),
        "STOCKCAST_AZURITE_PORT": "0",
        "SCORING_PORT": str(free_port()),
        "SCORING_WORKERS": "1",  # one TensorFlow process per scoring server keeps parallel tests light
        "TRAIN_ARGS": TINY_TRAINING,
        "PYTHONPATH": str(ROOT),
    }
    for key in ("BarsStorage", "MLFLOW_TRACKING_URI"):  # the session's own services stay out of it
        env.pop(key, None)
    return env


def devhost(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m devhost`` with ``env``, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "devhost", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
