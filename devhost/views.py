"""What devhost's commands and the demo do and show: replay with progress, bars, training, forecasts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devhost.shared.processes import command_path

if TYPE_CHECKING:  # the replay path imports the host and the storage SDK: `devhost status` needs neither
    from devhost.kafka.broker import Broker
    from devhost.kafka.replay import ReplayStats
    from devhost.kafka.trigger import BatchDone


def replay_bodies(bodies: list[bytes], batch_size: int, partitions: int, seed: int, console: Console) -> ReplayStats:
    """Replay Airbyte bodies through the registered ingest function, with a progress bar."""
    from devhost.app.host import Host
    from devhost.kafka.replay import make_batches, replay

    batches = make_batches(bodies, partitions, batch_size, seed, start_sequence=time.time_ns() // 1_000_000)
    with Progress(
        TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("events", total=len(bodies))
        stats = replay(Host(), batches, on_batch=lambda n: progress.advance(task, n))
    from devhost.shared.home import stockcast_home
    from devhost.storage import azurite

    azurite.flush(stockcast_home())  # "replayed" means saved: Azurite keeps its blob index in memory between saves
    console.print(
        f"replayed {stats.events} events in {stats.batches} batches "
        f"({stats.attempts} invocations, {stats.blobs} blobs written)"
    )
    return stats


@dataclass(frozen=True)
class KafkaIngest:
    """What publishing through the local broker and ingesting by the trigger did."""

    bootstrap: str
    topic: str
    group: str
    published: int
    batches: int
    attempts: int
    lag: int


def ingest_through_kafka(bodies: list[bytes], console: Console, timeout: float = 600.0) -> KafkaIngest:
    """Publish Airbyte bodies to the home's broker, run the trigger until its group caught up (lag 0)."""
    from devhost.app.runtime import prepare
    from devhost.kafka import broker as kafka
    from functions.settings import get_settings

    runtime = prepare()
    settings = get_settings()
    broker = kafka.ensure(runtime.home, settings.bars_eventhub_name, settings.bars_consumer_group)
    done = _publish_and_ingest(broker, runtime.home, bodies, console, timeout)
    runtime.persist()  # "ingested" means saved: Azurite keeps its blob index in memory between saves
    lag = kafka.lag(broker.bootstrap, broker.topic, broker.group).total
    result = KafkaIngest(
        broker.bootstrap,
        broker.topic,
        broker.group,
        len(bodies),
        len(done),
        sum(d.attempts for d in done),
        lag,
    )
    console.print(
        f"published {result.published} messages to topic {result.topic} at {result.bootstrap} "
        f"({broker.partitions} partitions); consumer group {result.group} ingested them in {result.batches} "
        f"batches ({result.attempts} invocations), lag {result.lag}"
    )
    return result


def _publish_and_ingest(
    broker: Broker, home: Path, bodies: list[bytes], console: Console, timeout: float
) -> list[BatchDone]:
    """Publish ``bodies`` to ``broker`` and run the trigger until its group caught up, each with a progress bar."""
    import threading

    from devhost.app.host import Host
    from devhost.kafka import broker as kafka
    from devhost.kafka.publish import publish_local
    from devhost.kafka.trigger import KafkaTrigger

    done: list[BatchDone] = []
    stop = threading.Event()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        sent = progress.add_task("publish", total=len(bodies))
        ingested = progress.add_task("ingest ", total=len(bodies))

        def on_batch(result: BatchDone) -> None:
            done.append(result)
            progress.advance(ingested, result.batch.events)

        trigger = KafkaTrigger(
            Host(),
            broker.bootstrap,
            broker.topic,
            broker.group,
            on_batch=on_batch,
            owner_lock=kafka.owner_lock(home),
        )
        thread = threading.Thread(target=trigger.run, args=(stop,), name="kafka-trigger", daemon=True)
        thread.start()
        try:
            ends = publish_local(broker.bootstrap, broker.topic, bodies).ends
            progress.update(sent, completed=len(bodies))
            if not trigger.wait_for(ends, timeout):
                raise RuntimeError(f"the consumer group {broker.group} did not catch up within {timeout:.0f}s")
        finally:
            stop.set()
            thread.join(timeout=30)
    return done


