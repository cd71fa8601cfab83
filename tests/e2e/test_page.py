"""The live page in a real browser: headless Chromium loads devhost's ``/``, draws AAPL and follows a new bar."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from devhost.app.host import Host
from devhost.http.server import HttpHost
from devhost.kafka.replay import make_batches, replay
from functions.page import blueprint as page
from functions.settings import get_settings
from functions.shared.ledger import (
    SKILL_BLOB,
    LiveFigures,
    ServedRecord,
    SkillDocument,
    encode_served,
    encode_skill,
    served_blob_name,
)
from tests.e2e.cli import ROOT
from tests.factories import message

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SYMBOL = "AAPL"
BARS = 90
SCRIPT = ROOT / "tests" / "e2e" / "page_check.mjs"


def _ingest(bodies: list[bytes]) -> None:
    """Store events through the registered ingest function, as the Event Hubs trigger would."""
    replay(Host(retry_wait_cap=0.01), make_batches(bodies, 1, 64, 0))


def _bars(start: int, n: int) -> bytes:
    """One event with ``n`` one-minute AAPL bars from ``start``, prices drifting up from 100."""
    ts = [start + 60 * i for i in range(n)]
    rows = [(100 + 0.05 * i, 100.3 + 0.05 * i, 99.8 + 0.05 * i, 100.1 + 0.05 * i, 1000) for i in range(n)]
    return message(SYMBOL, int(time.time() * 1000), ts, rows)


def _served(ts: list[int], champion: str) -> list[ServedRecord]:
    """Forecasts for the last 60 minutes: persistence (v1) for the first half, then the champion with a band."""
    now_ms = int(time.time() * 1000)
    records = []
    for i, as_of in enumerate(ts[-61:-1]):
        close = 100.1 + 0.05 * ts.index(as_of)
        if i < 30:
            records.append(
                ServedRecord(
                    SYMBOL, "1", "persistence", as_of, as_of + 60, close, close, None, None, None, now_ms, "get"
                )
            )
        else:
            predicted = close + 0.04
            records.append(
                ServedRecord(
                    SYMBOL,
                    champion,
                    "lstm_attention",
                    as_of,
                    as_of + 60,
                    predicted,
                    close,
                    0.9,
                    predicted - 0.3,
                    predicted + 0.3,
                    now_ms,
                    "get",
                )
            )
    return records


@pytest.fixture
def page_host(container, trained, champion_server, monkeypatch) -> Iterator[str]:
    """Devhost's HTTP host on a free port, the page reading the trained registry; yields its base URL."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
    get_settings.cache_clear()
    page.page_data.cache_clear()
    http = HttpHost(Host(), 0).start()
    try:
        yield f"http://127.0.0.1:{http.port}"
    finally:
        http.stop()
        page.page_data.cache_clear()
        get_settings.cache_clear()


def test_the_live_page_draws_forecasts_with_their_band_shows_the_champion_and_follows_new_bars(
    page_host, container, trained
):
    """Chromium opens ``/``, sees AAPL's closes, forecasts, band and version change, the champion, then a new bar."""
    node = shutil.which("node")
    assert node, "node is needed (make setup installs the npm packages)"
    champion = str(trained.first["champion_after"]["version"])
    start = (int(time.time()) // 60 - BARS - 5) * 60
    ts = [start + 60 * i for i in range(BARS)]
    _ingest([_bars(start, BARS), b"not an event"])
    container.upload_blob(
        served_blob_name(dt.datetime.now(dt.UTC), "test", 1),
        encode_served(_served(ts, champion)),
    )
    figures = {
        "1": LiveFigures("1", "persistence", 30, 1.0, None, None, None, 0, ts[0], ts[29], None),
        champion: LiveFigures(champion, "lstm_attention", 30, 0.97, 0.2, 0.8, 0.9, 30, ts[30], ts[59], None),
    }
    container.upload_blob(SKILL_BLOB, encode_skill(SkillDocument("2026-01-01T00:00:00Z", figures)), overwrite=True)
    data = httpx.get(f"{page_host}/api/live/data", timeout=30).json()
    assert data["symbols"][SYMBOL]["forecasts"] == 60 and data["ingest"]["deadletters_last_hour"] == 1
    rows = {row["version"]: row for row in data["versions"]}
    assert data["champion"] == champion and rows[champion]["champion"], data["versions"]
    assert rows[champion]["decision"] and rows[champion]["decision_ratio"] is not None, rows[champion]
    assert rows[champion]["live_ratio"] == 0.97 and rows[champion]["coverage"] == 0.9

    started = time.monotonic()
    proc = subprocess.Popen(
        [node, str(SCRIPT), f"{page_host}/", SYMBOL, champion],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NODE_PATH": str(ROOT / "node_modules")},
    )
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY "), ready + proc.stdout.read()
        assert int(ready.split()[1]) == ts[-1]
        _ingest([_bars(ts[-1] + 60, 1)])
        proc.stdin.write(f"STORED {ts[-1] + 60}\n")
        proc.stdin.flush()
        out = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
    result = orjson.loads(out.strip().splitlines()[-1])
    assert result["ok"] and result["deadletters"] == "1" and result["lag"].endswith(" s"), result
    assert f"{champion} (champion)" in result["champion"], result
    assert time.monotonic() - started < 40
