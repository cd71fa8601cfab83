"""Custom metrics and events: configuration at the Azure boundary, and what the handlers record."""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest

from devhost.app.host import Host
from devhost.http.server import HttpHost
from devhost.kafka.replay import make_batches, replay
from devhost.market.feed import FeedConfig, generate
from functions import telemetry
from functions.ingest.airbyte import decode_batch, events_from_bodies
from functions.settings import load_settings
from functions.shared.bars import from_parquet
from tests.factories import LOCAL_APP_SETTINGS

BASE = {**LOCAL_APP_SETTINGS, "BarsStorage__blobServiceUri": "https://st.blob.core.windows.net"}
CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x.in.applicationinsights.azure.com/"


class FakeConfigure:
    """Stands in for configure_azure_monitor (the Azure boundary): records the keyword arguments."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, **kwargs: object) -> None:
        self.calls.append(kwargs)
        if self.fail:
            raise ValueError("invalid connection string")


@pytest.fixture
def fresh():
    """Telemetry not yet configured in this process, and forgotten again afterwards."""
    telemetry.reset()
    yield
    telemetry.reset()


def test_configure_is_a_no_op_without_connection_string(fresh):
    """Without APPLICATIONINSIGHTS_CONNECTION_STRING nothing is configured and no credential is made."""
    fake, made = FakeConfigure(), []
    assert telemetry.configure(load_settings(BASE), fake, lambda cid: made.append(cid)) is False
    assert (fake.calls, made) == ([], [])
    assert telemetry.events.propagate is True


def test_configure_passes_the_managed_identity_credential_once(fresh):
    """With a connection string: one call, the identity of AZURE_CLIENT_ID, our logger, no auto-instrumentation."""
    settings = load_settings({**BASE, "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "AZURE_CLIENT_ID": "cid"})
    fake = FakeConfigure()
    credentials = {"cid": object()}
    assert telemetry.configure(settings, fake, credentials.__getitem__) is True
    assert telemetry.configure(settings, fake, credentials.__getitem__) is True
    [kwargs] = fake.calls
    assert kwargs["connection_string"] == CONNECTION
    assert kwargs["credential"] is credentials["cid"]
    assert kwargs["logger_name"] == "stockcast.events"
    assert {name: opts["enabled"] for name, opts in kwargs["instrumentation_options"].items()} == {
        name: False for name in ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3")
    }
    assert (telemetry.events.propagate, telemetry.events.level) == (False, logging.INFO)


def test_configure_failure_leaves_telemetry_off(fresh, caplog):
    """A failing configure is logged once, returns False, and is not retried on the next invocation."""
    settings = load_settings({**BASE, "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION})
    fake = FakeConfigure(fail=True)
    assert telemetry.configure(settings, fake, lambda cid: "cred") is False
    assert telemetry.configure(settings, fake, lambda cid: "cred") is False
    assert len(fake.calls) == 1
    assert "configure_azure_monitor failed" in caplog.text
    telemetry.bars_ingested(3)  # the no-op provider still takes measurements


def test_helpers_record_the_contract_names(recorded, caplog):
    """Each helper records under its contract name with its dimensions."""
    telemetry.bars_ingested(5)
    telemetry.bars_ingested(0)
    telemetry.ingest_lag_ms([10.0, -3.0, 30.0])
    telemetry.deadletters({"invalid_json": 2, "invalid_bars": 1})
    telemetry.deadletters({"invalid_json": 1})
    telemetry.predict_duration(4.0, 200, "predict")
    telemetry.predict_duration(6.0, 200, "predict")
    telemetry.training_submission("active")
    telemetry.rollout("succeeded")
    telemetry.rollout("failed")
    telemetry.rollout("failed")
    telemetry.model_rmse("3", 0.25, 0.5)
    telemetry.model_rmse("4", 0.2, None)
    with pytest.raises(ValueError, match="outcome"):
        telemetry.training_submission("maybe")
    with pytest.raises(ValueError, match="outcome"):
        telemetry.rollout("submitted")
    assert [p.value for p in recorded.points("stockcast.bars.ingested")] == [5]
    [lag] = recorded.points("stockcast.ingest.lag")
    assert (lag.count, lag.sum, lag.min, lag.max) == (3, 40.0, 0.0, 30.0)
    assert recorded.values("stockcast.deadletters", "reason") == {"invalid_json": 3, "invalid_bars": 1}
    [duration] = recorded.points("stockcast.predict.duration")
    assert (dict(duration.attributes), duration.count, duration.sum) == (
        {"status_code": 200, "route": "predict"},
        2,
        10.0,
    )
    assert recorded.values("stockcast.training.submissions", "outcome") == {"active": 1}
    assert recorded.values("stockcast.rollout", "outcome") == {"succeeded": 1, "failed": 2}
    assert recorded.values("stockcast.model.rmse", "predictor", "version") == {
        ("champion", "3"): 0.25,
        ("persistence", "3"): 0.5,
        ("champion", "4"): 0.2,
    }


def test_training_decision_is_a_log_line_with_dimensions(caplog):
    """The decision is logged as 'training decision' with its figures as record attributes (customDimensions)."""
    caplog.set_level(logging.INFO, logger="stockcast.events")
    telemetry.training_decision("tick-1", "2", "retained", "worse than champion", 0.3, 0.2, None)
    [record] = [r for r in caplog.records if r.name == "stockcast.events"]
    assert record.getMessage() == "training decision"
    assert (record.tick, record.version, record.decision, record.reason) == (
        "tick-1",
        "2",
        "retained",
        "worse than champion",
    )
    assert (record.rmse_model, record.rmse_champion, hasattr(record, "rmse_persistence")) == (0.3, 0.2, False)


@pytest.mark.integration
def test_ingest_batches_record_bars_deadletters_and_lag(container, recorded):
    """Two invocations through the host: bars equal the rows in raw/, dead letters by reason, one lag per event."""
    bodies = list(generate(FeedConfig(symbols=("AAA", "BBB"), days=1, sync_every=60, bad_events=6)))
    batches = make_batches(bodies, 1, (len(bodies) + 1) // 2, 0)
    stats = replay(Host(retry_wait_cap=0.01), batches)
    assert (stats.batches, stats.events) == (2, len(bodies))
    raw_rows = sum(
        from_parquet(container.download_blob(b.name).readall()).num_rows for b in container.list_blobs("raw/")
    )
    expected = sum(decode_batch(events_from_bodies([e.get_body() for e in b])).bars.num_rows for b in batches)
    assert [p.value for p in recorded.points("stockcast.bars.ingested")] == [raw_rows] == [expected]
    assert recorded.values("stockcast.deadletters", "reason") == {
        "invalid_bars": 1,
        "invalid_json": 1,
        "invalid_symbol": 1,
        "invalid_utf8": 1,
        "yahoo_error": 1,
    }
    [lag] = recorded.points("stockcast.ingest.lag")
    assert lag.count == len(bodies) and 0 <= lag.min <= lag.max < 60_000


@pytest.mark.integration
def test_predict_records_duration_by_status_and_route(container, recorded):
    """Through devhost's HTTP host: 404 on the GET route and 400 on the POST route, each timed once."""
    http = HttpHost(Host(), 0).start()
    try:
        missing = httpx.get(f"{http.base_url}/predict/NOPE", timeout=30)
        malformed = httpx.post(f"{http.base_url}/predict", content=b"{not json", timeout=30)
        malformed_again = httpx.post(f"{http.base_url}/predict", content=orjson.dumps({"bars": []}), timeout=30)
    finally:
        http.stop()
    assert (missing.status_code, malformed.status_code, malformed_again.status_code) == (404, 400, 400)
    points = {
        (p.attributes["status_code"], p.attributes["route"]): p for p in recorded.points("stockcast.predict.duration")
    }
    assert {key: p.count for key, p in points.items()} == {(404, "predict/{symbol}"): 1, (400, "predict"): 2}
    assert all(0 < p.min <= p.max < 30_000 for p in points.values())
