"""The forecast stream's producer: its Kafka settings for Event Hubs and the local broker, records, failures."""

from __future__ import annotations

import dataclasses
import socket
from types import SimpleNamespace

import orjson
import pytest

from functions.forecast.producer import (
    ForecastProducer,
    PublishError,
    oauth_callback,
    producer_config,
    records,
    token_scope,
)
from functions.settings import Settings, SettingsError

NAMESPACE = "evhns-abc123.servicebus.windows.net"


def _settings(**overrides: object) -> Settings:
    """Settings with the required keys and the stream's producer options."""
    base = Settings(
        bars_container="bars",
        bars_eventhub_name="stock_bars",
        bars_consumer_group="ingest",
        train_schedule="0 */15 * * * *",
    )
    return dataclasses.replace(base, **overrides)


class _Credential:
    """Stands in for the managed identity: records the scopes asked for, returns a token with an expiry."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, scope: str) -> SimpleNamespace:
        self.scopes.append(scope)
        return SimpleNamespace(token="tok-1", expires_on=1_800_000_000)


@pytest.mark.parametrize(
    ("bootstrap", "scope"),
    [
        (f"{NAMESPACE}:9093", f"https://{NAMESPACE}/.default"),
        ("127.0.0.1:19092", "https://127.0.0.1/.default"),
    ],
)
def test_token_scope_is_the_namespace(bootstrap, scope):
    """The OAuth scope is the namespace host without the Kafka port."""
    assert token_scope(bootstrap) == scope


def test_event_hubs_config_signs_in_with_the_identity():
    """SASL_SSL: OAUTHBEARER with a callback returning the identity's token for the namespace and its expiry."""
    credential = _Credential()
    config = producer_config(_settings(forecasts_kafka_bootstrap=f"{NAMESPACE}:9093"), lambda: credential)
    assert config["bootstrap.servers"] == f"{NAMESPACE}:9093"
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "OAUTHBEARER"
    assert config["acks"] == "all"
    assert config["ssl.ca.location"].endswith(".pem")
    assert "sasl.password" not in config and "sasl.username" not in config
    assert config["oauth_cb"]("ignored") == ("tok-1", 1_800_000_000.0)
    assert credential.scopes == [f"https://{NAMESPACE}/.default"]


def test_local_broker_config_needs_no_identity():
    """PLAINTEXT (devhost's broker): no SASL settings, and the credential is never asked for."""

    def no_credential() -> object:
        raise AssertionError("PLAINTEXT must not build a credential")

    settings = _settings(forecasts_kafka_bootstrap="127.0.0.1:19092", forecasts_kafka_security="PLAINTEXT")
    config = producer_config(settings, no_credential)
    assert config["security.protocol"] == "PLAINTEXT"
    assert not {k for k in config if k.startswith("sasl.") or k == "oauth_cb"}


@pytest.mark.parametrize("bootstrap", [None, "", "evhns.servicebus.windows.net"])
def test_bootstrap_must_be_host_and_port(bootstrap):
    """A missing or port-less bootstrap fails fast, naming the setting."""
    with pytest.raises(SettingsError, match="FORECASTS_KAFKA_BOOTSTRAP must be HOST:PORT"):
        producer_config(_settings(forecasts_kafka_bootstrap=bootstrap), lambda: None)


def test_oauth_callback_asks_each_time():
    """Each call of the callback asks the credential (which caches and refreshes its tokens)."""
    credential = _Credential()
    token = oauth_callback(credential, f"{NAMESPACE}:9093")
    token("")
    token("")
    assert credential.scopes == [f"https://{NAMESPACE}/.default"] * 2


def test_records_are_keyed_by_symbol():
    """Each message becomes one record: key = the symbol's bytes, value = the message's JSON."""
    messages = [{"symbol": "AAPL", "key": "AAPL|t|4", "forecast": 1.5}, {"symbol": "BRK-B", "key": "BRK-B|t|4"}]
    out = records(messages)
    assert [k for k, _ in out] == [b"AAPL", b"BRK-B"]
    assert [orjson.loads(v) for _, v in out] == messages


def test_unacknowledged_forecasts_fail_the_batch():
    """No broker answers: publish raises, naming the batch and the count, so the trigger retries the batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    settings = _settings(forecasts_kafka_bootstrap=f"127.0.0.1:{port}", forecasts_kafka_security="PLAINTEXT")
    config = {**producer_config(settings, lambda: None), "message.timeout.ms": 300}
    producer = ForecastProducer(config, "stock_forecasts")
    with pytest.raises(PublishError, match=r"batch=b-1 2 of 2 forecasts to stock_forecasts not delivered"):
        producer.publish([{"symbol": "AAA"}, {"symbol": "BBB"}], "b-1")
