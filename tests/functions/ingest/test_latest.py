"""latest/<SYMBOL>.parquet on real Azurite: ETag-conditional merges lose nothing."""

from __future__ import annotations

import threading

import pytest
from azure.storage.blob import BlobServiceClient

from functions.ingest.bars import from_parquet
from functions.ingest.latest import LatestConflictError, latest_blob_name, update_symbol
from tests.functions.ingest.test_bars import T0, bars, key_values

pytestmark = pytest.mark.integration


def minutes(start: int, count: int, emitted: int = 1) -> list[tuple]:
    return [("AAPL", T0 + 60 * (start + i), 100.0 + start + i, 1, emitted) for i in range(count)]


def stored(container) -> list[tuple]:
    return key_values(from_parquet(container.download_blob(latest_blob_name("AAPL")).readall()))


class _InterleaveWrite:
    """Before our write, let another batch land on the same blob (a real race, made certain)."""

    def __init__(self, action, times: int = 1) -> None:
        self.action, self.times, self.fired = action, times, 0

    def __call__(self, request) -> None:
        if request.http_request.method == "PUT" and self.fired < self.times:
            self.fired += 1
            self.action()


def _client(runtime, container, hook):
    return BlobServiceClient.from_connection_string(
        runtime.azurite.connection_string, raw_request_hook=hook
    ).get_container_client(container.container_name)


def test_conflicting_write_is_merged_not_lost(container, runtime):
    """A batch that lands between our read and our write is kept, and so is ours."""
    update_symbol(container, "AAPL", bars(minutes(0, 3)), 512, 4, "seed")
    policy = _InterleaveWrite(lambda: update_symbol(container, "AAPL", bars(minutes(3, 2)), 512, 4, "other"))
    racing = _client(runtime, container, policy)
    held = update_symbol(racing, "AAPL", bars(minutes(5, 2)), 512, 4, "ours")
    assert policy.fired == 1
    assert held == 7
    assert [t for _, t, _, _ in stored(container)] == [T0 + 60 * i for i in range(7)]


def test_gives_up_after_bounded_attempts(container, runtime):
    """When every write loses the race, the update raises so the invocation is retried."""
    policy = _InterleaveWrite(lambda: update_symbol(container, "AAPL", bars(minutes(0, 1)), 512, 4, "other"), 10)
    racing = _client(runtime, container, policy)
    update_symbol(container, "AAPL", bars(minutes(0, 1)), 512, 4, "seed")
    with pytest.raises(LatestConflictError, match="after 3 attempts"):
        update_symbol(racing, "AAPL", bars(minutes(5, 1)), 512, 3, "ours")


def test_two_concurrent_batch_streams_keep_every_bar(container):
    """Two threads updating one symbol at once end with the union of their bars."""

    def worker(offset: int) -> None:
        for k in range(6):
            update_symbol(container, "AAPL", bars(minutes(offset + 2 * k, 1)), 512, 50, f"t{offset}-{k}")

    threads = [threading.Thread(target=worker, args=(o,)) for o in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [t for _, t, _, _ in stored(container)] == [T0 + 60 * i for i in range(12)]


def test_window_and_idempotence(container):
    """Only the newest N bars are kept, and applying a batch twice changes nothing."""
    update_symbol(container, "AAPL", bars(minutes(0, 10)), 4, 4, "a")
    first = stored(container)
    update_symbol(container, "AAPL", bars(minutes(0, 10)), 4, 4, "a-again")
    assert stored(container) == first
    assert [t for _, t, _, _ in first] == [T0 + 60 * i for i in range(6, 10)]
