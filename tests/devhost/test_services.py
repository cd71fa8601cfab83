"""`devhost status` and `devhost stop`: light commands the tests and users call often."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
# what the data and HTTP commands need, and status and stop do not (each cost 0.05-0.2 s to import)
HEAVY = ("pyarrow", "httpx", "azure", "devhost.host", "devhost.views", "functions.predict", "functions.ingest")


def _run(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m devhost *args`` in ``home``; the result and every module it imported."""
    env = {**os.environ, "STOCKCAST_HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "devhost", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, flags=re.MULTILINE))
    return done, modules


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("status", "--json"), '"running": false'),
        (("stop",), "stopped: nothing was running"),
    ],
)
def test_status_and_stop_answer_without_the_heavy_modules(tmp_path, args, says):
    """On an empty home, status and stop answer, importing none of pyarrow, httpx, the SDKs or the host."""
    done, modules = _run(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert says in done.stdout
    assert "devhost.services" in modules  # the parse found the imports
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)) == []


def test_status_json_lists_every_service_stopped_on_an_empty_home(tmp_path):
    """A home where nothing ran: `status --json` names each service, none of them running."""
    done, _ = _run(tmp_path, "status", "--json")
    status = orjson.loads(done.stdout)
    assert {name: state["running"] for name, state in status["services"].items()} == {
        "azurite": False,
        "kafka broker": False,
        "devhost up": False,
        "scoring server": False,
        "training job": False,
        "mlflow ui": False,
    }
    assert status["home"] == str(tmp_path) and status["kafka"]["lag"] is None