@dataclass(frozen=True)
class StoredSummary:
    """The true bars in storage, the dead-letter counts and the raw/ blobs skipped as unreadable."""

    bars: pa.Table
    dead_letters: int
    by_reason: dict[str, int]
    skipped: tuple[str, ...] = ()


def show_bars(console: Console, symbol: str | None = None) -> StoredSummary:
    """Print the true bars per symbol, the dead-letter count and the unreadable raw/ blobs skipped; return them."""
    from devhost.app.runtime import prepare
    from devhost.storage.store import dead_letters, read_raw

    runtime = prepare()
    raw = read_raw(runtime.container, symbol)
    bars = raw.bars
    letters = dead_letters(runtime.container)
    table = Table(title=f"true bars in {runtime.container.container_name}/raw")
    for column in ("symbol", "bars", "first", "last", "last close"):
        table.add_column(column, justify="right" if column in ("bars", "last close") else "left")
    for sym in pc.unique(bars.column("symbol")).to_pylist():
        rows = bars.filter(pc.equal(bars.column("symbol"), sym))
        ts = rows.column("ts")
        table.add_row(
            sym,
            str(rows.num_rows),
            f"{ts[0].as_py():%Y-%m-%d %H:%M}",
            f"{ts[-1].as_py():%Y-%m-%d %H:%M}",
            f"{rows.column('close')[-1].as_py():.4f}",
        )
    console.print(table)
    console.print(
        f"bars stored: {bars.num_rows}   dead-lettered events: {letters.events} {letters.by_reason() or ''}"
        f"   unreadable raw/ blobs skipped: {len(raw.skipped)}"
    )
    return StoredSummary(bars, letters.events, letters.by_reason(), raw.skipped)


def compact_all(console: Console) -> bool:
    """Compact every hour of raw/ (no writer is left), print what it did; return whether the true bars are unchanged."""
    from devhost.app.runtime import prepare
    from devhost.storage.store import read_raw
    from devhost.timers.compaction import compact_everything, show

    runtime = prepare()
    before = read_raw(runtime.container).bars
    blobs = sum(1 for _ in runtime.container.list_blobs(name_starts_with="raw/"))
    report = compact_everything(runtime.container)
    show(report, console)
    after = read_raw(runtime.container).bars
    left = sum(1 for _ in runtime.container.list_blobs(name_starts_with="raw/"))
    kept = after.equals(before)
    console.print(
        f"raw/ blobs: {blobs} -> {left}; true bars {'unchanged' if kept else 'CHANGED'} ({after.num_rows})",
        highlight=False,
    )
    return kept


