"""``make demo``: the whole offline story once, stage by stage, with real figures.

1. generate trading days of Airbyte bars, publish them to the local Kafka broker and let the Event
   Hubs trigger emulation feed them to the ingest function (Azurite) until its consumer group has
   caught up;
2. fire the timer: the local job registers persistence ("no change") as version 1 and champion,
   trains version 2 and promotes it only if a Diebold–Mariano test says it beats persistence;
   the rollout serves the champion;
3. ``GET /api/predict/{symbol}`` over HTTP for every symbol, with its interval;
4. replay one more day directly through the function (all but its last half hour) and fire the
   timer again: version 3 against the champion and persistence;
5. predict again, inside the session (with intervals), replay the day's last half hour, then
   summarise storage, versions and aliases, plots, the MLflow UI, timings, and what keeps running.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from devhost import views
from devhost.market import feed
from devhost.shared.home import stockcast_home

STATE = ("azurite", "demo", "jobs", "mlflow", "serving", "run")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo generates and how it trains."""

    symbols: tuple[str, ...] = feed.FeedConfig.symbols
    days: int = 3
    seed: int = 7
    batch_size: int = 64
    bad_events: int = 6
    keep: bool = False


@dataclass
class DemoResult:
    """What the demo did, for its summary and for the end-to-end test."""

    bars_stored: int = 0
    dead_letters: int = 0
    decisions: list[dict] = field(default_factory=list)
    first_forecasts: list[dict] = field(default_factory=list)
    compaction_kept_bars: bool = False  # the true bars read after compaction equal those read before
    mid_session: dict | None = None
    forecasts: list[dict] = field(default_factory=list)
    versions: list[dict] = field(default_factory=list)
    served_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def split_last_day(bodies: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split a feed into all but its last trading day, and that day (by emission date)."""

    def day(body: bytes) -> int | None:
        try:
            return orjson.loads(body)["_airbyte_emitted_at"] // 86_400_000
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    days = [day(b) for b in bodies]
    last = max(d for d in days if d is not None)
    first = [b for b, d in zip(bodies, days, strict=True) if d != last]
    return first, [b for b, d in zip(bodies, days, strict=True) if d == last]


def hold_back(bodies: list[bytes], minutes: int) -> tuple[list[bytes], list[bytes]]:
    """Split one day's feed: what was emitted until ``minutes`` before its last sync, and the rest (in order)."""

    def emitted(body: bytes) -> int | None:
        try:
            return int(orjson.loads(body)["_airbyte_emitted_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    at = [emitted(b) for b in bodies]
    cut = max(a for a in at if a is not None) - minutes * 60_000
    early = [b for b, a in zip(bodies, at, strict=True) if a is None or a <= cut]
    return early, [b for b, a in zip(bodies, at, strict=True) if a is not None and a > cut]


def reset(console: Console, keep: bool) -> None:
    """Start clean (stop what runs for the home, remove its state) unless ``keep``; say which."""
    from devhost.services import stop_children
    from devhost.shared.home import running_up

    home = stockcast_home()
    up = running_up(home)
    if up:
        raise SystemExit(f"devhost up is running for {home} (pid {up['pid']}): stop it first, or set STOCKCAST_HOME")
    if keep:
        console.print(f"[bold]demo[/]: reusing the state in {home} on purpose (--keep)")
        return
    stop_children(home)
    for sub in STATE:
        shutil.rmtree(home / sub, ignore_errors=True)
    console.print(f"[bold]demo[/]: starting clean in {home} (make demo ARGS=--keep reuses it)")


def run(options: DemoOptions, console: Console) -> DemoResult:
    """Run the five stages; return what they did."""
    from devhost.app.runtime import prepare
    from devhost.serving.local_rollout import serving_state
    from functions.settings import get_settings

    reset(console, options.keep)
    get_settings.cache_clear()
    result = DemoResult()
    runtime = prepare()
    settings = get_settings()
    folder = runtime.home / "demo"
    first, extra = _write_feed(options, folder)
    with _stage(
        console,
        result,
        "1 ingest",
        f"1. ingest: {options.days} trading days of 1-minute bars for {len(options.symbols)} symbols",
    ):
        console.print(
            f"{len(first)} Airbyte messages (every sync re-sends the day so far; "
            f"{options.bad_events} malformed on purpose) -> {folder / 'feed-days-1.jsonl'}"
        )
        views.ingest_through_kafka(first, console)
        views.show_bars(console)
    with _stage(console, result, "2 train", "2. timer: persistence as version 1, train version 2, serve the champion"):
        result.decisions.append(views.train(console) or {})
    _predict_and_train_again(options, extra, folder, result, console)
    with _stage(
        console, result, "6 compact", "6. compaction: each hour's raw/ blobs merged into one, the bars unchanged"
    ):
        result.compaction_kept_bars = views.compact_all(console)
    stored = views.show_bars(console)
    result.bars_stored, result.dead_letters = stored.bars.num_rows, stored.dead_letters
    result.versions = views.model_versions(str(settings.mlflow_tracking_uri), settings.model_name)
    serving = serving_state(runtime.home)
    result.served_version = serving["version"] if serving else None
    _summary(result, str(settings.mlflow_tracking_uri), console)
    return result


@contextmanager
def _stage(console: Console, result: DemoResult, name: str, title: str) -> Iterator[None]:
    """Open a stage with its title; its time goes to ``result.timings[name]``."""
    console.rule(f"[bold]{title}")
    started = time.perf_counter()
    yield
    result.timings[name] = time.perf_counter() - started


def _write_feed(options: DemoOptions, folder: Path) -> tuple[list[bytes], list[bytes]]:
    """Generate the demo's feed into ``folder``: all but its last trading day, and that day (one more than asked)."""
    cfg = feed.FeedConfig(
        symbols=options.symbols, days=options.days + 1, seed=options.seed, bad_events=options.bad_events
    )
    first, extra = split_last_day(list(feed.generate(cfg)))
    folder.mkdir(parents=True, exist_ok=True)
    for name, bodies in (("feed-days-1.jsonl", first), ("feed-next-day.jsonl", extra)):
        (folder / name).write_bytes(b"".join(b + b"\n" for b in bodies))
    return first, extra


def _predict_and_train_again(
    options: DemoOptions, extra: list[bytes], folder: Path, result: DemoResult, console: Console
) -> None:
    """Stages 3 to 5 over the HTTP functions served in-process: predict, one more day and a tick, predict again."""
    from devhost.app.host import Host
    from devhost.http.server import HttpHost

    http = HttpHost(Host(), 0).start()
    try:
        with _stage(console, result, "3 predict", "3. predict: GET /api/predict/{symbol} over HTTP"):
            result.first_forecasts = views.forecasts(http.base_url, options.symbols, console)
            result.mid_session = views.mid_session_forecast(http.base_url, options.symbols[0], 30, console)
        # the day's last syncs wait until after the GETs of stage 5: they stand inside the session, with intervals
        day, last_syncs = hold_back(extra, 35)
        with _stage(console, result, "4 train again", "4. one more day, then train version 3 against the champion"):
            console.print(
                f"{len(day)} more messages -> {folder / 'feed-next-day.jsonl'} (replayed directly; "
                f"its last {len(last_syncs)}, the half hour before the close, after stage 5)"
            )
            views.replay_bodies(day, options.batch_size, 4, options.seed + 1, console)
            result.decisions.append(views.train(console) or {})
        title = "5. predict again inside the session, with whichever version is champion now"
        with _stage(console, result, "5 predict", title):
            result.forecasts = views.forecasts(http.base_url, options.symbols, console)
            console.print(f"the day's last {len(last_syncs)} messages, to the close (replayed directly)")
            views.replay_bodies(last_syncs, options.batch_size, 4, options.seed + 2, console)
    finally:
        http.stop()


def _summary(result: DemoResult, tracking_uri: str, console: Console) -> None:
    table = Table(title="model versions")
    for column in ("version", "kind", "aliases", "decision", "plots"):
        table.add_column(column)
    for v in result.versions:
        plots = views.plots_folder(tracking_uri, v["run_id"])
        table.add_row(
            v["version"], v.get("kind") or "", ", ".join(v["aliases"]), v["decision"] or "", str(plots or "-")
        )
    console.rule("[bold]summary")
    console.print(f"bars stored: {result.bars_stored}   dead-lettered events: {result.dead_letters}")
    console.print(table)
    console.print(f"the endpoint serves v{result.served_version} (the champion)")
    console.print(f"MLflow UI: {views.mlflow_ui_command()}   (then open http://127.0.0.1:5000)")
    console.print("stage timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    console.print(f"total: {sum(result.timings.values()):.1f}s")
    from devhost.services import status

    running = [f"{service.name} (pid {service.pid})" for service in status(stockcast_home()) if service.running]
    console.print(
        f"left running: {', '.join(running) or 'nothing'}; `make up` picks them up, `make stop` stops them",
        highlight=False,
        soft_wrap=True,
    )
