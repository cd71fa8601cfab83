"""Command line of devhost: ``python -m devhost {feed,replay,bars,demo,stop}``."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devhost import azurite, feed
from devhost.home import stockcast_home

console = Console()


def _cmd_feed(args: argparse.Namespace) -> int:
    cfg = feed.FeedConfig(
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        days=args.days,
        seed=args.seed,
        start=dt.date.fromisoformat(args.start),
        sync_every=args.sync_every,
        bad_events=args.bad_events,
    )
    count = feed.write_feed(cfg, args.out)
    console.print(f"wrote {count} messages ({len(cfg.symbols)} symbols x {cfg.days} days) to {args.out}")
    return 0


def _replay_files(files: Sequence[str], batch_size: int, partitions: int, seed: int) -> None:
    from devhost.host import Host
    from devhost.replay import make_batches, read_lines, replay
    from devhost.runtime import prepare

    prepare()
    batches = make_batches(read_lines(files), partitions, batch_size, seed, start_sequence=time.time_ns() // 1_000_000)
    total = sum(len(b) for b in batches)
    with Progress(
        TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("events", total=total)
        stats = replay(Host(), batches, on_batch=lambda n: progress.advance(task, n))
    console.print(
        f"replayed {stats.events} events in {stats.batches} batches "
        f"({stats.attempts} invocations, {stats.blobs} blobs written)"
    )


def _cmd_replay(args: argparse.Namespace) -> int:
    _replay_files(args.files, args.batch_size, args.partitions, args.seed)
    return 0


def _print_bars(symbol: str | None, out: str | None) -> None:
    from devhost.runtime import prepare
    from devhost.store import dead_letters, stored_bars

    runtime = prepare()
    bars = stored_bars(runtime.container, symbol)
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
    console.print(f"bars stored: {bars.num_rows}   dead-lettered events: {letters.events} {letters.by_reason() or ''}")
    if out:
        _export(bars, Path(out))
        console.print(f"exported {bars.num_rows} bars to {out}")


def _export(bars: pa.Table, path: Path) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        pq.write_table(bars, path, compression="zstd")
    elif path.suffix == ".csv":
        pcsv.write_csv(bars, path)
    else:
        raise SystemExit(f"--out must end in .csv or .parquet, not {path.suffix!r}")


def _cmd_bars(args: argparse.Namespace) -> int:
    _print_bars(args.symbol, args.out)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from functions.train_trigger.local_jobs import running_job
    from functions.train_trigger.local_rollout import stop_serving
    from functions.train_trigger.processes import stop_group

    home = stockcast_home()
    console.print(f"scoring server: {'stopped' if stop_serving(home) else 'not running'}")
    job = running_job(home)
    if job:
        stop_group(job["pid"])
        console.print(f"training job {job['name']}: stopped")
    console.print(f"azurite: {'stopped' if azurite.stop(home) else 'not running'} ({home})")
    return 0


def _train() -> dict | None:
    """Fire the timer, wait for the job and the rollout, print the decision."""
    from devhost.host import Host
    from devhost.orchestrate import train
    from devhost.runtime import prepare

    runtime = prepare()
    with console.status("timer fired: training job running (python -m training_job.train) ...") as status:
        result = train(Host(), on_wait=lambda name: status.update(f"training job {name} running ..."))
    summary = result.summary
    if summary is None:
        console.print(f"[red]no decision[/]: job {result.job_name} wrote no summary; see {result.log_path}")
        return None
    table = Table(title=f"version {summary['version']}: {summary['decision']}")
    for column in ("predictor", "RMSE", "MAE", "direction"):
        table.add_column(column, justify="left" if column == "predictor" else "right")
    for who, figures in summary["metrics"].items():
        if figures:
            table.add_row(
                who, f"{figures['rmse']:.5f}", f"{figures['mae']:.5f}", f"{figures['directional_accuracy']:.1%}"
            )
    console.print(table)
    console.print(
        f"decision: {summary['decision']} ({summary['reason']}); champion before: {summary['champion_version']}"
    )
    console.print(f"rollout: {result.rollout}   job log: {result.log_path}")
    mlflow_uri = os.environ["MLFLOW_TRACKING_URI"]
    console.print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {mlflow_uri} (runs under {runtime.home / 'mlflow'})"
    )
    return summary


def _cmd_predict(args: argparse.Namespace) -> int:
    import httpx

    from devhost.host import Host
    from devhost.http import HttpHost, route_prefix
    from devhost.runtime import prepare
    from devhost.up import running_up

    runtime = prepare()
    up = running_up(runtime.home)
    local = None
    if up:
        base = f"http://127.0.0.1:{up['port']}/{route_prefix()}"
    else:  # nothing running: serve the HTTP functions in-process for this one call
        local = HttpHost(Host(), 0).start()
        base = local.base_url
    try:
        response = httpx.get(f"{base}/predict/{args.symbol}", timeout=30)
    finally:
        if local:
            local.stop()
    body = response.json()
    if response.status_code != 200:
        console.print(f"[red]{response.status_code}[/] {body['error']['code']}: {body['error']['message']}")
        return 1
    table = Table(title=f"forecast via {base} ({'devhost up' if up else 'in-process'})")
    for column in ("symbol", "last close", "forecast", "as of", "target minute", "model"):
        table.add_column(column)
    table.add_row(
        body["symbol"],
        f"{body['last_close']:.4f}",
        f"{body['predicted_close']:.4f}",
        body["as_of"],
        body["target_ts"],
        f"{body['model']['name']} v{body['model']['version']}",
    )
    console.print(table)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    import threading

    from devhost.runtime import prepare
    from devhost.up import running_up, serve

    if args.schedule:
        os.environ["TRAIN_SCHEDULE"] = args.schedule
    runtime = prepare()
    if running_up(runtime.home):
        console.print(f"devhost up is already running for {runtime.home}")
        return 1
    stop = threading.Event()
    console.print(f"serving http://127.0.0.1:{args.port}/api/predict/{{symbol}}; timer: {os.environ['TRAIN_SCHEDULE']}")
    console.print("Ctrl-C stops it")
    try:
        serve(runtime.home, args.port, stop, on_tick=lambda due: console.print(f"timer fired ({due:%H:%M:%S})"))
    except KeyboardInterrupt:
        stop.set()
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return 0 if _train() else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    home = stockcast_home()
    if not args.keep:
        _cmd_stop(args)
        import shutil

        for sub in ("azurite", "demo", "jobs", "mlflow", "serving"):
            shutil.rmtree(home / sub, ignore_errors=True)
        console.print(f"[bold]demo[/]: starting clean in {home} (use --keep to reuse state)")
    else:
        console.print(f"[bold]demo[/]: reusing state in {home}")
    timings: dict[str, float] = {}

    def stage(name: str, started: float) -> None:
        timings[name] = time.perf_counter() - started

    started = time.perf_counter()
    folder = home / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = feed.FeedConfig(days=args.days + 1, seed=args.seed, bad_events=6)
    first, extra = _split_last_day(list(feed.generate(cfg)))
    paths = folder / "feed-days-1.jsonl", folder / "feed-next-day.jsonl"
    for path, bodies in zip(paths, (first, extra), strict=True):
        path.write_bytes(b"".join(b + b"\n" for b in bodies))
    console.print(
        f"[bold]1. feed[/]: {len(first)} Airbyte messages for {', '.join(cfg.symbols)} over {args.days} trading days "
        f"-> {paths[0]} (+{len(extra)} for one more day -> {paths[1]})"
    )
    _replay_files([str(paths[0])], args.batch_size, 4, args.seed)
    _print_bars(None, None)
    stage("ingest", started)
    started = time.perf_counter()
    console.print("[bold]2. train[/]: the first model")
    _train()
    stage("train v1", started)
    started = time.perf_counter()
    console.print("[bold]3. one more day[/]: replay it, then train again against the champion")
    _replay_files([str(paths[1])], args.batch_size, 4, args.seed + 1)
    _print_bars(None, None)
    _train()
    stage("ingest + train v2", started)
    console.print("stage timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return 0


def _split_last_day(bodies: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split a feed into all but its last trading day, and that day (by emission date)."""

    def day(body: bytes) -> int | None:
        try:
            return orjson.loads(body)["_airbyte_emitted_at"] // 86_400_000
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    days = [day(b) for b in bodies]
    last = max(d for d in days if d is not None)
    return [b for b, d in zip(bodies, days, strict=True) if d != last], [
        b for b, d in zip(bodies, days, strict=True) if d == last
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a devhost command."""
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the functions log")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("feed", help="generate Airbyte price messages as JSON lines")
    p.add_argument("--symbols", default="AAPL,MSFT,NVDA,AMZN,GOOG")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--start", default="2026-11-02", help="first trading day (ISO date)")
    p.add_argument("--sync-every", type=int, default=15, help="minutes between Airbyte syncs")
    p.add_argument("--bad-events", type=int, default=0, help="malformed events to mix in")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_cmd_feed)

    p = sub.add_parser("replay", help="feed JSONL files through the registered ingest function")
    p.add_argument("files", nargs="+")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_cmd_replay)

    p = sub.add_parser("bars", help="print or export the true bars in storage")
    p.add_argument("--symbol")
    p.add_argument("--out", help="FILE.csv or FILE.parquet")
    p.set_defaults(run=_cmd_bars)

    p = sub.add_parser("demo", help="run the whole offline story once")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="reuse the state of a previous run")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("train", help="fire the timer once, wait for the local job and the rollout")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("predict", help="GET /api/predict/SYMBOL through the HTTP function")
    p.add_argument("symbol")
    p.set_defaults(run=_cmd_predict)

    p = sub.add_parser("up", help="serve the HTTP functions and fire the timers until Ctrl-C")
    p.add_argument("--port", type=int, default=7071)
    p.add_argument("--schedule", help="override TRAIN_SCHEDULE (NCRONTAB, e.g. '0 */2 * * * *')")
    p.set_defaults(run=_cmd_up)

    p = sub.add_parser("stop", help="stop everything devhost started for $STOCKCAST_HOME")
    p.set_defaults(run=_cmd_stop)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    for noisy in ("azure", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the SDK warns about HTTP auth levels on every app without an HTTP function; not our concern
    logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("Auth level is not applied"))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
