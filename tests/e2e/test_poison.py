"""Poison events in real data, replayed as a user would: exact truth, every poison dead-lettered, then train + predict.

Afterwards the timer's training job and ``GET /api/predict/{symbol}`` must still work.
"""

from __future__ import annotations

import base64
import os

import pyarrow.parquet as pq
import pytest

from devhost.market.feed import FeedConfig, generate
from tests.e2e.cli import devhost, private_env
from tests.factories import message, oracle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
T0 = 1_793_716_200  # 2026-11-03 14:30 UTC, inside the generated days
EMITTED = (T0 + 3600) * 1000
OK = (10.0, 10.5, 9.5, 10.2, 100)


def poison() -> list[tuple[str, bytes]]:
    """(name, body) of hostile events, each of which must end in deadletter/ exactly once."""
    huge = str(2**70).encode()  # orjson cannot write it; a Kafka producer can
    out = [
        ("ts beyond int64", message("AAA", EMITTED, [T0 - 1], [OK]).replace(str(T0 - 1).encode(), huge)),
        ("emitted_at beyond int64", message("AAA", EMITTED - 1, [T0], [OK]).replace(str(EMITTED - 1).encode(), huge)),
        ("millisecond timestamp", message("AAA", EMITTED, [T0 * 1000], [OK])),
        ("dated 2100", message("AAA", EMITTED, [4_102_444_800], [OK])),
        ("volume 1e19", message("AAA", EMITTED, [T0], [(10.0, 10.5, 9.5, 10.2, 10**19)])),
        ("price 1e308", message("AAA", EMITTED, [T0], [(1e308, 1e308, 1e308, 1e308, 100)])),
        ("newline symbol", message("GOOG\n", EMITTED, [T0], [OK])),
        ("unicode symbol", message("straße", EMITTED, [T0], [OK])),
        ("non-numeric value", message("AAA", EMITTED, [T0], [("10.0", 10.5, 9.5, 10.2, 100)])),
        ("null timestamp", message("AAA", EMITTED, [None], [OK])),
        ("object as a price", message("AAA", EMITTED, [T0], [({"x": 1}, 10.5, 9.5, 10.2, 100)])),
        ("fractional timestamp", message("AAA", EMITTED, [T0 + 0.5], [OK])),
        ("negative emitted_at", message("AAA", -5, [T0], [OK])),
        ("not json", b"\x00\x01{garbage"),
        ("json array", b"[1, 2, 3]"),
    ]
    # a partly bad event: its two valid bars must survive, the bad one is named in the dead letter
    partly = message(
        "PARTLY",
        EMITTED,
        [T0, T0 + 60, T0 + 120],
        [OK, (10.2, 10.9, 10.1, "bad", 90), (10.8, 11.0, 10.7, 10.9, 80)],
    )
    out.append(("partly bad", partly))
    return out


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """Three days of real-looking bars with the poison corpus mixed in, replayed into a private home."""
    home = tmp_path_factory.mktemp("poison-home")
    env = private_env(home)
    good = list(generate(FeedConfig(symbols=("AAA", "BBB"), days=3, seed=5)))
    bad = poison()
    bodies = good[: len(good) // 2] + [b for _, b in bad] + good[len(good) // 2 :]
    feed = home / "poisoned.jsonl"
    assert not any(b"\n" in b for b in bodies)  # one event per line
    feed.write_bytes(b"".join(b + b"\n" for b in bodies))
    done = devhost(env, "replay", str(feed), "--batch-size", "16")
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield home, env, good, bad
    finally:
        devhost(env, "stop", timeout=120)


def test_stored_bars_equal_the_truth_and_partly_bad_events_keep_their_valid_bars(poisoned):
    """The bars in storage are exactly the oracle's truth of every event, poison included."""
    home, env, good, bad = poisoned
    out = home / "bars.parquet"
    done = devhost(env, "bars", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out).to_pylist()
    stored = {
        (r["symbol"], int(r["ts"].timestamp())): (r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in table
    }
    expected = oracle([*good, *(b for _, b in bad)])
    assert stored == expected
    assert stored[("PARTLY", T0)] == OK and stored[("PARTLY", T0 + 120)] == (10.8, 11.0, 10.7, 10.9, 80)
    assert ("PARTLY", T0 + 60) not in stored


def test_every_poison_event_is_dead_lettered_once(poisoned):
    """Each hostile event is in deadletter/ exactly once, with a reason."""
    _, env, _, bad = poisoned
    from devhost.app.runtime import prepare
    from devhost.storage.store import dead_letters

    saved = dict(os.environ)
    os.environ.update({"STOCKCAST_HOME": env["STOCKCAST_HOME"], "STOCKCAST_AZURITE_PORT": "0"})
    try:
        from functions.settings import get_settings
        from functions.shared.storage import bars_container

        get_settings.cache_clear()
        bars_container.cache_clear()
        records = dead_letters(prepare().container).records
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        bars_container.cache_clear()
    stored = {(r["body_encoding"], r["body"]) for r in records}
    for name, body in bad:
        assert _as_recorded(body) in stored, f"{name} is not in deadletter/"
    assert len({(r["reason"], r["body"]) for r in records}) == len(bad)  # once each, and nothing else
    assert all(r["reason"] for r in records)


def _as_recorded(body: bytes) -> tuple[str, str]:
    """How a dead-letter record holds an original body: UTF-8 text, else base64."""
    try:
        return "utf-8", body.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(body).decode("ascii")


def test_training_and_predict_still_work_after_the_poison(poisoned):
    """The timer's job trains on what was stored and GET /api/predict/AAA answers a forecast."""
    _, env, _, _ = poisoned
    done = devhost(env, "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "decision:" in done.stdout
    done = devhost(env, "predict", "AAA")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # 0 only for a 200 forecast
    assert "AAA" in done.stdout and ("persistence" in done.stdout or "lstm_attention" in done.stdout)
