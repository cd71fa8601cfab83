"""``devhost up``: the whole local stack until Ctrl-C.

Azurite, the local Kafka broker with the Event Hubs trigger emulation feeding ingest, the HTTP
functions, the timers on their NCRONTAB schedule, a live feed published to the broker, the scoring
server the rollout starts, and the MLflow UI on the local store. On exit every process it started
for the home is stopped, so nothing is left running.

Watchdogs (one thread each, checking every 2 s) restart what dies under it: Azurite
(:func:`devhost.app.runtime.keep_connected`), the Kafka broker (:func:`keep_broker`) and the scoring
server (:func:`keep_serving`, whose restarts back off, since each costs a TensorFlow start).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from devhost.app.host import Host
from devhost.app.runtime import Runtime, keep_connected
from devhost.http.server import HttpHost
from devhost.jobs.local_jobs import running_job
from devhost.kafka import broker as kafka
from devhost.kafka import forecast_stream
from devhost.kafka.publish import publish_local
from devhost.kafka.trigger import KafkaTrigger
from devhost.market import live
from devhost.market.feed import FeedConfig
from devhost.narrate import Narrator
from devhost.services import stop_children
from devhost.serving.local_rollout import LocalRollout, serving_state
from devhost.serving.mlflow_ui import MLFLOW_UI_PORT, start_mlflow_ui, wait_for_mlflow_ui
from devhost.shared.home import port_released, up_state_file
from devhost.shared.processes import command_path, preferred_or_free
from devhost.storage import azurite
from devhost.timers import compaction
from devhost.timers.orchestrate import fire_timer, next_fire
from functions.settings import get_settings

log = logging.getLogger("devhost")


@dataclass(frozen=True)
class UpOptions:
    """How ``devhost up`` runs."""

    port: int = 7071
    feed: bool = True  # the simulated live feed (the broker and its consumer run either way)
    feed_every: float = 60.0  # seconds per simulated market minute; 0 turns the feed off
    mlflow_ui: bool = True
    mlflow_port: int = MLFLOW_UI_PORT
    first_tick: bool = True  # while nothing is served, fire the timer at start rather than a period later
    backfill_days: int = 3
    seed: int = 7
    quiet: bool = False  # no narration (feed minutes, batches ingested, each tick's outcome)


def keep_broker(
    home: Path,
    broker: kafka.Broker,
    trigger: KafkaTrigger,
    stop: threading.Event,
    say: Callable[[str], None],
    every: float = 2.0,
) -> None:
    """Until ``stop`` is set, restart the home's broker if it died (saying what memory storage lost)."""
    while not stop.wait(every):
        try:
            current = kafka.ensure(home, trigger.topic, trigger.group, say=say)
        except Exception:  # a broker failing to start now may start on the next check
            log.exception("the Kafka broker of %s is down and could not be restarted", home)
            continue
        if current.pid != broker.pid:
            say(f"Kafka:       {current.bootstrap} (pid {current.pid}), topic {current.topic} recreated empty")
            trigger.reconnect(current.bootstrap)
            broker = current


def keep_serving(
    home: Path,
    stop: threading.Event,
    say: Callable[[str], None],
    expected: bool = False,
    every: float = 2.0,
    confirm: float = 0.5,
    backoff_cap: float = 60.0,
    stable: float = 60.0,
) -> None:
    """Until ``stop`` is set, restart the home's scoring server on the champion if its process died.

    A server seen running (or ``expected``: the start's rollout failed) that is gone on two checks
    ``confirm`` seconds apart, so that a rollout replacing it is not raced, is restarted through the
    rollout's reconcile, after what is left of its process group (gunicorn workers outlive a killed
    arbiter and hold the port) is killed. The restart rate is bounded: after n restarts in a row
    whose server did not stay up ``stable`` seconds, the next waits ``every * 2**n`` seconds (at
    most ``backoff_cap``) after the one before.
    """
    last = serving_state(home)
    restarts, restarted_at, wait = 0, 0.0, every
    while not stop.wait(wait):
        wait = every
        state = serving_state(home)
        if state is not None:
            last, expected = state, False
            if restarts and time.monotonic() - restarted_at >= stable:
                restarts = 0
            continue
        if last is None and not expected:
            continue  # nothing served yet: the timer's first rollout starts it
        if stop.wait(confirm) or serving_state(home) is not None:
            continue
        hold = restarted_at + min(backoff_cap, every * 2**restarts) - time.monotonic() if restarts else 0.0
        if hold > 0:
            wait = hold
            continue
        restarts, restarted_at = restarts + 1, time.monotonic()
        watchdog = f"watchdog-scoring-{restarts}"
        if last is not None:
            log.warning("watchdog=%s scoring server pid %d of %s died: restarting it", watchdog, last["pid"], home)
            _reap(last)
        try:
            outcome = LocalRollout(get_settings()).reconcile(watchdog)
        except Exception:  # the next check tries again, later each time
            log.exception("watchdog=%s could not restart the scoring server of %s", watchdog, home)
            continue
        now = serving_state(home)
        if now is None:  # nothing started (no champion?) or it died at once: tried again, later each time
            log.warning("watchdog=%s no scoring server runs after the restart: %s", watchdog, outcome)
            continue
        say(f"scoring:     restarted ({outcome}, pid {now['pid']})")
        last = now


