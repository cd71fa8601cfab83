"""The demo path end to end, as `make demo` runs it, with tiny settings: values, not just exit codes."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from mlflow.tracking import MlflowClient

from devhost.demo import split_last_day
from devhost.market.feed import FeedConfig, generate
from devhost.shared.processes import free_port
from tests.e2e.cli import ROOT, devhost, private_env
from tests.factories import oracle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SYMBOLS = ("AAA", "BBB", "CCC")
DAYS, SEED = 2, 11


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run in a private $STOCKCAST_HOME (its own Azurite, MLflow store and scoring port)."""
    home = tmp_path_factory.mktemp("demo-home")
    env = private_env(home)
    summary = home / "summary.json"
    args = ["demo", "--symbols", ",".join(SYMBOLS), "--days", str(DAYS), "--seed", str(SEED)]
    done = devhost(env, *args, "--summary-out", str(summary))
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield home, env, orjson.loads(summary.read_bytes()), done.stdout
    finally:
        devhost(env, "stop", timeout=120)


def test_demo_stores_exactly_the_true_bars(demo):
    """Every true bar of the generated feed, and only those, is in storage after both replays."""
    _, _, result, _ = demo
    bodies = list(generate(FeedConfig(symbols=SYMBOLS, days=DAYS + 1, seed=SEED, bad_events=6)))
    first, extra = split_last_day(bodies)
    assert len(first) + len(extra) == len(bodies)
    assert result["bars_stored"] == len(oracle(bodies))
    assert result["dead_letters"] == 5  # six malformed events, one of them on another stream (ignored)


def test_first_days_cross_the_kafka_protocol(demo):
    """Stage 1 publishes every message of the first days to the local broker and waits for lag 0."""
    _, _, _, stdout = demo
    bodies = list(generate(FeedConfig(symbols=SYMBOLS, days=DAYS + 1, seed=SEED, bad_events=6)))
    first, _ = split_last_day(bodies)
    printed = " ".join(stdout.split())
    assert f"published {len(first)} messages to topic stock_bars at 127.0.0.1:" in printed
    assert "consumer group ingest ingested them in" in printed and "lag 0" in printed


def test_persistence_then_two_trained_versions_with_aliases_as_decided(demo):
    """v1 is persistence; v2 and v3 are trained; `champion` and `challenger` sit where the decisions say."""
    home, _, result, _ = demo
    first, second = result["decisions"]
    assert (first["version"], first["champion_version"], first["kind"]) == ("2", "1", "lstm_attention")
    champion = first["champion_after"]["version"]
    assert champion == ("2" if first["decision"] == "promoted" else "1")
    assert (second["version"], second["champion_version"]) == ("3", champion)
    champion = second["champion_after"]["version"]
    if second["decision"] == "promoted":
        assert champion == "3"
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    aliases = {k: str(v) for k, v in client.get_registered_model("stockcast-lstm-attention").aliases.items()}
    assert aliases == {"champion": champion, "challenger": "3"}
    assert [(v["version"], v["kind"]) for v in result["versions"]] == [
        ("1", "persistence"),
        ("2", "lstm_attention"),
        ("3", "lstm_attention"),
    ]
    for decision in (first, second):  # every decision carries its figures and p-values
        assert {k for k, v in decision["metrics"].items() if v} == {"model", "champion", "persistence"}
        assert 0 <= decision["tests"]["vs_persistence"]["p_value"] <= 1
        assert decision["interval"]["level"] == 0.9 and 0 < decision["interval"]["coverage"] <= 1
        promoted = decision["decision"] == "promoted"
        assert (
            promoted
            == (
                decision["tests"]["vs_persistence"]["p_value"] < 0.05
                and decision["tests"]["vs_persistence"]["loss_ratio"] < 1
            )
            or not promoted
        )


def test_the_endpoint_serves_the_champion(demo):
    """The scoring server left running by the demo serves the version holding `champion`."""
    _, env, result, _ = demo
    champion = result["decisions"][1]["champion_after"]
    assert result["served_version"] == champion["version"]
    info = httpx.get(f"http://127.0.0.1:{env['SCORING_PORT']}/score", timeout=10).json()
    assert info["model"] == {
        "name": "stockcast-lstm-attention",
        "version": champion["version"],
        "kind": champion["kind"],
    }