def train(console: Console) -> dict | None:
    """Fire the timer, wait for the local job and the rollout, print the decision; return the summary.

    A state devhost cannot heal (a damaged MLflow store) is printed as what to do, not a traceback; None then.
    """
    from devhost.app.host import Host
    from devhost.serving.mlflow_store import StoreDamagedError
    from devhost.timers.orchestrate import train as run_training

    with Progress(
        TextColumn("[bold]train"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("timer fired", total=None)
        try:
            result = run_training(Host(), on_wait=lambda name: progress.update(task, description=f"job {name} running"))
        except StoreDamagedError as exc:
            progress.stop()
            console.print(f"[red]cannot train[/]: {exc}", highlight=False, soft_wrap=True)
            return None
        progress.update(task, total=1, completed=1, description=f"job {result.job_name} done")
    summary = result.summary
    if summary is None:
        console.print(f"[red]no decision[/]: job {result.job_name} wrote no summary; see {result.log_path}")
        return None
    if summary["decision"] == "skipped":  # no window after the last decision: nothing trained or registered
        console.print(f"decision: skipped: {summary['reason']}", highlight=False, soft_wrap=True)
        console.print(f"rollout: {result.rollout}   job log: {result.log_path}")
        return summary
    console.print(decision_table(summary))
    for line in decision_lines(summary):
        console.print(line)
    console.print(f"rollout: {result.rollout}   job log: {result.log_path}")
    return summary


def decision_table(summary: dict) -> Table:
    """The decision-slice figures of the challenger, the champion and persistence."""
    table = Table(title=f"version {summary['version']} ({summary.get('kind', '?')}): {summary['decision']}")
    for column in ("predictor", "RMSE", "log-RMSE", "vs persistence", "MAE", "direction (moved bars)"):
        table.add_column(column, justify="left" if column == "predictor" else "right")
    base = (summary["metrics"].get("persistence") or {}).get("log_rmse")
    for who, figures in summary["metrics"].items():
        if figures:
            direction = figures.get("directional_accuracy")
            log_rmse = figures.get("log_rmse")
            table.add_row(
                who,
                f"{figures['rmse']:.5f}",
                "-" if log_rmse is None else f"{log_rmse:.3e}",
                "-" if not (log_rmse and base) else f"{log_rmse / base:.4f}",
                f"{figures['mae']:.5f}",
                "-" if direction is None else f"{direction:.1%}",
            )
    return table


def decision_lines(summary: dict) -> list[str]:
    """The gate's decision with its p-values, the champion after it, and the interval's coverage."""
    tests = summary.get("tests") or {}
    lines = []
    for name, label in (
        ("vs_persistence", "challenger vs persistence"),
        ("vs_champion", "challenger vs champion"),
        ("champion_vs_persistence", "champion worse than persistence?"),
    ):
        test = tests.get(name)
        if test and test.get("p_value") is not None:
            detectable = test.get("min_detectable_ratio")
            lines.append(
                f"  {label}: DM {test['dm_stat']:+.2f}, one-sided p = {_p(test['p_value'])} (n = {test['n']}"
                + ("" if detectable is None else f"; detectable at 80% power: ratio <= {detectable:.4f}")
                + ")"
            )
    after = summary.get("champion_after") or {}
    lines.append(
        f"decision: [bold]{summary['decision']}[/] at alpha = {summary.get('alpha', 0.05)}: {summary['reason']}"
    )
    lines.append(
        f"champion: v{summary['champion_version']} before, v{after.get('version')} ({after.get('kind')}) after"
        + ("  [yellow](the old champion was demoted)[/]" if summary.get("demoted") else "")
    )
    interval = summary.get("interval")
    if interval:
        lines.append(
            f"interval: {interval['level']:.0%} split-conformal, coverage on the decision slice "
            f"{interval['coverage']:.1%}"
        )
    return lines


def mlflow_ui_command() -> str:
    """The command that opens the MLflow UI on this home's store."""
    return f"{command_path('mlflow')} ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}"


def forecasts(base: str, symbols: Iterable[str], console: Console) -> list[dict]:
    """``GET {base}/predict/{symbol}`` for each symbol over HTTP; print a table; return the bodies.

    A symbol whose answer is not 200 is printed with its error and left out of the result.
    """
    symbols = list(symbols)
    table = Table(title=f"forecasts via GET {base}/predict/{{symbol}}")
    for column in ("symbol", "last close", "forecast", "interval", "as of (UTC)", "target minute", "model"):
        table.add_column(column, justify="right" if column in ("last close", "forecast", "interval") else "left")
    out = []
    with (
        httpx.Client(timeout=30) as client,
        Progress(
            TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
        ) as progress,
    ):
        task = progress.add_task("symbols", total=len(symbols))
        for symbol in symbols:
            response = client.get(f"{base}/predict/{symbol}")
            progress.advance(task)
            body = response.json()
            if response.status_code != 200:
                console.print(
                    f"[red]{symbol}: {response.status_code}[/] {body['error']['code']}: {body['error']['message']}"
                )
                continue
            out.append(body)
            interval = body.get("interval")
            model = body["model"]
            table.add_row(
                body["symbol"],
                f"{body['last_close']:.4f}",
                f"{body['predicted_close']:.4f}",
                "-" if not interval else f"{interval['low']:.4f}..{interval['high']:.4f} ({interval['level']:.0%})",
                _minute(body["as_of"]),
                _target(body),
                f"v{model['version']} {model.get('kind', '')}".strip(),
            )
    if out:  # only errors: they were printed, an empty table would add nothing
        table.caption = f"model {out[0]['model']['name']}"
        console.print(table)
    return out


def mid_session_forecast(base: str, symbol: str, minutes_before_close: int, console: Console) -> dict | None:
    """``POST {base}/predict`` with the stored bars up to ``minutes_before_close`` before the last one.

    The GETs after a replayed day all stand at the session's last minute, where an honest answer
    forecasts nothing; this shows a forecast inside the session, with its interval and the close
    that actually followed.
    """
    from devhost.app.runtime import prepare
    from devhost.storage.store import stored_bars

    bars = stored_bars(prepare().container, symbol)
    if bars.num_rows < 2:
        return None
    times = pc.cast(bars.column("ts"), "int64")
    cut = pc.sum(pc.less_equal(times, times[-1].as_py() - 60 * minutes_before_close)).as_py() or 0
    if cut < 2:
        return None
    window = bars.slice(max(0, cut - 200), min(cut, 200))
    ts = pc.cast(window.column("ts"), "int64").to_pylist()
    cols = {k: window.column(k).to_pylist() for k in ("open", "high", "low", "close", "volume")}
    payload = {
        "symbol": symbol,
        "bars": [
            {"ts": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
            for t, o, h, lo, c, v in zip(
                ts, cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"], strict=True
            )
        ],
    }
    response = httpx.post(f"{base}/predict", json=payload, timeout=30)
    body = response.json()
    if response.status_code != 200:
        console.print(f"[red]{symbol}: {response.status_code}[/] {body['error']['code']}: {body['error']['message']}")
        return None
    actual = bars.column("close")[cut].as_py()
    interval = body.get("interval")
    inside = interval is not None and interval["low"] <= actual <= interval["high"]
    console.print(
        f"inside the session (POST {base}/predict, {symbol} as of {_minute(body['as_of'])} UTC): "
        f"last close {body['last_close']:.4f}, forecast {body['predicted_close']:.4f} for {_target(body)}"
        + (
            f", {interval['level']:.0%} interval {interval['low']:.4f}..{interval['high']:.4f}"
            if interval
            else ", no interval"
        )
        + f"; the close that followed: {actual:.4f} ({'inside' if inside else 'outside'} the interval)"
    )
    skill = body.get("skill") or {}
    if skill:
        p_value = skill.get("p_value")
        console.print(
            f"served v{body['model']['version']} ({body['model'].get('kind')}): log-RMSE "
            f"{skill['ratio_to_persistence']:.4f}x persistence on its decision slice "
            f"(p = {'n/a' if p_value is None else _p(p_value)}, n = {skill['n']})"
        )
    return body


def _p(value: float) -> str:
    """A p-value for people: four decimals, or scientific notation when smaller."""
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _target(body: dict) -> str:
    """The target minute, or the next session's open when the session has closed."""
    if body.get("target_ts"):
        return _minute(body["target_ts"])
    if body.get("session_closed"):
        return "session closed; next open " + (_minute(body["next_open"]) if body.get("next_open") else "unknown")
    return "-"


def _minute(iso: str) -> str:
    """``2026-11-04T20:59:00Z`` as ``2026-11-04 20:59``."""
    return iso.replace("T", " ")[:16]


def model_versions(tracking_uri: str, model_name: str) -> list[dict]:
    """Every registered version with its aliases and recorded decision, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    aliases = client.get_registered_model(model_name).aliases if versions else {}  # search leaves them out
    return sorted(
        (
            {
                "version": str(v.version),
                "aliases": sorted(a for a, version in aliases.items() if str(version) == str(v.version)),
                "decision": v.tags.get("decision"),
                "kind": v.tags.get("kind"),
                "run_id": v.run_id,
            }
            for v in versions
        ),
        key=lambda v: int(v["version"]),
    )


def plots_folder(tracking_uri: str, run_id: str) -> Path | None:
    """The local folder holding a run's plots (PNG artifacts), if the store is local."""
    from mlflow.tracking import MlflowClient

    uri = MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri
    path = Path(uri.removeprefix("file://"))
    pngs = sorted(path.rglob("*.png"))
    return pngs[0].parent if pngs else None
