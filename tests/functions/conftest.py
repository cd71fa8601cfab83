"""Telemetry fixture: the app's instruments record into an in-memory OpenTelemetry SDK reader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from functions import telemetry


class Recorded:
    """What the app's instruments recorded since the fixture started."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader
        # a gauge reports only what was set since the previous collection, so points are merged
        self.seen: dict[tuple[str, frozenset], Any] = {}

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` (cumulative since the fixture started)."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        self.seen[metric.name, frozenset(point.attributes.items())] = point
        return [point for (metric, _), point in self.seen.items() if metric == name]

    def values(self, name: str, *keys: str) -> dict[Any, Any]:
        """Counter or gauge values of ``name`` keyed by the given attributes (one key: its value alone)."""
        out = {}
        for point in self.points(name):
            key = tuple(point.attributes.get(k) for k in keys)
            out[key[0] if len(keys) == 1 else key] = point.value
        return out


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    """An SDK MeterProvider with an InMemoryMetricReader behind the telemetry helpers."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.reset()
    telemetry.use_meter_provider(provider)
    try:
        yield Recorded(reader)
    finally:
        telemetry.reset()
        provider.shutdown()
