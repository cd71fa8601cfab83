"""`devhost status` and `devhost stop`: light commands the tests and users call often."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
# what the data and HTTP commands need, and status and stop do not (each cost 0.05-0.2 s to import)
HEAVY = ("pyarrow", "httpx", "azure", "devhost.app.host", "devhost.views", "functions.predict", "functions.ingest")


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
    assert status["live_skill"] is None  # no Azurite: nothing read, nothing started


@pytest.mark.integration
def test_status_shows_the_live_skill_per_version(runtime, container):
    """With Azurite up and ledger/skill.json written, status lists each version's live figures, flagging a worse one."""
    from functions.shared.ledger import SKILL_BLOB, LiveFigures, SkillDocument, encode_skill

    figures = {
        "10": LiveFigures("10", "lstm_attention", 150, 1.031, 0.98, 0.02, 0.88, 150, 1, 2, 3),
        "2": LiveFigures("2", "persistence", 40, 1.0, None, None, None, 0, 1, 2, 3),
    }
    container.upload_blob(SKILL_BLOB, encode_skill(SkillDocument("2026-11-04T21:15:00Z", figures)), overwrite=True)
    done, _ = _run(runtime.home, "status")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if re.search(r"\bv(2|10)\b", line)]
    assert [re.findall(r"v\d+|persistence|lstm_attention|\d+\.\d+%?|worse", row) for row in rows] == [
        ["v2", "persistence", "1.0000"],
        ["v10", "lstm_attention", "1.0310", "0.9800", "0.0200", "worse", "88.0%"],
    ]
    status = orjson.loads(_run(runtime.home, "status", "--json")[0].stdout)["live_skill"]
    assert list(status["versions"]) == ["2", "10"] and status["versions"]["10"]["p_worse"] == 0.02


@pytest.mark.parametrize("bind_host", ["127.0.0.1", "0.0.0.0"])
def test_up_on_a_taken_port_says_so_in_one_line_before_starting_anything(tmp_path: Path, bind_host: str) -> None:
    """A real socket holding the port: `devhost up` names it and --port, starts nothing, shows no traceback."""
    with socket.socket() as holder:
        holder.bind((bind_host, 0))
        holder.listen()
        port = holder.getsockname()[1]
        done, _ = _run(tmp_path, "up", "--port", str(port), "--no-mlflow-ui")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"port {port} is taken: stop what listens there, or pass --port N (make up ARGS='--port {port + 1}')"
    ]
    assert "Traceback" not in done.stderr and "OSError" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no Azurite, broker or state file was started
