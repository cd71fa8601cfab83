"""Command line of devhost: ``python -m devhost COMMAND`` (feed, replay, bars, compact, demo, train, up, …)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from devhost.kafka import publish
from devhost.kafka.broker import CLIENT_LOG as KAFKA_CLIENT_LOG
from devhost.market import feed
from devhost.shared.home import stockcast_home

if TYPE_CHECKING:  # pyarrow and the views (httpx, rich's progress) load with the commands that use them
    import pyarrow as pa

# a log file or CI gets lines wide enough for the tables instead of rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 120)


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


def _cmd_replay(args: argparse.Namespace) -> int:
    from devhost import views
    from devhost.app.runtime import prepare
    from devhost.kafka.replay import read_lines

    prepare()
    views.replay_bodies(list(read_lines(args.files)), args.batch_size, args.partitions, args.seed, console)
    return 0


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
    from devhost import views

    stored = views.show_bars(console, args.symbol)
    if args.out:
        _export(stored.bars, Path(args.out))
        console.print(f"exported {stored.bars.num_rows} bars to {args.out}")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from devhost import views
    from devhost.app.runtime import prepare
    from devhost.shared.home import running_up
    from devhost.timers import compaction

    if args.all:
        if running_up(stockcast_home()):
            console.print("devhost up is running and may still write to raw/: stop it first, or run without --all")
            return 1
        return 0 if views.compact_all(console) else 1
    report = compaction.compact_closed(prepare().container)
    compaction.show(report, console)
    return 0 if not report.outcomes().get("failed") else 1


def _cmd_stop(args: argparse.Namespace) -> int:
    from devhost.services import stop_children
    from devhost.shared.home import running_up

    home = stockcast_home()
    up = running_up(home)
    if up:
        os.kill(up["pid"], signal.SIGTERM)  # it stops its own children on the way out
        console.print(f"devhost up (pid {up['pid']}): asked to stop")
    stopped = stop_children(home)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'} ({home})")
    return 0


def _p(value: float | None) -> str:
    """A p-value for people: four decimals, or scientific notation when smaller."""
    if value is None:
        return "-"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _live_skill_table(skill: dict) -> Table:
    """The live figures per version: served forecasts scored against persistence, as the timer last folded them."""
    table = Table(title=f"live skill: served forecasts scored against persistence ({skill['updated_at']})")
    for column in ("version", "kind", "n", "log-RMSE vs persistence", "p better", "p worse", "coverage"):
        table.add_column(column, justify="left" if column in ("version", "kind") else "right")
    for version, f in skill["versions"].items():
        alarm = f["p_worse"] is not None and f["p_worse"] < 0.05 and f["n"] >= 100  # the Azure alert's condition
        ratio, coverage = f["ratio_to_persistence"], f["coverage"]
        table.add_row(
            f"v{version}",
            f["kind"],
            str(f["n"]),
            "-" if ratio is None else f"{ratio:.4f}",
            _p(f["p_value"]),
            f"[red]{_p(f['p_worse'])} (worse)[/]" if alarm else _p(f["p_worse"]),
            "-" if coverage is None else f"{coverage:.1%} of {f['interval_n']}",
        )
    return table


def _cmd_status(args: argparse.Namespace) -> int:
    from devhost.services import kafka_status, live_skill_status, status, status_json

    home = stockcast_home()
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(status_json(home), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = Table(title=f"devhost status for {home}")
    for column in ("service", "state", "pid", "where"):
        table.add_column(column)
    for service in status(home):
        state = "[green]running[/]" if service.running else "[dim]stopped[/]"
        table.add_row(service.name, state, str(service.pid or ""), service.detail)
    console.print(table)
    state = kafka_status(home)
    if state["running"]:
        console.print(
            f"kafka: {state['bootstrap']} topic {state['topic']}, consumer group {state['consumer_group']} "
            + (f"lag {state['lag']}" if state["lag"] is not None else f"lag unknown ({state.get('error')})")
            + ("" if state["consumer_running"] else " (no consumer running: start `devhost up`)"),
            highlight=False,
        )
    skill, skill_error = live_skill_status(home)
    if skill is not None and skill["versions"]:
        console.print(_live_skill_table(skill))
    else:
        console.print(
            f"live skill: {skill_error or 'nothing scored yet (the timer scores served forecasts every tick)'}",
            highlight=False,
        )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from devhost import views
    from devhost.app.host import Host
    from devhost.app.runtime import prepare
    from devhost.http.server import HttpHost, route_prefix
    from devhost.shared.home import running_up

    runtime = prepare()
    up = running_up(runtime.home)
    local = None
    if up:
        base = f"http://127.0.0.1:{up['port']}/{route_prefix()}"
    else:  # nothing running: serve the HTTP functions in-process for this one call
        local = HttpHost(Host(), 0).start()
        base = local.base_url
    try:
        console.print(f"calling {'devhost up' if up else 'the HTTP functions served in-process'} at {base}")
        return 0 if views.forecasts(base, [args.symbol], console) else 1
    finally:
        if local:
            local.stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_up(args: argparse.Namespace) -> int:
    import threading

    from devhost.app.runtime import prepare
    from devhost.shared.home import running_up
    from devhost.shared.processes import port_taken
    from devhost.up import UpOptions, serve

    if running_up(stockcast_home()):
        console.print(f"devhost up is already running for {stockcast_home()}")
        return 1
    if port_taken(args.port):  # before anything starts: nothing to start and stop again, no traceback
        console.print(
            f"port {args.port} is taken: stop what listens there, or pass --port N "
            f"(make up ARGS='--port {args.port + 1}')",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    if args.schedule:
        os.environ["TRAIN_SCHEDULE"] = args.schedule
    runtime = prepare()
    # `devhost stop` (SIGTERM) gets the clean exit of Ctrl-C, and so does SIGINT where a shell ignored it for `&`
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupt)
    options = UpOptions(
        port=args.port,
        feed=not args.no_feed,
        feed_every=args.feed_every,
        mlflow_ui=not args.no_mlflow_ui,
        mlflow_port=args.mlflow_port,
        first_tick=not args.no_first_tick,
        seed=args.seed,
        quiet=args.quiet,
    )
    stop = threading.Event()
    try:
        serve(runtime, options, stop, lambda line: console.print(line, highlight=False, soft_wrap=True))
    except KeyboardInterrupt:
        stop.set()
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from devhost import views
    from devhost.app.runtime import prepare

    prepare()
    summary = views.train(console)
    console.print(f"MLflow UI: {views.mlflow_ui_command()}")
    return 0 if summary else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    import orjson

    from devhost.demo import DemoOptions, run

    symbols = tuple(x.strip().upper() for x in args.symbols.split(",") if x.strip())
    options = DemoOptions(symbols=symbols, days=args.days, seed=args.seed, batch_size=args.batch_size, keep=args.keep)
    result = run(options, console)
    if args.summary_out:
        Path(args.summary_out).write_bytes(orjson.dumps(dataclasses.asdict(result), option=orjson.OPT_INDENT_2))
    return 0


def _cmd_forecasts(args: argparse.Namespace) -> int:
    from devhost.kafka import forecast_stream  # the Kafka client and the host load only for this command

    return forecast_stream.run(args)


def _data_commands(sub: argparse._SubParsersAction) -> None:
    """The data commands (feed, replay, bars, compact): generate a feed, ingest it, read and compact what is stored."""
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

    p = sub.add_parser("compact", help="merge each closed hour's raw/ blobs into one, as the compact timer does")
    p.add_argument("--all", action="store_true", help="every hour, the current one too (refused while `up` runs)")
    p.set_defaults(run=_cmd_compact)


def _model_commands(sub: argparse._SubParsersAction) -> None:
    """The model commands (demo, train, predict): the whole story once, a training tick, a forecast over HTTP."""
    p = sub.add_parser("demo", help="run the whole offline story once")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--symbols", default=",".join(feed.FeedConfig.symbols))
    p.add_argument("--keep", action="store_true", help="reuse the state of a previous run")
    p.add_argument("--summary-out", help="write what the demo did as JSON")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("train", help="fire the timer once, wait for the local job and the rollout")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("predict", help="GET /api/predict/SYMBOL through the HTTP function")
    p.add_argument("symbol")
    p.set_defaults(run=_cmd_predict)


def _stack_commands(sub: argparse._SubParsersAction) -> None:
    """The stack commands (up, status, stop): the local stack until Ctrl-C, what runs for the home, stopping it."""
    p = sub.add_parser(
        "up", help="the local stack until Ctrl-C: Kafka broker + trigger, HTTP, timers, live feed, endpoint, MLflow UI"
    )
    p.add_argument("--port", type=int, default=7071)
    p.add_argument("--schedule", help="override TRAIN_SCHEDULE (NCRONTAB, e.g. '0 */2 * * * *')")
    p.add_argument(
        "--feed-every", type=float, default=60.0, help="seconds per simulated market minute (0: no live feed)"
    )
    p.add_argument(
        "--no-feed", action="store_true", help="no simulated feed: ingest only what you publish to the broker"
    )
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (any free one if taken)")
    p.add_argument("--no-mlflow-ui", action="store_true")
    p.add_argument(
        "--no-first-tick",
        action="store_true",
        help="keep to the schedule even while nothing is served (by default the first tick fires at start)",
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the backfill and the live market")
    p.add_argument(
        "--quiet", action="store_true", help="no narration: feed minutes, batches ingested, each tick's outcome"
    )
    p.set_defaults(run=_cmd_up)

    p = sub.add_parser(
        "status", help="what devhost runs for $STOCKCAST_HOME, the Kafka consumer lag and the live skill per version"
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON: kafka {bootstrap, topic, lag, ...}, services, live_skill"
    )
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser("stop", help="stop everything devhost started for $STOCKCAST_HOME")
    p.set_defaults(run=_cmd_stop)


def _kafka_commands(sub: argparse._SubParsersAction) -> None:
    """The Kafka commands (publish, forecasts): bars to the broker as Airbyte sends them, the forecast stream back."""
    publish.add_parser(sub)  # send a feed over the Kafka protocol, as Airbyte does
    p = sub.add_parser("forecasts", help="print the forecast stream (topic stock_forecasts), one line per forecast")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new forecasts until Ctrl-C")
    p.add_argument("--new", action="store_true", help="only forecasts published from now on")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="default: the home's local broker")
    p.set_defaults(run=_cmd_forecasts)


def _parser() -> argparse.ArgumentParser:
    """Every command, in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the functions log")
    sub = parser.add_subparsers(dest="command", required=True)
    _data_commands(sub)
    _model_commands(sub)
    _stack_commands(sub)
    _kafka_commands(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    """Warnings only (everything the functions log with ``--verbose``), without the libraries' noise."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("azure", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # librdkafka logs every refused reconnect; devhost says what matters itself
        logging.getLogger(KAFKA_CLIENT_LOG).setLevel(logging.CRITICAL)
    # the SDK warns about HTTP auth levels on every app without an HTTP function; not our concern
    logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("Auth level is not applied"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run a devhost command."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
