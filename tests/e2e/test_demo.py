"""The demo path end to end, as `make demo` runs it, with tiny settings: values, not just exit codes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from mlflow.tracking import MlflowClient

from devhost.demo import split_last_day
from devhost.feed import FeedConfig, generate
from functions.train_trigger.processes import free_port
from tests.factories import oracle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("AAA", "BBB", "CCC")
DAYS, SEED = 2, 11
# tiny model: the first version must still be promoted, so the first-model tolerance is wide here
TINY_TRAINING = "--epochs 1 --units 4 --window 20 --min-windows-per-symbol 50 --baseline-tolerance 0.5"


def devhost(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m devhost`` as a user would, in a private home."""
    return subprocess.run(
        [sys.executable, "-m", "devhost", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run in a private $STOCKCAST_HOME (its own Azurite, MLflow store and scoring port)."""
    home = tmp_path_factory.mktemp("demo-home")
    env = {
        **os.environ,
        "STOCKCAST_HOME": str(home),
        "STOCKCAST_AZURITE_PORT": "0",
        "SCORING_PORT": str(free_port()),
        "TRAIN_ARGS": TINY_TRAINING,
        "PYTHONPATH": str(ROOT),
    }
    for key in ("BarsStorage", "MLFLOW_TRACKING_URI"):  # the session's own services stay out of it
        env.pop(key, None)
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


def test_two_versions_with_aliases_as_decided(demo):
    """Two versions are registered; `champion` and `challenger` sit where the recorded decisions say."""
    home, _, result, _ = demo
    first, second = result["decisions"]
    assert (first["version"], first["decision"], first["champion_version"]) == ("1", "promoted", None)
    assert second["version"] == "2" and second["champion_version"] == "1"
    assert second["decision"] in ("promoted", "retained")
    champion = "2" if second["decision"] == "promoted" else "1"
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    aliases = {k: str(v) for k, v in client.get_registered_model("stockcast-lstm-attention").aliases.items()}
    assert aliases == {"champion": champion, "challenger": "2"}
    assert [(v["version"], v["aliases"]) for v in result["versions"]] == [
        ("1", ["champion"] if champion == "1" else []),
        ("2", ["challenger", "champion"] if champion == "2" else ["challenger"]),
    ]
    # both decisions carry the three predictors' figures; the first had no champion to compare with
    assert first["metrics"]["champion"] is None and second["metrics"]["champion"]["rmse"] > 0
    assert {k for k, v in second["metrics"].items() if v} == {"model", "champion", "persistence"}


def test_the_endpoint_serves_the_champion(demo):
    """The scoring server left running by the demo serves the version holding `champion`."""
    _, env, result, _ = demo
    champion = "2" if result["decisions"][1]["decision"] == "promoted" else "1"
    assert result["served_version"] == champion
    info = httpx.get(f"http://127.0.0.1:{env['SCORING_PORT']}/score", timeout=10).json()
    assert info["model"]["version"] == champion


@pytest.mark.parametrize("stage", ["first_forecasts", "forecasts"])
def test_forecasts_are_finite_and_near_the_last_close(demo, stage):
    """Every symbol gets a finite forecast within 5 % of its last close, one minute ahead."""
    _, _, result, _ = demo
    forecasts = result[stage]
    assert sorted(f["symbol"] for f in forecasts) == sorted(SYMBOLS)
    for f in forecasts:
        assert math.isfinite(f["predicted_close"])
        assert abs(f["predicted_close"] / f["last_close"] - 1) < 0.05
        assert f["target_ts"] > f["as_of"]
    if stage == "forecasts":  # after the extra day, the forecasts start from its last bar
        assert all(f["as_of"] > g["as_of"] for f, g in zip(forecasts, result["first_forecasts"], strict=True))


def test_demo_output_tells_every_stage_with_timings(demo):
    """The printed story names all five stages, the decision with RMSEs, the MLflow UI and timings."""
    _, _, result, stdout = demo
    for line in ("1. ingest", "2. timer", "3. predict", "4. one more day", "5. predict again", "summary"):
        assert line in stdout
    assert "decision: " in stdout and "persistence" in stdout and "mlflow ui --backend-store-uri" in stdout
    assert list(result["timings"]) == ["1 ingest", "2 train v1", "3 predict", "4 train v2", "5 predict"]
    assert all(seconds > 0 for seconds in result["timings"].values())
