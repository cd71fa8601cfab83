"""``devhost up``: serve the HTTP functions and fire the timers on their schedule until Ctrl-C."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from pathlib import Path

import orjson

from devhost.host import Host
from devhost.http import HttpHost
from devhost.orchestrate import fire_timer, next_fire
from functions.train_trigger.processes import alive

log = logging.getLogger("devhost")


def state_file(home: Path) -> Path:
    """Where a running ``devhost up`` records its pid and port."""
    return home / "run" / "devhost.json"


def running_up(home: Path) -> dict | None:
    """The running ``devhost up`` of this home, if any."""
    path = state_file(home)
    if not path.exists():
        return None
    state = orjson.loads(path.read_bytes())
    return state if alive(state["pid"]) else None


def serve(home: Path, port: int, stop: threading.Event, on_tick: object = None) -> None:
    """Serve HTTP and fire timers until ``stop`` is set."""
    host = Host()
    http = HttpHost(host, port).start()
    state_file(home).parent.mkdir(parents=True, exist_ok=True)
    state_file(home).write_bytes(orjson.dumps({"pid": os.getpid(), "port": http.port}))
    try:
        while not stop.is_set():
            now = dt.datetime.now(dt.UTC)
            due = next_fire(host, now)
            if stop.wait(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds())):
                break
            try:
                fire_timer(host)
                if callable(on_tick):
                    on_tick(due)
            except Exception:  # a failed tick is logged; the next one repairs what it left
                log.exception("timer tick at %s failed", due)
    finally:
        http.stop()
        state_file(home).unlink(missing_ok=True)
