"""Feed Airbyte JSON lines through the registered Event Hubs function, as Event Hubs would."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import azure.functions as func
import orjson
from azure.functions import meta

from devhost.app.host import Host, Invocation


@dataclass(frozen=True)
class ReplayStats:
    """What a replay did."""

    events: int
    batches: int
    attempts: int
    blobs: int


def read_lines(paths: Iterable[str | Path]) -> Iterator[bytes]:
    """Yield the non-empty lines of JSONL files as raw bytes (bad UTF-8 included)."""
    for path in paths:
        with open(path, "rb") as fh:
            for line in fh:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line


def make_batches(
    bodies: Iterable[bytes], partitions: int, batch_size: int, seed: int, start_sequence: int = 0
) -> list[list[func.EventHubEvent]]:
    """Spread bodies over partitions at random (the Kafka key is a random uuid) and cut batches.

    A batch holds events of one partition in order, like one trigger invocation.
    """
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    per_partition: dict[int, list[func.EventHubEvent]] = {p: [] for p in range(partitions)}
    next_sequence = dict.fromkeys(range(partitions), start_sequence)
    for body in bodies:
        p = rng.randrange(partitions)
        seq = next_sequence[p]
        next_sequence[p] += 1
        per_partition[p].append(
            func.EventHubEvent(
                body=body,
                trigger_metadata={
                    "PartitionContext": meta.Datum(orjson.dumps({"PartitionId": str(p)}).decode(), "json")
                },
                enqueued_time=now,
                partition_key=None,
                sequence_number=seq,
                offset=str(seq * 1024),
            )
        )
    batches = []
    for events in per_partition.values():
        batches.extend(events[i : i + batch_size] for i in range(0, len(events), batch_size))
    return batches


def replay(
    host: Host, batches: list[list[func.EventHubEvent]], on_batch: Callable[[int], None] | None = None
) -> ReplayStats:
    """Invoke the registered Event Hubs function once per batch."""
    fn = host.function("eventHubTrigger", "ingest")
    attempts = blobs = 0
    for batch in batches:
        result: Invocation = host.invoke(fn, batch)
        attempts += result.attempts
        blobs += len(result.blobs)
        if on_batch:
            on_batch(len(batch))
    return ReplayStats(sum(len(b) for b in batches), len(batches), attempts, blobs)
