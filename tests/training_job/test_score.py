"""score.py served by the real azmlinfsrv, and the bar contract between ingest and training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from functions.ingest.airbyte import decode_batch, events_from_bodies
from functions.shared.bars import to_parquet, true_bars
from tests.factories import message, table_bars
from training_job.data import read_bars

pytestmark = pytest.mark.integration


@pytest.fixture
def server(champion_server):
    """The champion served by azmlinfsrv."""
    return champion_server.url, champion_server.info


def _libraries(pgid: int) -> list[set[str]]:
    """The shared libraries mapped by each process of process group ``pgid`` (azmlinfsrv and its workers)."""
    mapped = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            lines = (proc / "maps").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):  # a process that ended while we read
            continue
        mapped.append({Path(line.split()[-1]).name for line in lines if ".so" in line})
    return mapped


def test_the_scoring_worker_serves_the_saved_flatbuffer_without_tensorflow(champion_server, server, bars_dir):
    """The champion's scoring worker runs LiteRT's interpreter and never loads TensorFlow's library."""
    assert httpx.post(server[0], json={"bars": recent_bars(bars_dir, "AAA", 80)}, timeout=30).status_code == 200
    processes = _libraries(champion_server.pid)
    assert len(processes) >= 2  # azmlinfsrv and its worker
    assert any(any("litert" in name for name in libs) for libs in processes)
    assert not [name for libs in processes for name in libs if "tensorflow" in name]


def recent_bars(bars_dir: Path, symbol: str, n: int) -> list[dict]:
    table = pq.read_table(sorted(bars_dir.glob("*.parquet"))[-1]).to_pandas()
    rows = table[table.symbol == "AAA"].tail(n)
    return [
        {
            "symbol": symbol,
            "ts": r.ts.isoformat(),
            "open": r.open,
            "high": r.high,
            "low": r.low,
            "close": r.close,
            "volume": int(r.volume),
        }
        for r in rows.itertuples()
    ]


def test_scores_with_finite_forecast_and_model_identity(server, bars_dir):
    """A valid request gets 200, a forecast with its interval, the model's name, version, kind and skill."""
    url, info = server
    bars = recent_bars(bars_dir, "NEWCO", info["bars_needed"] + 30)[:-30]  # 15:29 New York: mid-session
    response = httpx.post(url, content=orjson.dumps({"bars": bars}), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    [row] = body["forecasts"]
    assert body["model"] == {"name": "stockcast-lstm-attention", "version": "2", "kind": "lstm_attention"}
    assert set(body["skill"]) == {"ratio_to_persistence", "p_value", "n", "evaluated_at"}
    assert body["skill"]["ratio_to_persistence"] < 1 and body["skill"]["p_value"] < 0.05
    as_of = bars[-1]["ts"].replace("+00:00", "Z")
    assert row["symbol"] == "NEWCO" and row["as_of"] == as_of and row["target_ts"] == as_of.replace(":29:", ":30:")
    assert math.isfinite(row["predicted_close"]) and abs(row["predicted_close"] / bars[-1]["close"] - 1) < 0.05
    interval = row["interval"]
    assert interval["level"] == 0.9 and interval["low"] < row["predicted_close"] < interval["high"]
    assert row["session_closed"] is False and row["next_open"] is None


def test_the_sessions_last_minute_names_the_next_open_instead_of_a_minute_that_never_trades(server, bars_dir):
    """At 15:59 New York the target is not 16:00: session_closed, next open, no change forecast."""
    url, info = server
    bars = recent_bars(bars_dir, "NEWCO", info["bars_needed"])  # the last bar of the day: 15:59 New York
    assert bars[-1]["ts"].endswith("20:59:00+00:00")
    response = httpx.post(url, content=orjson.dumps({"bars": bars}))
    [row] = response.json()["forecasts"]
    assert row["session_closed"] is True and row["target_ts"] is None and row["interval"] is None
    assert row["next_open"].endswith("T14:30:00Z")  # the next trading day, 09:30 New York
    assert row["predicted_close"] == bars[-1]["close"]


def test_served_forecast_equals_the_evaluated_one_for_the_same_window(server, trained, bars_dir):
    """Train/serve parity: what the endpoint answers for a decision window is what the gate scored."""
    from mlflow.tracking import MlflowClient

    url, info = server
    client = MlflowClient(trained.tracking_uri)
    run_id = client.get_model_version(trained.config.model_name, "2").run_id
    evaluated = pd.read_parquet(client.download_artifacts(run_id, "decision_forecasts.parquet"))
    bars = read_bars(bars_dir)
    for _, row in evaluated.sample(8, random_state=1).iterrows():
        rows = bars[(bars.symbol == row.symbol) & (bars.ts <= pd.Timestamp(row.as_of, unit="s", tz="UTC"))]
        window = rows.tail(info["bars_needed"])
        payload = [
            {"symbol": r.symbol, "ts": int(r.ts.timestamp()), "open": r.open, "high": r.high, "low": r.low,
             "close": r.close, "volume": int(r.volume)}
            for r in window.itertuples()
        ]  # fmt: skip
        response = httpx.post(url, content=orjson.dumps({"bars": payload}))
        [served] = response.json()["forecasts"]
        assert served["predicted_return"] == pytest.approx(row.model, rel=1e-5, abs=1e-9)
        last = payload[-1]["close"]
        assert served["interval"]["high"] == pytest.approx(last * math.exp(row.model + row.half_width), rel=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "malformed"),
        (b'{"bars": []}', 400, "malformed"),
        (b'{"bars": [{"symbol": "A"}]}', 400, "malformed"),
        (b'{"rows": []}', 400, "malformed"),
    ],
)
def test_bad_input_is_a_json_4xx(server, body, status, code):
    """Malformed requests get a JSON error with a 4xx status, never a 200."""
    url, _ = server
    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_too_few_bars_is_422(server, bars_dir):
    """Fewer contiguous bars than the model needs gets 422, saying how many."""
    url, info = server
    response = httpx.post(url, content=orjson.dumps({"bars": recent_bars(bars_dir, "AAA", 10)}))
    assert response.status_code == 422
    assert str(info["bars_needed"]) in response.json()["error"]["message"]


