"""The forecast stream's producer: Kafka records keyed by symbol, to Event Hubs' Kafka endpoint or the local broker.

The stream is produced over the Kafka protocol, not through an Event Hubs output binding: the
Python binding cannot set a partition key, so its events would be spread over the partitions and a
consumer would see one symbol's forecasts out of order; a Kafka record's key is the symbol, so each
symbol's forecasts land in one partition, in order, and a Kafka consumer reads the key as sent.
In Azure the producer signs in with the app's managed identity (SASL OAUTHBEARER, the Data Sender
role on the hub); offline it talks PLAINTEXT to devhost's broker. The same code runs in both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import orjson

from functions.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# librdkafka's wait for the broker's acks of one batch; the invocation fails (and is retried) past it
DELIVERY_TIMEOUT_S = 10.0


class PublishError(RuntimeError):
    """The broker did not acknowledge every forecast of a batch; the invocation fails and is retried."""


def token_scope(bootstrap: str) -> str:
    """The Entra ID scope of an Event Hubs namespace's Kafka endpoint ``<namespace>.servicebus.windows.net:9093``."""
    return f"https://{bootstrap.rsplit(':', 1)[0]}/.default"


def oauth_callback(credential: Any, bootstrap: str) -> Callable[[str], tuple[str, float]]:
    """The ``oauth_cb`` librdkafka calls: a fresh token of the namespace's scope and its expiry (unix s)."""
    scope = token_scope(bootstrap)

    def token(_config: str) -> tuple[str, float]:
        access = credential.get_token(scope)
        return access.token, float(access.expires_on)

    return token


def producer_config(settings: Settings, credential: Callable[[], Any]) -> dict[str, Any]:
    """The librdkafka settings of the stream's producer; ``credential`` is called only for SASL_SSL.

    Raises :class:`SettingsError` when ``FORECASTS_KAFKA_BOOTSTRAP`` is not ``HOST:PORT``.
    """
    bootstrap = settings.forecasts_kafka_bootstrap
    if not bootstrap or ":" not in bootstrap:
        raise SettingsError(f"FORECASTS_KAFKA_BOOTSTRAP must be HOST:PORT, not {bootstrap!r}")
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.forecasts_kafka_security,
        "client.id": "stockcast-forecast-stream",
        "acks": "all",
        "linger.ms": 0,  # a forecast is wanted at once; a batch's records go out together anyway
        "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
        # Event Hubs closes idle TCP connections after 240 s
        "metadata.max.age.ms": 180_000,
        "connections.max.idle.ms": 180_000,
        "socket.keepalive.enable": True,
    }
    if settings.forecasts_kafka_security == "SASL_SSL":
        import certifi  # the wheel's OpenSSL does not always find the system's CA bundle

        config.update(
            {
                "sasl.mechanisms": "OAUTHBEARER",
                "oauth_cb": oauth_callback(credential(), bootstrap),
                "ssl.ca.location": certifi.where(),
            }
        )
    return config


def records(messages: Sequence[Mapping[str, Any]]) -> list[tuple[bytes, bytes]]:
    """The Kafka records of the stream's messages: (key = symbol, value = the message as JSON)."""
    return [(str(m["symbol"]).encode(), orjson.dumps(m)) for m in messages]


class ForecastProducer:
    """One Kafka producer per process and configuration; :meth:`publish` returns once the broker acked every record."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        from confluent_kafka import Producer  # loaded by the stream's first batch, not at import

        self.topic = topic
        self._producer = Producer({**config, "logger": logging.getLogger("functions.forecast.kafka")})
        self._lock = threading.Lock()

    def publish(self, messages: Sequence[Mapping[str, Any]], batch_id: str) -> int:
        """Produce ``messages`` keyed by symbol and wait for the acks; raise :class:`PublishError` unless all came."""
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        with self._lock:
            for key, value in records(messages):
                self._producer.produce(self.topic, value=value, key=key, on_delivery=delivered)
            left = self._producer.flush(DELIVERY_TIMEOUT_S)
        if left or failures:
            detail = failures[0] if failures else f"{left} unacknowledged after {DELIVERY_TIMEOUT_S:.0f} s"
            raise PublishError(
                f"batch={batch_id} {left + len(failures)} of {len(messages)} forecasts to {self.topic} "
                f"not delivered: {detail}"
            )
        log.info("batch=%s published %d forecasts to %s", batch_id, len(messages), self.topic)
        return len(messages)


@cache
def forecast_producer(settings: Settings) -> ForecastProducer:
    """The process's producer for ``settings`` (a new one when the settings change, e.g. a moved local broker)."""
    from functions.shared.identity import azure_credential

    config = producer_config(settings, lambda: azure_credential(settings.azure_client_id))
    return ForecastProducer(config, settings.forecasts_eventhub_name)
