"""The generated feed looks like Airbyte's: session minutes, overlapping syncs, nulls, provisional bars."""

from __future__ import annotations

import datetime as dt

import orjson

from devhost.market.feed import NEW_YORK, FeedConfig, generate


def _results(cfg: FeedConfig) -> list[tuple[int, dict]]:
    out = []
    for body in generate(cfg):
        doc = orjson.loads(body)
        out.append((doc["_airbyte_emitted_at"], doc["_airbyte_data"]["chart"]["result"][0]))
    return out


def test_deterministic_for_a_seed():
    """The same seed gives byte-identical feeds; another seed does not."""
    cfg = FeedConfig(symbols=("AAA",), days=1)
    assert list(generate(cfg)) == list(generate(cfg))
    assert list(generate(cfg)) != list(generate(FeedConfig(symbols=("AAA",), days=1, seed=8)))


def test_regular_session_minutes_only_and_overlapping_windows():
    """Every bar is within 09:30-16:00 New York time; each sync re-sends the day so far."""
    results = _results(FeedConfig(symbols=("AAA",), days=2, sync_every=30))
    for _, result in results:
        for t in result["timestamp"]:
            local = dt.datetime.fromtimestamp(t, NEW_YORK).time()
            assert dt.time(9, 30) <= local < dt.time(16, 0)
    lengths = [len(r["timestamp"]) for _, r in results[:13]]
    assert lengths == [31, 61, 91, 121, 151, 181, 211, 241, 271, 301, 331, 361, 390]


def test_provisional_last_bar_is_revised_by_the_next_sync():
    """The last bar of a sync is zero-volume O=H=L=C, and the next sync carries its real values."""
    (e1, first), (e2, second) = _results(FeedConfig(symbols=("AAA",), days=1, sync_every=30))[:2]
    quote1, quote2 = first["indicators"]["quote"][0], second["indicators"]["quote"][0]
    last = len(first["timestamp"]) - 1
    assert quote1["volume"][last] == 0
    assert len({quote1[k][last] for k in ("open", "high", "low", "close")}) == 1
    assert quote2["volume"][last] > 0 and e2 > e1


def test_null_minutes_are_null_in_all_five_arrays():
    """Minutes without trades are null everywhere, never partially."""
    _, result = _results(FeedConfig(symbols=("AAA",), days=1, null_rate=0.05))[-1]
    quote = result["indicators"]["quote"][0]
    nulls = [i for i, c in enumerate(quote["close"]) if c is None]
    assert nulls
    assert all(quote[k][i] is None for i in nulls for k in ("open", "high", "low", "volume"))