def _last_minute_of_9999(i: int, n: int, bar: dict) -> dict:
    """Bars ending at 9999-12-31T23:59Z: the forecast's target would fall in year 10000."""
    return {"ts": f"9999-12-31T{23 - (n - 1 - i) // 60:02d}:{59 - (n - 1 - i) % 60:02d}:00+00:00"}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_last_minute_of_9999, id="year-9999"),
        pytest.param(lambda i, n, bar: {"ts": 10**30 + i}, id="ts-huge-int"),
        pytest.param(lambda i, n, bar: {"ts": 1e300}, id="ts-1e300"),
        pytest.param(lambda i, n, bar: {"ts": 1_793_629_800_000 + 60_000 * i}, id="ts-milliseconds"),
        pytest.param(lambda i, n, bar: {"high": 1e308} if i == n - 1 else {}, id="price-1e308"),
        pytest.param(lambda i, n, bar: {"volume": 10**19} if i == n - 1 else {}, id="volume-1e19"),
    ],
)
def test_out_of_range_bars_are_a_json_400_not_a_500(server, bars_dir, change):
    """Times near year 9999 or past int64, millisecond times, price 1e308, volume 1e19: JSON 400 malformed."""
    url, info = server
    n = info["bars_needed"]
    bars = [{**bar, **change(i, n, bar)} for i, bar in enumerate(recent_bars(bars_dir, "NEWCO", n))]
    response = httpx.post(url, content=json.dumps({"bars": bars}), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "malformed"


def test_a_bug_inside_run_is_a_json_500_internal_error(monkeypatch):
    """An unexpected exception inside run() answers JSON 500 internal_error, not the server's own 500 page."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from training_job import score

    def broken(payload: object) -> tuple[dict, int]:
        raise ValueError("injected bug")

    monkeypatch.setattr(score, "score", broken)
    request = Request(EnvironBuilder(method="POST", data=b'{"bars": [{}]}').get_environ())
    response = score.run(request)
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert orjson.loads(response.get_data()) == {
        "error": {"code": "internal_error", "message": "scoring failed unexpectedly"}
    }


def test_bars_written_by_ingest_are_read_by_training_with_the_same_values(tmp_path):
    """The bar table is the contract: ingest's Parquet files read back identically, true-bar rule applied."""
    t0 = 1_793_629_980
    early = message("AAA", t0 * 1000 + 1000, [t0, t0 + 60], [(10.0, 10.5, 9.5, 10.2, 100), (10.2, 10.2, 10.2, 10.2, 0)])
    late = message(
        "AAA", t0 * 1000 + 2000, [t0 + 60, t0 + 120], [(10.2, 10.9, 10.1, 10.8, 350), (10.8, 11.0, 10.7, 10.9, 90)]
    )
    batches = [decode_batch(events_from_bodies([b])).bars for b in (early, late)]
    for i, table in enumerate(batches):
        (tmp_path / f"date=x/hour={i}").mkdir(parents=True)
        (tmp_path / f"date=x/hour={i}/b{i}.parquet").write_bytes(to_parquet(table))
    expected = table_bars(true_bars(pa.concat_tables(batches)))
    df = read_bars(tmp_path)
    got = {(r.symbol, int(r.ts.timestamp())): (r.open, r.high, r.low, r.close, r.volume) for r in df.itertuples()}
    assert got == expected
    assert got[("AAA", t0 + 60)] == (10.2, 10.9, 10.1, 10.8, 350)
    assert str(df["ts"].dt.tz) == "UTC" and df["volume"].dtype == "int64"


def test_a_batch_answers_each_request_as_if_sent_alone(server, bars_dir):
    """A batched POST gets one answer per request, in order: forecasts equal to single calls, 4xx kept per request."""
    url, info = server
    good = recent_bars(bars_dir, "NEWCO", info["bars_needed"] + 30)[:-30]
    other = recent_bars(bars_dir, "OTHER", info["bars_needed"] + 10)[:-10]
    short = good[-5:]
    batch = {"requests": [{"bars": good}, {"bars": short}, {"bars": other}, {"nothing": 1}]}
    response = httpx.post(url, content=orjson.dumps(batch), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    answers = response.json()["responses"]
    assert [a["status"] for a in answers] == [200, 422, 200, 400]
    assert [answers[1]["body"]["error"]["code"], answers[3]["body"]["error"]["code"]] == [
        "not_enough_bars",
        "malformed",
    ]
    for answer, bars in ((answers[0], good), (answers[2], other)):
        alone = httpx.post(url, content=orjson.dumps({"bars": bars}), headers={"Content-Type": "application/json"})
        assert answer["body"] == alone.json()
    assert httpx.get(url).json()["max_batch"] == 64


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        ({"requests": []}, "malformed", 400),
        ({"requests": "x"}, "malformed", 400),
        ({"requests": [{"bars": []}] * 65}, "too_large", 413),
    ],
)
def test_a_malformed_batch_is_a_json_4xx(server, body, code, status):
    """An empty, non-list or oversized batch is refused as a whole with a JSON error."""
    url, _ = server
    response = httpx.post(url, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
