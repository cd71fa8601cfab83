"""Event Hubs trigger on ``stock_bars`` (its own consumer group): publish each stored bar's next-minute forecast.

Output: the batch's forecasts, one Kafka record each keyed by symbol, to the ``stock_forecasts`` hub
(``producer.py``: produced and acknowledged before the function returns, so the trigger's checkpoint
follows the forecasts).
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions import telemetry
from functions.forecast.producer import forecast_producer
from functions.forecast.publish import forecast_batch
from functions.ingest.airbyte import decode_batch
from functions.ingest.blueprint import batch_id, to_raw_events
from functions.settings import get_settings

log = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("forecast_stream")
@bp.retry(
    strategy="exponential_backoff", max_retry_count="-1", minimum_interval="00:00:02", maximum_interval="00:05:00"
)
@bp.event_hub_message_trigger(
    arg_name="events",
    connection="BarsEventHub",
    event_hub_name="%BARS_EVENTHUB_NAME%",
    consumer_group="%FORECAST_CONSUMER_GROUP%",
    cardinality="many",
    data_type="binary",
)
def forecast_stream(events: list[func.EventHubEvent]) -> None:
    """Decode the batch, forecast each symbol's newest bar, and publish the forecasts keyed by symbol."""
    settings = get_settings()
    telemetry.configure(settings)
    raw_events = to_raw_events(events)
    bid = batch_id(raw_events)
    decoded = decode_batch(raw_events)
    messages = forecast_batch(decoded.bars, settings, bid)
    if messages:
        forecast_producer(settings).publish(messages, bid)
