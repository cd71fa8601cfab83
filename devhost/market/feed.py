"""Generate realistic Airbyte destination-kafka messages for the Yahoo Finance price stream.

Each sync re-sends the whole trading day so far (``range: 1d``), so windows overlap heavily; the
minute still forming at sync time is a provisional zero-volume bar (O=H=L=C) that the next sync
revises; minutes without trades are null in all five arrays. Prices follow a random walk whose
1-minute returns carry an AR(1) autocorrelation of ``AUTOCORRELATION`` (a linear signal a good
model must find and the significance gate must be able to confirm on a few days of data), with
U-shaped intraday volatility and volume. Everything is deterministic for a seed. Real minute
returns are much closer to unpredictable: there the honest champion is usually persistence.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import orjson

NEW_YORK = ZoneInfo("America/New_York")
SESSION_MINUTES = 390
AUTOCORRELATION = 0.2  # lag-1 autocorrelation of the simulated 1-minute returns
BAD_KINDS = ("invalid_json", "invalid_utf8", "invalid_symbol", "inconsistent_ohlc", "yahoo_error", "other_stream")


@dataclass(frozen=True)
class FeedConfig:
    """What to generate."""

    symbols: tuple[str, ...] = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG")
    days: int = 3
    seed: int = 7
    start: dt.date = dt.date(2026, 11, 2)
    sync_every: int = 15
    null_rate: float = 0.004
    bad_events: int = 0
    window: int | None = None  # bars per message; None = the day so far (range 1d)


def trading_days(start: dt.date, days: int) -> list[dt.date]:
    """Return ``days`` weekdays from ``start`` on."""
    out, day = [], start
    while len(out) < days:
        if day.weekday() < 5:
            out.append(day)
        day += dt.timedelta(days=1)
    return out


@dataclass
class _Path:
    """One symbol's simulated day: final bars and the price at each minute's open."""

    ts: np.ndarray
    ohlcv: np.ndarray  # (390, 5); NaN rows are minutes without trades
    close: float


def _simulate_day(rng: np.random.Generator, session_open: int, prev_close: float, null_rate: float) -> _Path:
    minutes = np.arange(SESSION_MINUTES)
    u_shape = 1.0 + 1.6 * np.exp(-minutes / 25.0) + 0.8 * np.exp(-(SESSION_MINUTES - 1 - minutes) / 25.0)
    sigma = 0.0009 * u_shape
    noise = rng.standard_normal(SESSION_MINUTES) * sigma
    returns = np.empty(SESSION_MINUTES)
    prev = 0.0
    for i in range(SESSION_MINUTES):
        prev = AUTOCORRELATION * prev + noise[i]
        returns[i] = prev
    open_ = prev_close * np.exp(rng.normal(0.0, 0.004))
    closes = open_ * np.exp(np.cumsum(returns))
    opens = np.concatenate([[open_], closes[:-1]])
    wick = np.abs(rng.standard_normal((2, SESSION_MINUTES))) * sigma * 0.6
    highs = np.maximum(opens, closes) * np.exp(wick[0])
    lows = np.minimum(opens, closes) * np.exp(-wick[1])
    volume = np.floor(rng.lognormal(np.log(20_000), 0.5, SESSION_MINUTES) * u_shape)
    ohlcv = np.round(np.column_stack([opens, highs, lows, closes, volume]), 4)
    ohlcv[:, 1] = np.maximum(ohlcv[:, 1], ohlcv[:, [0, 3]].max(axis=1))
    ohlcv[:, 2] = np.minimum(ohlcv[:, 2], ohlcv[:, [0, 3]].min(axis=1))
    no_trades = rng.random(SESSION_MINUTES) < null_rate
    no_trades[0] = no_trades[-1] = False
    ohlcv[no_trades] = np.nan
    return _Path(session_open + minutes * 60, ohlcv, float(closes[-1]))


def _message(rng: np.random.Generator, symbol: str, emitted_ms: int, ts: np.ndarray, ohlcv: np.ndarray) -> dict:
    quote = {}
    for k, name in enumerate(("open", "high", "low", "close", "volume")):
        col = ohlcv[:, k]
        if name == "volume":
            quote[name] = [None if np.isnan(x) else int(x) for x in col]
        else:
            quote[name] = [None if np.isnan(x) else float(x) for x in col]
    last_close = next((x for x in reversed(quote["close"]) if x is not None), None)
    return {
        "_airbyte_ab_id": str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)))),
        "_airbyte_stream": "price",
        "_airbyte_emitted_at": emitted_ms,
        "_airbyte_data": {
            "chart": {
                "result": [
                    {
                        "meta": {
                            "currency": "USD",
                            "symbol": symbol,
                            "exchangeTimezoneName": "America/New_York",
                            "regularMarketPrice": last_close,
                            "regularMarketTime": int(ts[-1]),
                            "dataGranularity": "1m",
                            "range": "1d",
                        },
                        "timestamp": [int(t) for t in ts],
                        "indicators": {"quote": [quote]},
                    }
                ],
                "error": None,
            }
        },
    }


def _bad_event(kind: str, good: dict, rng: np.random.Generator) -> bytes:
    if kind == "invalid_json":
        return orjson.dumps(good)[:-25]
    if kind == "invalid_utf8":
        return b'{"_airbyte_stream": "price", "\xff\xfe": 1}'
    if kind == "other_stream":
        return orjson.dumps(
            {
                "_airbyte_ab_id": "check",
                "_airbyte_stream": "test-topic-stream",
                "_airbyte_emitted_at": 1,
                "_airbyte_data": {"test": "value"},
            }
        )
    bad = orjson.loads(orjson.dumps(good))
    result = bad["_airbyte_data"]["chart"]["result"][0]
    if kind == "invalid_symbol":
        result["meta"]["symbol"] = "BAD SYMBOL/../x"
    elif kind == "yahoo_error":
        bad["_airbyte_data"]["chart"] = {"result": None, "error": {"code": "Not Found", "description": "No data found"}}
    elif kind == "inconsistent_ohlc":
        quote = result["indicators"]["quote"][0]
        i = int(rng.integers(0, max(1, len(quote["high"]) - 1)))
        while quote["low"][i] is None:
            i = (i + 1) % len(quote["low"])
        quote["high"][i] = quote["low"][i] * 0.9
    return orjson.dumps(bad)


@dataclass
class Day:
    """One simulated trading day of every symbol."""

    date: dt.date
    session_open: int  # unix seconds of 09:30 New York
    paths: dict[str, _Path]


class Market:
    """A deterministic simulated market: each symbol's price path continues from day to day.

    :func:`generate` (a replayable feed) and the live feed of ``devhost up`` both draw from it, so
    a live day looks exactly like a generated one.
    """

    def __init__(
        self, symbols: tuple[str, ...], seed: int, null_rate: float = 0.004, prices: dict[str, float] | None = None
    ) -> None:
        self.symbols = symbols
        self.rng = np.random.default_rng(seed)
        drawn = {s: float(self.rng.uniform(20, 500)) for s in symbols}
        self.prices = {**drawn, **(prices or {})}
        self.null_rate = null_rate

    def simulate(self, day: dt.date) -> Day:
        """Simulate ``day`` for every symbol, starting from each one's last close."""
        session_open = int(dt.datetime.combine(day, dt.time(9, 30), NEW_YORK).timestamp())
        paths = {}
        for symbol in self.symbols:
            paths[symbol] = _simulate_day(self.rng, session_open, self.prices[symbol], self.null_rate)
            self.prices[symbol] = paths[symbol].close
        return Day(day, session_open, paths)

    def sync(self, day: Day, k: int, history: dict | None = None, window: int | None = None) -> list[dict]:
        """The messages of one Airbyte sync ``k`` minutes after the open, one per symbol, in order.

        Past the close (``k >= 390``) the sync carries the whole settled day.
        """
        out = []
        for j, symbol in enumerate(self.symbols):
            path = day.paths[symbol]
            n = min(k, SESSION_MINUTES)
            ts, ohlcv = path.ts[:n], path.ohlcv[:n]
            if window and history is not None:  # a wider range trimmed to the last `window` bars, across days
                ts = np.concatenate([history[symbol][0], ts])[-window:]
                ohlcv = np.vstack([history[symbol][1], ohlcv])[-window:]
            if k < SESSION_MINUTES:  # the minute still forming: provisional, revised next sync
                price = path.ohlcv[k, 0] if not np.isnan(path.ohlcv[k, 0]) else ohlcv[~np.isnan(ohlcv[:, 3]), 3][-1]
                ts = np.append(ts, path.ts[k])
                ohlcv = np.vstack([ohlcv, [price, price, price, price, 0.0]])
            emitted_ms = (day.session_open + k * 60) * 1000 + 2_000 + 37 * j
            out.append(_message(self.rng, symbol, emitted_ms, ts, ohlcv))
        return out


