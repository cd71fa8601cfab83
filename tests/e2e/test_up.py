"""`devhost up` (what `make up` runs): it answers predictions, trains on its timer, and leaves nothing behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from devhost.shared.processes import alive, free_port
from tests.e2e.cli import ROOT, private_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _pids(home: Path) -> dict[str, int]:
    """Every process recorded under the home's state files."""
    pids = {}
    for name, path in {
        "azurite": home / "run" / "azurite.json",
        "kafka broker": home / "run" / "kafka.json",
        "mlflow ui": home / "run" / "mlflow-ui.json",
        "scoring server": home / "serving" / "current.json",
    }.items():
        if path.exists():
            pids[name] = orjson.loads(path.read_bytes())["pid"]
    return pids


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_up_trains_on_its_timer_serves_predictions_and_stops_clean(tmp_path):
    """From an empty home: backfill over Kafka, a timer-trained champion, a live feed; Ctrl-C stops all."""
    home, port, mlflow_port = tmp_path / "home", free_port(), free_port()
    env = private_env(home)
    command = [sys.executable, "-m", "devhost", "up", "--port", str(port), "--mlflow-port", str(mlflow_port)]
    command += ["--schedule", "*/10 * * * * *", "--feed-every", "0.5"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api/predict/AAPL"

    def forecast() -> dict | None:
        try:
            response = httpx.get(base, timeout=10)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    try:
        first = _wait_for(forecast, 300, "a champion behind GET /api/predict/AAPL")
        # persistence (v1) is champion from the first job on; v2 only if the gate promoted it
        assert first["symbol"] == "AAPL"
        assert (first["model"]["version"], first["model"]["kind"]) in (("1", "persistence"), ("2", "lstm_attention"))
        later = _wait_for(lambda: (f := forecast()) and f["as_of"] > first["as_of"] and f, 60, "the live feed")
        assert later["last_close"] > 0
        assert httpx.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=10).status_code == 200
        status = subprocess.run(
            [sys.executable, "-m", "devhost", "status"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        ).stdout
        for service in ("azurite", "kafka broker", "devhost up", "scoring server", "mlflow ui"):
            assert any(service in line and "running" in line for line in status.splitlines()), status
        # the rollout records its server once the server has answered its smoke request, which a GET may beat
        services = {"azurite", "kafka broker", "mlflow ui", "scoring server"}
        children = _wait_for(lambda: set(found := _pids(home)) == services and found, 60, "every service's record")
        assert set(children) == services
        # persistence is served while the first job still trains; once it ends, its outcome is one line
        tick = r"^tick: +job \S+: v\d+ lstm_attention (promoted|retained); champion v\d+ \(\w+\); .*serves v\d+$"
        _wait_for(lambda: re.search(tick, log.read_text(), re.M), 300, "the first job's line")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "backfilling 3 trading days" in text and "timer fired" in text and "stopped: " in text
    assert "timer:       */10 * * * * * (NCRONTAB), first tick now;" in text  # nothing served yet: train at once
    # the narration: the feed's market minutes with the batches ingested
    assert re.search(r"^feed: +market \d{4}-\d\d-\d\d [\d:-]+ UTC \(\d+ min\), ingested \d+ batch", text, re.M), text
    assert [name for name, pid in children.items() if alive(pid)] == []
    assert not (home / "run" / "devhost.json").exists()