def _reap(record: dict, patience: float = 5.0) -> None:
    """Kill what is left of a dead scoring server's process group, and wait for its port to be free."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record["pid"], signal.SIGKILL)
    if not port_released(int(record["port"]), patience):
        log.warning("port %d of the dead scoring server pid %d is still taken", record["port"], record["pid"])


def serve(runtime: Runtime, options: UpOptions, stop: threading.Event, say: Callable[[str], None]) -> None:
    """Run the stack until ``stop`` is set (or Ctrl-C), then stop everything it runs."""
    home = runtime.home
    host = Host()
    settings = get_settings()
    threads: list[threading.Thread] = []
    http = None
    try:
        # restarts this home's Azurite if it dies, and follows it if another command moved it
        threads.append(threading.Thread(target=keep_connected, args=(runtime, stop, say), name="azurite-watch"))
        broker = kafka.ensure(home, settings.bars_eventhub_name, settings.bars_consumer_group, say=say)
        narrator = None if options.quiet else Narrator(home, say)
        trigger = _start_kafka(host, home, broker, narrator, stop, say, threads)
        if options.feed and options.feed_every > 0:
            threads.append(_live_feed(runtime, options, trigger, narrator, stop, say))
        threads.append(_serve_champion(home, stop, say))
        if options.mlflow_ui:  # after the reconcile, which creates a new store's tables: the UI would too
            threads.append(_mlflow_ui(home, options.mlflow_port, stop, say))
        http = HttpHost(host, options.port).start()  # last: an answering API means the stack is up
        _record_up(home, http.port, options, broker.bootstrap)
        first_now = _say_where(runtime, options, http, broker, say)
        threads.append(threading.Thread(target=compaction.run_timer, args=(host, stop, say), name="compaction-timer"))
        if narrator:
            threads.append(threading.Thread(target=narrator.run, args=(stop,), name="narrator"))
        for thread in threads:
            if thread.ident is None:  # the consumer already runs
                thread.start()
        _fire_timers(host, stop, say, first_now)
    finally:
        _shut_down(home, threads, http, stop, say)


def _start_kafka(
    host: Host,
    home: Path,
    broker: kafka.Broker,
    narrator: Narrator | None,
    stop: threading.Event,
    say: Callable[[str], None],
    threads: list[threading.Thread],
) -> KafkaTrigger:
    """Start the ingest trigger on ``broker`` and the forecast stream beside it; add them and the broker's watchdog."""
    trigger = KafkaTrigger(
        host,
        broker.bootstrap,
        broker.topic,
        broker.group,
        owner_lock=kafka.owner_lock(home),
        on_batch=narrator.on_batch if narrator else None,
    )
    consumer = threading.Thread(target=trigger.run, args=(stop,), name="kafka-trigger")
    threads.append(consumer)
    consumer.start()  # first: a backfill is ingested through it
    published = narrator.on_published if narrator else None
    threads.extend(forecast_stream.start(host, home, trigger, stop, published))  # the stream, its own group
    threads.append(threading.Thread(target=keep_broker, args=(home, broker, trigger, stop, say), name="kafka-watch"))
    say(
        f"Kafka:       {broker.bootstrap} (PLAINTEXT), topic {broker.topic} ({broker.partitions} partitions), "
        f"consumer group {broker.group}"
    )
    return trigger


def _live_feed(
    runtime: Runtime,
    options: UpOptions,
    trigger: KafkaTrigger,
    narrator: Narrator | None,
    stop: threading.Event,
    say: Callable[[str], None],
) -> threading.Thread:
    """The live feed's thread (not started), resuming where storage ends; a backfill first when nothing is stored."""

    def send(bodies: list[bytes]) -> dict[int, int]:
        return publish_local(trigger.bootstrap, trigger.topic, bodies).ends

    resume = live.resume_point(runtime.container)
    if resume is None:
        say(f"no bars stored yet: backfilling {options.backfill_days} trading days so the timer can train")
        ends = live.backfill(send, FeedConfig(days=options.backfill_days, seed=options.seed))
        if not trigger.wait_for(ends, timeout=600, stop=stop):
            raise RuntimeError("the backfill was not ingested within 600s; see `devhost status --json`")
        resume = live.resume_point(runtime.container)
    assert resume is not None
    feed = live.LiveFeed(send, resume, options.seed, live.RESUME_MINUTE)  # inside a session at once
    on_step = narrator.on_feed if narrator else None
    say(
        f"live feed: {', '.join(feed.symbols)} from market {feed.clock:%Y-%m-%d %H:%M} UTC, "
        f"one market minute every {options.feed_every:g}s"
    )
    return threading.Thread(target=feed.run, args=(stop, options.feed_every, on_step), name="live-feed")


