"""devhost's emulation of the host: binding expressions, retry policy, registered metadata."""

from __future__ import annotations

import datetime as dt

import pytest

from devhost.app.host import BindingError, Host, RetryPolicy, resolve_path

NOW = dt.datetime(2026, 11, 3, 7, 5, 9, 123000, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (
            "%C%/raw/date={DateTime:yyyy-MM-dd}/hour={DateTime:HH}/x.parquet",
            "bars/raw/date=2026-11-03/hour=07/x.parquet",
        ),
        ("%C%/{DateTime}", "bars/2026-11-03T07-05-09Z"),
        ("a/{DateTime:HH-mm-ss.fff}", "a/07-05-09.123"),
        ("a/{sys.utcnow:yyyy}", "a/2026"),
    ],
)
def test_resolve_path(expression, expected):
    """App settings and DateTime formats resolve as the Functions host resolves them."""
    assert resolve_path(expression, {"C": "bars"}, NOW) == expected


def test_rand_guid_is_fresh_each_time():
    """{rand-guid} gives a new uuid per resolution."""
    first, second = (resolve_path("x/{rand-guid}", {}, NOW) for _ in range(2))
    assert first != second and len(first) == len("x/") + 36


@pytest.mark.parametrize("expression", ["%MISSING%/a", "a/{PartitionContext.PartitionId}"])
def test_unresolvable_expressions_fail_loudly(expression):
    """A missing app setting or unsupported expression is an error, never a literal path."""
    with pytest.raises(BindingError):
        resolve_path(expression, {}, NOW)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy("exponential_backoff", -1, 0, 2, 300), [0.5, 0.5, 0.5]),
        (RetryPolicy("exponential_backoff", 2, 0, 0.1, 300), [0.1, 0.2]),
        (RetryPolicy("fixed_delay", 5, 0.25, 0, 0), [0.25, 0.25, 0.25]),
        (RetryPolicy(), []),
    ],
)
def test_retry_waits(policy, expected):
    """Unbounded policies are capped for interactive use; waits follow the strategy."""
    assert policy.waits(3, 0.5) == expected


def test_ingest_metadata_is_read_from_the_registered_app():
    """The registered ingest function carries its trigger, blob outputs and retry policy."""
    fn = Host().function("eventHubTrigger", "ingest")
    trigger = fn.get_trigger()
    assert (trigger.name, trigger.connection, trigger.event_hub_name) == (
        "events",
        "BarsEventHub",
        "%BARS_EVENTHUB_NAME%",
    )
    assert str(trigger.cardinality.value).lower() == "many"
    paths = {b.name: b.path for b in fn.get_bindings() if b.type == "blob"}
    assert paths["raw"].startswith("%BARS_CONTAINER%/raw/date={DateTime:yyyy-MM-dd}/hour={DateTime:HH}/")
    assert paths["deadletter"].startswith("%BARS_CONTAINER%/deadletter/date={DateTime:yyyy-MM-dd}/")
    assert RetryPolicy.of(fn).max_retry_count == -1
