"""The live feed of ``devhost up``: every tick, one Airbyte sync per symbol, published to the local broker.

The messages take Airbyte's path: the Kafka protocol to the topic, then the Event Hubs trigger
emulation (:mod:`devhost.kafka.trigger`) hands them to the ingest function.

The market is simulated (see :class:`devhost.market.feed.Market`) on its own clock: one tick is one
market minute, so a whole trading day can be watched in minutes with ``--feed-every``. The feed
resumes where storage ends: the next trading day after the newest stored bar, 45 minutes into its
session (:data:`RESUME_MINUTE`), each symbol starting from its last close, so the series stay
continuous across runs and after ``make demo``.
Storage is read as predict reads it: a corrupt ``latest/`` blob, or a missing one whose symbol was
stored, is repaired from ``raw/`` first, so one damaged blob never stops ``devhost up``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pyarrow.compute as pc
from azure.storage.blob import ContainerClient

from devhost.market.feed import SESSION_MINUTES, FeedConfig, Market, generate, trading_days
from functions.settings import get_settings
from functions.shared.latest import read_latest, stored_symbols

log = logging.getLogger("devhost.live")


@dataclass(frozen=True)
class Resume:
    """Where stored history ends: the newest bar's date and each symbol's last close."""

    last_date: dt.date
    prices: dict[str, float]


def resume_point(container: ContainerClient, request_id: str = "devhost-resume") -> Resume | None:
    """Read ``latest/`` (repaired where damaged) to find where every symbol's stored history ends; None if empty."""
    settings = get_settings()
    prices: dict[str, float] = {}
    newest = None
    for symbol in stored_symbols(container):
        table = read_latest(container, symbol, settings.latest_window, settings.latest_max_attempts, request_id).table
        if table is None or table.num_rows == 0:
            log.info("resume=%s %s has no stored bars; the feed leaves it out", request_id, symbol)
            continue
        prices[symbol] = float(table.column("close")[-1].as_py())
        last = pc.max(table.column("ts")).as_py()
        newest = last if newest is None or last > newest else newest
    if newest is None:
        return None
    return Resume(newest.date(), prices)


# sends Airbyte bodies (to the broker) and returns once each was acknowledged: partition -> end offset
Send = Callable[[list[bytes]], dict[int, int]]


def backfill(send: Send, cfg: FeedConfig) -> dict[int, int]:
    """Send ``cfg``'s generated history; return the end offset per partition to wait for."""
    return send(list(generate(cfg)))


# where the first live day starts: its first sync carries the session's first 45 minutes (as a sync
# catching up does), so the served model's window (30 bars by default) lies inside the session and a
# GET answers 200 from the first tick, not half an hour of ticks after a simulated open
RESUME_MINUTE = 45


class LiveFeed:
    """Sends one sync per symbol per tick; a day ends with the settled sync, then the next day opens."""

    def __init__(self, send: Send, resume: Resume, seed: int, start_minute: int = 1) -> None:
        self.send = send
        self.symbols = tuple(sorted(resume.prices))
        self.market = Market(self.symbols, seed, prices=resume.prices)
        self.date = trading_days(resume.last_date + dt.timedelta(days=1), 1)[0]
        self.day = self.market.simulate(self.date)
        self.minute = max(1, min(start_minute, SESSION_MINUTES - 1))
        self.ticks = 0

    @property
    def clock(self) -> dt.datetime:
        """The simulated market time of the next sync (UTC)."""
        return dt.datetime.fromtimestamp(self.day.session_open + self.minute * 60, dt.UTC)

    def step(self) -> int:
        """Send the next sync; return the number of messages sent."""
        bodies = [orjson.dumps(m) for m in self.market.sync(self.day, self.minute)]
        self.send(bodies)
        self.ticks += 1
        if self.minute >= SESSION_MINUTES:  # the settled sync closed the day
            self.date = trading_days(self.date + dt.timedelta(days=1), 1)[0]
            self.day = self.market.simulate(self.date)
            self.minute = 1
        else:
            self.minute = self.minute + 1 if self.minute < SESSION_MINUTES - 1 else SESSION_MINUTES + 5
        return len(bodies)

    def run(
        self, stop: threading.Event, every: float, on_step: Callable[[dt.datetime, int], None] | None = None
    ) -> None:
        """Step every ``every`` seconds until ``stop`` is set (``on_step`` hears each); a failed step is retried."""
        while not stop.is_set():
            at = self.clock
            try:
                sent = self.step()
                log.info("feed tick=%d market=%s sent=%d", self.ticks, f"{at:%Y-%m-%d %H:%M}", sent)
                if on_step:
                    on_step(at, sent)
            except Exception:  # the broker restarting, say: the next tick re-sends the whole day so far
                log.exception("feed tick at market %s failed", f"{at:%Y-%m-%d %H:%M}")
            stop.wait(every)