def _serve_champion(home: Path, stop: threading.Event, say: Callable[[str], None]) -> threading.Thread:
    """Serve the champion now if there is one; the scoring server's watchdog thread (not started)."""
    try:
        say(f"endpoint: {LocalRollout(get_settings()).reconcile('up-start')}")
        serving_failed = False
    except Exception as exc:  # its watchdog tries again; the rest of the stack runs meanwhile
        log.info("tick=up-start the champion could not be served", exc_info=True)
        say(f"endpoint: not serving yet ({type(exc).__name__}: {exc}); the watchdog tries again")
        serving_failed = True
    return threading.Thread(target=keep_serving, args=(home, stop, say, serving_failed), name="scoring-watch")


def _mlflow_ui(home: Path, port: int, stop: threading.Event, say: Callable[[str], None]) -> threading.Thread:
    """Start the MLflow UI in the background (``port`` or any free one); the thread (not started) that waits for it."""
    ui = start_mlflow_ui(home, os.environ["MLFLOW_TRACKING_URI"], preferred_or_free(port))
    say(f"MLflow UI:   {ui['url']}")
    return threading.Thread(target=_watch_ui, args=(home, ui, stop, say), name="mlflow-ui-watch")


def _record_up(home: Path, port: int, options: UpOptions, bootstrap: str) -> None:
    """Record this ``devhost up`` (pid, port, schedule, feed, broker) where status and the other commands look."""
    up_state_file(home).parent.mkdir(parents=True, exist_ok=True)
    up_state_file(home).write_bytes(
        orjson.dumps(
            {
                "pid": os.getpid(),
                "port": port,
                "schedule": os.environ["TRAIN_SCHEDULE"],
                "feed_every": options.feed_every if options.feed else 0,
                "kafka": bootstrap,
            }
        )
    )


def _say_where(
    runtime: Runtime, options: UpOptions, http: HttpHost, broker: kafka.Broker, say: Callable[[str], None]
) -> bool:
    """Say where each part of the stack answers and when the timers fire; whether the first tick fires now."""
    say(f"predict:     {http.base_url}/predict/{{symbol}}  (POST {http.base_url}/predict)")
    say(f"Azurite:     http://127.0.0.1:{runtime.azurite.port}/{azurite.ACCOUNT}")
    say(
        f"publish:     {command_path()} -m devhost publish --bootstrap {broker.bootstrap} --plaintext FILE.jsonl"
        + ("" if options.feed and options.feed_every > 0 else "   (live feed off)")
    )
    say(f"scoring:     http://127.0.0.1:{get_settings().scoring_port}/score")
    # with nothing to serve, the first model should not wait out a whole period (15 min by default)
    first_now = options.first_tick and serving_state(runtime.home) is None
    schedule = os.environ["TRAIN_SCHEDULE"]
    say(f"timer:       {schedule} (NCRONTAB){', first tick now' if first_now else ''}; Ctrl-C stops everything")
    say(f"compaction:  {compaction.settings_summary()}")
    return first_now


def _shut_down(
    home: Path,
    threads: list[threading.Thread],
    http: HttpHost | None,
    stop: threading.Event,
    say: Callable[[str], None],
) -> None:
    """Stop every thread, the HTTP host and every process started for the home; forget this ``devhost up``."""
    stop.set()
    for thread in threads:
        if thread.is_alive():
            thread.join(timeout=30)
    if http:
        http.stop()
    up_state_file(home).unlink(missing_ok=True)
    stopped = stop_children(home)
    say(f"stopped: {', '.join(stopped) or 'nothing else was running'}")


def _watch_ui(home: Path, ui: dict, stop: threading.Event, say: Callable[[str], None]) -> None:
    """Say so if the MLflow UI, started in the background, never answers: the rest runs without it."""
    try:
        wait_for_mlflow_ui(home, ui, stop=stop)
    except (RuntimeError, TimeoutError) as exc:
        say(f"MLflow UI:   not running ({exc})")


def _fire_timers(host: Host, stop: threading.Event, say: Callable[[str], None], first_now: bool = False) -> None:
    while not stop.is_set():
        due = dt.datetime.now(dt.UTC) if first_now else next_fire(host, dt.datetime.now(dt.UTC))
        first_now = False
        if stop.wait(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds())):
            return
        try:
            fire_timer(host)
            home = Path(str(get_settings().stockcast_home))
            job, serving = running_job(home), serving_state(home)
            say(
                f"timer fired ({due:%H:%M:%S}): training job {job['name'] if job else 'not running'}; "
                f"endpoint serves {'v' + serving['version'] if serving else 'nothing yet'}"
            )
        except Exception:  # a failed tick is logged; the next one repairs what it left
            log.exception("timer tick at %s failed", due)