@pytest.mark.parametrize("stage", ["first_forecasts", "forecasts"])
def test_forecasts_are_finite_and_honest_about_the_session_close(demo, stage):
    """Every symbol gets a finite forecast; at the day's last bar the answer names the next open, not 16:00."""
    _, _, result, _ = demo
    forecasts = result[stage]
    assert sorted(f["symbol"] for f in forecasts) == sorted(SYMBOLS)
    for f in forecasts:
        assert math.isfinite(f["predicted_close"])
        assert f["model"]["kind"] in ("persistence", "lstm_attention") and "skill" in f
        if stage == "forecasts":  # stage 5 GETs before the day's last half hour: inside the session
            assert f["as_of"][11:16] in ("20:29", "20:30") and f["session_closed"] is False
            assert f["interval"]["low"] <= f["predicted_close"] <= f["interval"]["high"]
            continue
        assert f["as_of"].endswith("T20:59:00Z")  # the feed ends each day at 15:59 New York
        assert f["session_closed"] is True and f["target_ts"] is None and f["next_open"] > f["as_of"]
        assert f["predicted_close"] == f["last_close"]  # no forecast across the close
    if stage == "forecasts":  # after the extra day, the forecasts start from its last bar
        assert all(f["as_of"] > g["as_of"] for f, g in zip(forecasts, result["first_forecasts"], strict=True))


def test_mid_session_forecast_carries_an_interval_and_the_served_skill(demo):
    """The demo's POST 30 minutes before the close forecasts the next minute with an interval around it."""
    _, _, result, stdout = demo
    body = result["mid_session"]
    assert body["symbol"] == SYMBOLS[0] and body["as_of"].endswith("T20:29:00Z")
    assert body["target_ts"].endswith("T20:30:00Z") and body["session_closed"] is False
    interval = body["interval"]
    assert interval["level"] == 0.9 and interval["low"] < body["predicted_close"] < interval["high"]
    assert interval["high"] / interval["low"] < 1.05
    served = result["decisions"][0]["champion_after"]
    assert body["model"]["version"] == served["version"] and body["model"]["kind"] == served["kind"]
    assert body["skill"]["n"] > 0 and "inside the session (POST" in stdout


def test_demo_output_tells_every_stage_with_timings(demo):
    """The printed story names all six stages, the decision with RMSEs, compaction, the MLflow UI and timings."""
    _, _, result, stdout = demo
    for line in ("1. ingest", "2. timer", "3. predict", "4. one more day", "5. predict again", "6. compaction"):
        assert line in stdout
    assert "summary" in stdout and "true bars unchanged" in stdout
    assert result["compaction_kept_bars"] is True
    assert "decision: " in stdout and "persistence" in stdout and "mlflow ui --backend-store-uri" in stdout
    assert "one-sided p = " in stdout and "split-conformal, coverage" in stdout
    assert list(result["timings"]) == ["1 ingest", "2 train", "3 predict", "4 train again", "5 predict", "6 compact"]
    assert all(seconds > 0 for seconds in result["timings"].values())
    left = stdout.split("left running: ", 1)[1].split(";", 1)[0]
    assert [name.split(" (pid ")[0] for name in left.split(", ")] == ["azurite", "kafka broker", "scoring server"]
    assert "`make stop` stops them" in stdout


def test_up_after_the_demo_serves_a_forecast_of_the_next_session_within_90_s(demo, tmp_path):
    """`make up` on the demo's home: the live market resumes inside the next session, so a GET is 200 at once."""
    home, env, result, _ = demo
    port = free_port()
    command = [sys.executable, "-m", "devhost", "up", "--port", str(port), "--no-mlflow-ui", "--no-first-tick"]
    log = tmp_path / "up.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--schedule", "0 0 0 1 1 *"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    last_day = max(f["as_of"] for f in result["forecasts"])[:10]
    body = None
    try:
        while time.monotonic() - started < 90 and body is None:
            time.sleep(1)
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/predict/{SYMBOLS[0]}", timeout=10)
            except httpx.TransportError:
                continue
            if response.status_code == 200 and response.json()["as_of"][:10] > last_day:
                body = response.json()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    assert body is not None, log.read_text()[-3000:]
    assert body["session_closed"] is False and body["interval"] is not None
    assert code == 0 and not (home / "run" / "devhost.json").exists()