def generate(cfg: FeedConfig) -> Iterator[bytes]:
    """Yield the feed's messages, one JSON body per Airbyte record, in emission order."""
    market = Market(cfg.symbols, cfg.seed, cfg.null_rate)
    messages: list[bytes] = []
    goods: list[dict] = []
    history = {s: (np.empty(0, dtype=np.int64), np.empty((0, 5))) for s in cfg.symbols}
    for date in trading_days(cfg.start, cfg.days):
        day = market.simulate(date)
        syncs = [*list(range(cfg.sync_every, SESSION_MINUTES, cfg.sync_every)), SESSION_MINUTES + 5]
        for k in syncs:
            for good in market.sync(day, k, history, cfg.window):
                goods.append(good)
                messages.append(orjson.dumps(good))
        for symbol in cfg.symbols:
            ts_hist, ohlcv_hist = history[symbol]
            history[symbol] = (
                np.concatenate([ts_hist, day.paths[symbol].ts]),
                np.vstack([ohlcv_hist, day.paths[symbol].ohlcv]),
            )
    rng = market.rng
    for i in range(cfg.bad_events):
        kind = BAD_KINDS[i % len(BAD_KINDS)]
        at = int(rng.integers(0, len(messages) + 1))
        messages.insert(at, _bad_event(kind, goods[int(rng.integers(0, len(goods)))], rng))
    yield from messages


def write_feed(cfg: FeedConfig, path: str) -> int:
    """Write the feed as JSON lines; return the number of messages."""
    count = 0
    with open(path, "wb") as fh:
        for body in generate(cfg):
            fh.write(body + b"\n")
            count += 1
    return count


def write_bars(cfg: FeedConfig, folder: str | Path) -> int:
    """Decode the feed with the ingest code and write its true bars as Parquet (one file per day).

    This is what a replay would leave in ``raw/``; training and benchmarks read it directly.
    """
    from functions.ingest.airbyte import decode_batch, events_from_bodies
    from functions.shared.bars import to_parquet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bars = decode_batch(events_from_bodies(list(generate(cfg)))).bars
    days = bars.column("ts").cast("int64").to_numpy() // 86_400
    for day in np.unique(days):
        name = (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()
        (folder / f"date={name}.parquet").write_bytes(to_parquet(bars.filter(days == day)))
    return bars.num_rows
