"""What one training tick costs as stored history and the number of symbols grow.

For 5 / 50 / 500 symbols × 5 / 20 trading days, generated 1-minute bars (a random walk per symbol
whose returns carry a planted AR(1) of φ = 0.2, as ``benchmarks/train.py``'s feed) are written
straight to a local folder as ingest and compaction leave them in ``raw/``: one
``date=D/hour=H/_compacted.parquet`` per closed hour (``functions.shared.compaction.encode_compacted``,
its manifest naming the batch blobs it merged) and, for the newest (open) hour, the small batch blobs
ingest wrote (``functions.shared.bars.to_parquet``). That folder is what the Azure ML job's
``ro_mount`` of ``raw/`` presents. Nothing is sent over HTTP or Kafka, and generating and writing
are not timed.

Each configuration then runs ONE tick of the training job in a fresh process, through its public
entry point ``training_job.train.run(TrainConfig(bars=…))`` with every default (``--mode warm``, the
last ``history_days`` trading days, at most ``max_train_windows`` training windows), against a new
MLflow SQLite store: the tick reads the history, builds the windows, registers persistence (the
first champion, so the fit starts from scratch), fits, evaluates on the decision slice and registers
the challenger. ``tick_s`` is the wall time of ``run`` (the interpreter and TensorFlow import, and
creating the empty store, are left out: ``process_s`` has them). Peak memory is the child's
``ru_maxrss`` (``os.wait4``); blobs read are the distinct Parquet files under the folder the child
opened (pyarrow's readers are counted). Phases come from timing the job's own functions in the
child where they exist (``read``: ``read_history``, ``windows``: ``prepare_bars``, ``train``:
``fit_model``, ``evaluate``: the rest of the tick, of which ``score`` is
``Forecaster.predict_frame`` and ``save`` is ``save_pyfunc``); a function that moved is reported as
missing, never guessed.

``history_growth`` is the 20-day tick over the 5-day tick at 50 symbols (the job's history is
bounded, so more stored days should cost nothing more); ``per_symbol_growth`` is the 20-day tick's
cost per symbol at 500 over that at 50 (at most 1: a symbol more costs no more than the average
one). Each configuration runs ``--repeat`` times (2), interleaved, and keeps its fastest run (the
box is shared). A tick whose resident memory passes ``--memory-limit-mb`` (60 % of what is free
at the start, at most 16 GiB) is killed rather than let it starve the machine, and recorded under
``failed`` with the phase it was in; a ratio that needs it is then null, never taken from the
configurations left. ``cost_model`` is the straight line through the two largest symbol counts
that completed (time and peak memory per symbol) and how many symbols it lets a tick hold.
``--mode full`` runs the daily full retrain's tick instead (the last ``full_history_days``, from
scratch); ``--quick`` runs 5 and 50 symbols only (``per_symbol_growth`` then compares 50 with 5);
``--profile NAME`` runs one configuration's tick under cProfile and prints where its time went.
Prints progress and a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from functions.shared.bars import BAR_SCHEMA, to_parquet  # noqa: E402
from functions.shared.compaction import encode_compacted  # noqa: E402
from training_job.config import MODES  # noqa: E402

SYMBOLS = (5, 50, 500)
QUICK_SYMBOLS = (5, 50)
DAYS = (5, 20)
HISTORY_AT = 50  # history_growth compares the long history with the short one at this many symbols
TICK_S = 15 * 60  # the timer's period (TRAIN_SCHEDULE): a tick should end before the next one
SESSION_MINUTES = 390
# 09:30 New York in summer (EDT) is 13:30 UTC: a session covers the hour folders 13 … 19
SESSION_OPEN_UTC_S = 13 * 3600 + 30 * 60
LAST_DAY = dt.date(2025, 6, 27)  # a Friday: the newest generated session
AUTOCORRELATION = 0.2  # the planted AR(1) of benchmarks/train.py's feed (devhost.market.feed.AUTOCORRELATION)
TAIL_BLOB_MINUTES = 5  # the open hour is left as ingest wrote it: one raw batch blob per this many minutes
COVERED_PER_HOUR = 60  # batch blobs a compacted hour's manifest names as merged (deleted since)
HOUR_S = 3600
# memory of the Azure ML node sizes docs/deploy.md weighs (GiB): DS3_v2, DS4_v2 / E4s_v3, E8s_v3, E16s_v3
NODE_MEMORY_GIB = (14, 28, 32, 64, 128)

console = Console(highlight=False)
if not console.is_terminal:  # piped (table.py --record): wide enough for the table, not 80 columns
    console.width = 160


# ---- the configurations and their ratios (pure) ---------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Config:
    """One configuration: how many symbols, and how many trading days of bars are stored."""

    symbols: int
    days: int

    @property
    def name(self) -> str:
        """``"50x20"``: symbols × trading days."""
        return f"{self.symbols}x{self.days}"

    @classmethod
    def parse(cls, name: str) -> Config:
        """The configuration named ``"SYMBOLSxDAYS"``."""
        symbols, _, days = name.partition("x")
        if not (symbols.isdigit() and days.isdigit()) or int(symbols) < 1 or int(days) < 1:
            raise ValueError(f"not a configuration: {name!r} (expected SYMBOLSxDAYS, e.g. 50x20)")
        return cls(int(symbols), int(days))


def grid(quick: bool = False) -> list[Config]:
    """The configurations, smallest first: 5 / 50 / 500 symbols × 5 / 20 days (``quick``: 5 and 50 symbols)."""
    return [Config(s, d) for s in (QUICK_SYMBOLS if quick else SYMBOLS) for d in DAYS]


def growth(tick_s: Mapping[str, float | None]) -> dict[str, Any]:
    """``history_growth`` and ``per_symbol_growth`` from tick times keyed by configuration name.

    ``history_growth``: the longest stored history's tick over the shortest's, at :data:`HISTORY_AT`
    symbols (or the most symbols run, if not that). ``per_symbol_growth``: the cost per symbol at the
    most symbols run over that at the next fewer, on the longest history. A tick that was run but did
    not complete is None: a ratio that needs it is None too, never taken from the configurations left.
    """
    configs = [Config.parse(name) for name in tick_s]
    symbols = sorted({c.symbols for c in configs})
    days = sorted({c.days for c in configs})
    out: dict[str, Any] = {
        "history_growth": None,
        "history_growth_at": None,
        "per_symbol_growth": None,
        "per_symbol_growth_between": None,
    }
    if len(days) >= 2 and symbols:
        at = HISTORY_AT if HISTORY_AT in symbols else symbols[-1]
        short, long = tick_s.get(Config(at, days[0]).name), tick_s.get(Config(at, days[-1]).name)
        out["history_growth_at"] = at
        if short is not None and long is not None:
            out["history_growth"] = long / short
    if len(symbols) >= 2 and days:
        few, many = symbols[-2], symbols[-1]
        small, big = tick_s.get(Config(few, days[-1]).name), tick_s.get(Config(many, days[-1]).name)
        out["per_symbol_growth_between"] = [few, many]
        if small is not None and big is not None:
            out["per_symbol_growth"] = (big / many) / (small / few)
    return out


def linear_cost(n_small: int, cost_small: float, n_big: int, cost_big: float) -> tuple[float, float]:
    """The fixed part and the part per symbol of a cost measured at two symbol counts (a straight line)."""
    per_symbol = (cost_big - cost_small) / (n_big - n_small)
    return cost_small - per_symbol * n_small, per_symbol


def symbols_within(fixed: float, per_symbol: float, budget: float) -> int | None:
    """How many symbols a cost ``fixed + per_symbol × n`` allows within ``budget``; None when it does not grow."""
    if per_symbol <= 0:
        return None
    return max(0, math.floor((budget - fixed) / per_symbol))


# ---- the bars (pure, numpy) -----------------------------------------------------------------------------------


def trading_days(days: int, last: dt.date = LAST_DAY) -> list[dt.date]:
    """The ``days`` weekdays ending at ``last`` (which must be one), oldest first."""
    if last.weekday() >= 5:
        raise ValueError(f"{last} is not a weekday")
    out, day = [], last
    while len(out) < days:
        if day.weekday() < 5:
            out.append(day)
        day -= dt.timedelta(days=1)
    return out[::-1]


def symbol_names(symbols: int) -> list[str]:
    """``S000``, ``S001``, …: names the bar contract's symbol rule accepts."""
    width = max(3, len(str(symbols - 1)))
    return [f"S{i:0{width}d}" for i in range(symbols)]


def generate(symbols: int, days: int, seed: int = 11, last: dt.date = LAST_DAY) -> pa.Table:
    """Every bar of ``symbols`` × ``days`` sessions of 390 minutes, in the bar schema, sorted by symbol and ts.

    Returns carry an AR(1) of :data:`AUTOCORRELATION` with U-shaped intraday volatility, a per-symbol
    scale and an overnight gap; prices are rounded to 4 decimals with high ≥ open, close ≥ low.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng([seed, symbols, days])
    sessions = trading_days(days, last)
    opens_s = np.array(
        [dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() + SESSION_OPEN_UTC_S for d in sessions],
        dtype=np.int64,
    )
    minutes = np.arange(SESSION_MINUTES)
    ts = (opens_s[:, None] + minutes[None, :] * 60).ravel()  # (days × 390,)
    u_shape = 1.0 + 1.6 * np.exp(-minutes / 25.0) + 0.8 * np.exp(-(SESSION_MINUTES - 1 - minutes) / 25.0)
    scale = rng.uniform(0.5, 2.0, (symbols, 1)) * 0.0009
    sigma = scale * np.tile(u_shape, days)[None, :]  # (symbols, days × 390)
    returns = lfilter([1.0], [1.0, -AUTOCORRELATION], rng.standard_normal(sigma.shape) * sigma, axis=1)
    returns[:, ::SESSION_MINUTES] += rng.normal(0.0, 0.004, (symbols, days))  # the overnight gap
    first = rng.uniform(20.0, 500.0, (symbols, 1))
    closes = first * np.exp(np.cumsum(returns, axis=1))
    opens = np.concatenate([first, closes[:, :-1]], axis=1)
    wick = np.abs(rng.standard_normal((2, *sigma.shape))) * sigma * 0.6
    opens, closes = np.round(opens, 4), np.round(closes, 4)
    highs = np.maximum(np.round(np.maximum(opens, closes) * np.exp(wick[0]), 4), np.maximum(opens, closes))
    lows = np.minimum(np.round(np.minimum(opens, closes) * np.exp(-wick[1]), 4), np.minimum(opens, closes))
    volume = np.floor(rng.lognormal(np.log(20_000), 0.5, sigma.shape) * np.tile(u_shape, days)).astype(np.int64)
    n = symbols * len(ts)
    all_ts = np.tile(ts, symbols)
    emitted = (all_ts + 60) * 1000  # the sync after the minute closed
    names = np.repeat(np.array(symbol_names(symbols), dtype=object), len(ts))
    return pa.table(
        {
            "symbol": pa.array(names, pa.string()),
            "ts": pa.array(all_ts, pa.timestamp("s", tz="UTC")),
            "open": opens.ravel(),
            "high": highs.ravel(),
            "low": lows.ravel(),
            "close": closes.ravel(),
            "volume": volume.ravel(),
            "emitted_at": emitted,
            "partition": pa.array(np.repeat(np.arange(symbols) % 4, len(ts)).astype(str), pa.string()),
            "sequence_number": np.arange(n, dtype=np.int64),
            "enqueued_at": pa.array(emitted, pa.timestamp("ms", tz="UTC")),
        },
        schema=BAR_SCHEMA,
    )


@dataclass(frozen=True)
class Layout:
    """What :func:`write_layout` wrote: hour folders, compacted blobs, raw batch blobs, bars, bytes."""

    hours: int
    compacted: int
    raw: int
    bars: int
    bytes: int

    @property
    def blobs(self) -> int:
        """Every Parquet file written."""
        return self.compacted + self.raw


def hour_folder(start: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of the hour starting at unix second ``start`` (the ingest path's naming)."""
    when = dt.datetime.fromtimestamp(start, dt.UTC)
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def _blob_name(rng: np.random.Generator) -> str:
    return f"{uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)))}.parquet"


def write_layout(bars: pa.Table, root: Path, open_hours: int = 1, seed: int = 0) -> Layout:
    """Write ``bars`` under ``root`` (the ``raw/`` folder) as ingest + compaction leave them.

    Every hour but the newest ``open_hours`` is closed and compacted: one ``_compacted.parquet`` of its
    true bars, whose manifest names :data:`COVERED_PER_HOUR` batch blobs as merged (and deleted since).
    The newest hours are still open: their bars lie in raw batch blobs of :data:`TAIL_BLOB_MINUTES`
    minutes each, as ingest wrote them. ``bars`` must hold one bar per (symbol, ts).
    """
    rng = np.random.default_rng(seed)
    hours = pa.array(bars.column("ts").cast(pa.int64()).to_numpy() // HOUR_S)
    keys = [("_hour", "ascending"), ("symbol", "ascending"), ("ts", "ascending")]
    bars = bars.append_column("_hour", hours).sort_by(keys)
    hour = bars.column("_hour").to_numpy()
    bars = bars.drop_columns(["_hour"])
    ts = bars.column("ts").cast(pa.int64()).to_numpy()
    edges = np.flatnonzero(np.diff(hour)) + 1
    starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [len(hour)]])
    compacted = raw = written = 0
    for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        folder = root / hour_folder(int(hour[lo]) * HOUR_S)
        folder.mkdir(parents=True, exist_ok=True)
        part = bars.slice(lo, hi - lo)
        if k < len(starts) - open_hours:
            covers = [_blob_name(rng) for _ in range(COVERED_PER_HOUR)]
            data = encode_compacted(part, covers, ())
            (folder / "_compacted.parquet").write_bytes(data)
            compacted, written = compacted + 1, written + len(data)
            continue
        batch = (ts[lo:hi] % HOUR_S) // (TAIL_BLOB_MINUTES * 60)
        for b in np.unique(batch):
            rows = np.flatnonzero(batch == b)
            data = to_parquet(part.take(rows))
            (folder / _blob_name(rng)).write_bytes(data)
            raw, written = raw + 1, written + len(data)
    return Layout(len(starts), compacted, raw, bars.num_rows, written)


# ---- the tick, in its own process ------------------------------------------------------------------------------


PHASE_MARK = "scale-phase"  # the child's log line as each timed phase starts and ends


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MB (Linux counts ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseClock:
    """Seconds spent in named functions of the job, timed by wrapping them where they are looked up."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.missing: list[str] = []
        # how far the process's peak memory (MB) rose during each phase: where the tick's peak comes from
        self.peak_rise_mb: dict[str, float] = {}
        self.say = say

    def wrap(self, phase: str, module_name: str, attr: str) -> None:
        """Time ``module_name.attr`` (``attr`` may be ``Class.method``) as ``phase``; a missing one is recorded."""
        try:
            owner: Any = importlib.import_module(module_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, name)
        except (ImportError, AttributeError):
            self.missing.append(f"{module_name}.{attr}")
            return
        depth = [0]

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:  # a nested call is inside the outer one's time already
                return original(*args, **kwargs)
            depth[0] += 1
            if self.say:
                self.say(f"{PHASE_MARK} {phase} start")
            peak, start = peak_rss_mb(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
                self.calls[phase] = self.calls.get(phase, 0) + 1
                self.peak_rise_mb[phase] = self.peak_rise_mb.get(phase, 0.0) + peak_rss_mb() - peak
                if self.say:
                    self.say(f"{PHASE_MARK} {phase} end")

        setattr(owner, name, timed)


class BlobCounter:
    """The distinct files under a folder that pyarrow's readers opened (data or footer)."""

    def __init__(self, root: Path) -> None:
        self.root = str(Path(root).resolve())
        self.files: set[str] = set()

    def _note(self, source: Any) -> None:
        items = source if isinstance(source, (list, tuple)) else [source]
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                path = os.path.abspath(os.fspath(item))
                if path.startswith(self.root + os.sep) and path.endswith(".parquet"):
                    self.files.add(path)

    def install(self) -> BlobCounter:
        """Count through ``pyarrow.dataset.dataset`` and ``pyarrow.parquet``'s readers from now on."""
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        for module, name in ((ds, "dataset"), (pq, "read_table"), (pq, "read_metadata"), (pq, "read_schema")):
            original = getattr(module, name)

            def counted(source: Any, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
                self._note(source)
                return _original(source, *args, **kwargs)

            setattr(module, name, functools.wraps(original)(counted))
        return self


# (phase, module, function): the job's own functions timed in the child; "evaluate" is the tick less
# read, windows and train, and holds score and save
PHASES = (
    ("read", "training_job.train", "read_history"),
    ("windows", "training_job.train", "prepare_bars"),
    ("train", "training_job.train", "fit_model"),
    ("score", "training_job.forecaster", "Forecaster.predict_frame"),
    ("save", "training_job.train", "save_pyfunc"),
)


def tick_child(bars: Path, out: Path, profile_out: Path | None, mode: str = "warm") -> int:
    """Run one tick of the job on ``bars`` in this process and write its measurements to ``out`` as JSON."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("mlflow", "absl", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    from training_job import train
    from training_job.config import TrainConfig

    MlflowClient().search_experiments()  # creates the empty SQLite store: set-up, not the tick
    clock = PhaseClock(logging.getLogger("scale").info)
    for phase, module, attr in PHASES:
        clock.wrap(phase, module, attr)
    blobs = BlobCounter(bars).install()
    cfg = TrainConfig(bars=bars, summary_out=out.with_name("summary.json"), mode=mode)
    profiler = None
    if profile_out is not None:
        import cProfile

        profiler = cProfile.Profile()
    before_mb = peak_rss_mb()
    start = time.perf_counter()
    summary = train.run(cfg) if profiler is None else profiler.runcall(train.run, cfg)
    tick_s = time.perf_counter() - start
    if profiler is not None:
        profiler.dump_stats(str(profile_out))
    training = summary.get("training") or {}
    out.write_text(
        json.dumps(
            {
                "tick_s": tick_s,
                "phases": clock.seconds,
                "peak_rise_mb": clock.peak_rise_mb,
                "peak_before_tick_mb": before_mb,
                "calls": clock.calls,
                "missing": clock.missing,
                "blobs_read": len(blobs.files),
                "decision": summary.get("decision"),
                "n_decision": summary.get("n_decision"),
                "mode": training.get("mode"),
                "history": training.get("history"),
                "windows": training.get("windows"),
                "epochs": training.get("epochs"),
                "warm_start": (training.get("warm_start") or {}).get("used"),
                "config": {
                    k: getattr(cfg, k) for k in ("history_days", "full_history_days", "max_train_windows", "mode")
                },
            }
        )
    )
    return 0


# ---- the parent: write, run, measure ----------------------------------------------------------------------------


@dataclass
class Tick:
    """One configuration's measurements: the fastest of its runs, or how it failed."""

    config: Config
    layout: Layout
    tick_s: float | None  # None: the tick did not complete (``failed`` says why)
    process_s: float
    peak_rss_mb: float
    child: dict[str, Any]
    failed: dict[str, Any] | None = None
    runs_s: list[float] = field(default_factory=list)  # tick_s of every run of this configuration

    @property
    def phases(self) -> dict[str, float | None]:
        """Seconds of read, windows, train, evaluate (the rest of the tick) and, within it, score and save."""
        got = self.child.get("phases", {})
        measured = [got.get(p) for p in ("read", "windows", "train")]
        rest = None if None in measured or self.tick_s is None else self.tick_s - sum(measured)
        return {
            "read": got.get("read"),
            "windows": got.get("windows"),
            "train": got.get("train"),
            "evaluate": rest,
            "score": got.get("score"),
            "save": got.get("save"),
        }


@dataclass
class Watch:
    """A child's resident memory, watched: killed past ``limit_mb`` (the box is shared) or after ``timeout_s``."""

    limit_mb: float
    timeout_s: float
    max_rss_mb: float = 0.0
    killed: str | None = None

    def run(self, proc: subprocess.Popen, done: threading.Event) -> None:
        """Poll until ``done``; kill ``proc`` at the first breach."""
        import psutil

        try:
            child = psutil.Process(proc.pid)
        except psutil.Error:
            return
        deadline = time.monotonic() + self.timeout_s
        while not done.wait(0.1):
            try:
                rss = child.memory_info().rss / 2**20
            except psutil.Error:
                return
            self.max_rss_mb = max(self.max_rss_mb, rss)
            if rss > self.limit_mb or time.monotonic() > deadline:
                self.killed = "memory" if rss > self.limit_mb else "timeout"
                if not done.is_set():
                    proc.kill()
                return


def phase_at_end(log_lines: Sequence[str]) -> str | None:
    """The timed phase a child's log shows as started and not ended: where a killed tick was."""
    open_phases: list[str] = []
    for line in log_lines:
        if PHASE_MARK not in line:
            continue
        words = line.split(PHASE_MARK, 1)[1].split()
        if len(words) >= 2 and words[1] == "start":
            open_phases.append(words[0])
        elif len(words) >= 2 and words[1] == "end" and words[0] in open_phases:
            open_phases.remove(words[0])
    return open_phases[-1] if open_phases else None


def default_memory_limit_mb() -> float:
    """60 % of the memory available now, at most 16 GiB: a tick past it is killed rather than starve the box."""
    import psutil

    return min(16 * 1024, 0.6 * psutil.virtual_memory().available / 2**20)


def _write_bars(config: Config, folder: Path) -> tuple[Layout, Path]:
    """Generate ``config``'s bars and write them under ``folder`` as compaction leaves raw/; returns the layout."""
    if folder.exists():
        shutil.rmtree(folder)
    bars_root = folder / "bars" / "raw"
    with console.status(f"{config.name}: generating and writing bars"):
        started = time.perf_counter()
        layout = write_layout(generate(config.symbols, config.days), bars_root)
    console.log(
        f"{config.name}: wrote {layout.bars:,} bars in {layout.hours} hour folders ({layout.compacted} compacted "
        f"+ {layout.raw} raw batch blobs, {layout.bytes / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s"
    )
    return layout, bars_root


def _failed(
    config: Config,
    layout: Layout,
    log_path: Path,
    watch: Watch,
    returncode: int,
    process_s: float,
    peak_mb: float,
    limit_mb: float,
) -> Tick:
    """The record of a tick that did not complete: why, in which phase, at what memory."""
    lines = log_path.read_text(errors="replace").splitlines()
    reason = {"memory": "out of memory", "timeout": "timeout"}.get(watch.killed or "", f"exit {returncode}")
    failed = {
        "reason": reason,
        "phase": phase_at_end(lines),
        "rss_mb": round(peak_mb),
        "limit_mb": round(limit_mb),
        "after_s": round(process_s, 1),
    }
    console.log(
        f"[red]{config.name}: the tick did not complete: {reason} after {process_s:.0f} s, "
        f"peak {peak_mb:,.0f} MB (limit {limit_mb:,.0f} MB), in phase {failed['phase']}[/red]"
    )
    if watch.killed is None:  # a failure of its own: show why
        console.print("\n".join(lines[-15:]), markup=False)
    return Tick(config, layout, None, process_s, peak_mb, {}, failed)


def run_tick(
    config: Config, work: Path, limit_mb: float, timeout_s: float, profile: bool = False, mode: str = "warm"
) -> Tick:
    """Write ``config``'s bars under ``work`` and measure one tick of the job on them in a fresh process."""
    folder = work / config.name
    layout, bars_root = _write_bars(config, folder)
    out = folder / "tick.json"
    profile_out = folder / "tick.prof" if profile else None
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    command = [sys.executable, str(Path(__file__).resolve()), "--tick", str(bars_root), "--out", str(out)]
    command += ["--mode", mode]
    if profile_out is not None:
        command += ["--profile-out", str(profile_out)]
    log_path = folder / "tick.log"
    watch, done = Watch(limit_mb, timeout_s), threading.Event()
    with console.status(f"{config.name}: one training tick (fresh process)"), log_path.open("wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=watch.run, args=(proc, done), daemon=True)
        watcher.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak memory alone
        finally:
            done.set()
            watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        process_s = time.perf_counter() - start
    peak_mb = max(usage.ru_maxrss / 1024, watch.max_rss_mb)
    if proc.returncode != 0 or not out.exists():
        return _failed(config, layout, log_path, watch, proc.returncode, process_s, peak_mb, limit_mb)
    child = json.loads(out.read_text())
    if profile_out is not None:
        child["profile"] = str(profile_out)
    tick = Tick(config, layout, child["tick_s"], process_s, peak_mb, child, runs_s=[child["tick_s"]])
    console.log(
        f"{config.name}: tick {child['tick_s']:.1f} s ({process_s:.1f} s with the process start), "
        f"peak {peak_mb:,.0f} MB, {child['blobs_read']} of {layout.blobs} blobs read, "
        f"{(child.get('history') or {}).get('bars', 0):,} bars in the history, "
        f"epochs {(child.get('epochs') or {}).get('run')}"
    )
    return tick


def fastest(runs: Sequence[Tick]) -> Tick:
    """A configuration's figures over its runs: the fastest completed run, with every run's time and the top peak."""
    done = [t for t in runs if t.tick_s is not None]
    if not done:
        return runs[-1]
    best = min(done, key=lambda t: t.tick_s)
    best.runs_s = [t.tick_s for t in done]
    best.peak_rss_mb = max(t.peak_rss_mb for t in done)
    return best


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def note(result: Mapping[str, Any]) -> str:
    """One line for the README's table: what per_symbol_growth compared, or why it could not."""
    between = result.get("per_symbol_growth_between") or []
    if result.get("per_symbol_growth") is not None:
        return f"`per_symbol_growth` {result['per_symbol_growth']:.2f} ({' vs '.join(map(str, between[::-1]))} symbols)"
    failed = result.get("failed") or {}
    if not failed:
        return "`per_symbol_growth` not measured"
    worst = max(failed.values(), key=lambda f: f["rss_mb"])
    names = ", ".join(name.replace("x", " × ") for name in failed)
    return (
        f"`per_symbol_growth` not measured: {names} did not complete ({worst['reason']}: killed at "
        f"{worst['rss_mb'] / 1024:.1f} GB in `{worst['phase']}`)"
    )


def summarise(ticks: Sequence[Tick], wall_s: float, quick: bool, memory_total_mb: float) -> dict[str, Any]:
    """The last-line JSON: tick times, the two ratios, blobs, memory, phases, and the limits they imply."""
    tick_s = {t.config.name: t.tick_s for t in ticks}
    ratios = growth(tick_s)
    done = [t for t in ticks if t.tick_s is not None]
    first = done[0].child.get("config", {}) if done else {}
    result: dict[str, Any] = {
        "configs": [t.config.name for t in ticks],
        "tick_s": {k: _r(v) for k, v in tick_s.items()},
        "history_growth": _r(ratios["history_growth"], 3),
        "history_growth_at": ratios["history_growth_at"],
        "per_symbol_growth": _r(ratios["per_symbol_growth"], 3),
        "per_symbol_growth_between": ratios["per_symbol_growth_between"],
        "failed": {t.config.name: t.failed for t in ticks if t.failed},
        "runs_s": {t.config.name: [round(s, 2) for s in t.runs_s] for t in done},
        "per_symbol_s": {t.config.name: round(t.tick_s / t.config.symbols, 4) for t in done},
        "process_s": {t.config.name: round(t.process_s, 2) for t in done},
        "blobs_read": {t.config.name: t.child["blobs_read"] for t in done},
        "blobs_stored": {t.config.name: t.layout.blobs for t in ticks},
        "peak_rss_mb": {t.config.name: round(t.peak_rss_mb) for t in ticks},
        "phases_s": {t.config.name: {k: _r(v) for k, v in t.phases.items()} for t in done},
        "peak_rise_mb": {t.config.name: {k: round(v) for k, v in t.child["peak_rise_mb"].items()} for t in done},
        "bars_read": {t.config.name: (t.child.get("history") or {}).get("bars") for t in done},
        "windows": {t.config.name: t.child.get("windows") for t in done},
        "n_decision": {t.config.name: t.child.get("n_decision") for t in done},
        "epochs_run": {t.config.name: (t.child.get("epochs") or {}).get("run") for t in done},
        "phases_missing": sorted({m for t in done for m in t.child.get("missing", [])}),
        "mode": first.get("mode"),
        "history_days": first.get("full_history_days" if first.get("mode") == "full" else "history_days"),
        "max_train_windows": first.get("max_train_windows"),
        "memory_total_mb": round(memory_total_mb),
        "quick": quick,
        "wall_s": round(wall_s, 1),
    }
    result["note"] = note(result)
    days = max((t.config.days for t in done), default=None)
    counts = sorted({t.config.symbols for t in done if t.config.days == days})
    if len(counts) >= 2:
        by_name = {t.config.name: t for t in done}
        small, big = by_name[Config(counts[-2], days).name], by_name[Config(counts[-1], days).name]
        fixed_s, per_s = linear_cost(small.config.symbols, small.tick_s, big.config.symbols, big.tick_s)
        overhead = max(small.process_s - small.tick_s, big.process_s - big.tick_s)
        fixed_mb, per_mb = linear_cost(small.config.symbols, small.peak_rss_mb, big.config.symbols, big.peak_rss_mb)
        result["cost_model"] = {
            "from": [small.config.name, big.config.name],
            "fixed_s": round(fixed_s, 2),
            "per_symbol_s": round(per_s, 4),
            "process_overhead_s": round(overhead, 2),
            "fixed_mb": round(fixed_mb),
            "per_symbol_mb": round(per_mb, 2),
            # a tick (its process start included) within the timer's period, at this machine's speed
            "symbols_per_15min_tick": symbols_within(fixed_s + overhead, per_s, TICK_S),
            # a tick's peak within 90 % of a machine's memory (the rest for the OS and the job's agent)
            "symbols_within_memory": {
                "this_machine": symbols_within(fixed_mb, per_mb, 0.9 * memory_total_mb),
                **{f"{gib}_gib": symbols_within(fixed_mb, per_mb, 0.9 * gib * 1024) for gib in NODE_MEMORY_GIB},
            },
        }
    return result


def print_table(ticks: Sequence[Tick]) -> None:
    """Each configuration's figures, one row each."""
    table = Table(title="one training tick per configuration (symbols x trading days stored)")
    for column in (
        "config",
        "bars read",
        "blobs read/stored",
        "windows train/decision",
        "epochs",
        "read s",
        "windows s",
        "train s",
        "evaluate s (score)",
        "tick s",
        "peak MB",
    ):
        table.add_column(column, justify="right")

    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for t in ticks:
        if t.tick_s is None:
            f = t.failed or {}
            table.add_row(
                t.config.name, "-", "-", "-", "-", "-", "-", "-", f"{f.get('reason')} in {f.get('phase')}", "-",
                f"≥ {t.peak_rss_mb:,.0f}",
            )  # fmt: skip
            continue
        p, w = t.phases, t.child.get("windows") or {}
        table.add_row(
            t.config.name,
            f"{(t.child.get('history') or {}).get('bars', 0):,}",
            f"{t.child['blobs_read']}/{t.layout.blobs}",
            f"{w.get('train', '-')}/{t.child.get('n_decision', '-')}",
            str((t.child.get("epochs") or {}).get("run", "-")),
            s(p["read"]),
            s(p["windows"]),
            s(p["train"]),
            f"{s(p['evaluate'])} ({s(p['score'])})",
            f"{t.tick_s:.1f}",
            f"{t.peak_rss_mb:,.0f}",
        )
    console.print(table)


def print_profile(path: Path, lines: int = 30) -> None:
    """The functions of a profiled tick with the most cumulative time."""
    import io
    import pstats

    buffer = io.StringIO()
    pstats.Stats(str(path), stream=buffer).sort_stats("cumulative").print_stats(lines)
    console.print(buffer.getvalue(), markup=False)


def memory_total_mb() -> float:
    """The memory of this machine, MB."""
    import psutil

    return psutil.virtual_memory().total / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    """Measure one tick per configuration and print the figures, the JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 and 50 symbols only")
    parser.add_argument("--configs", help="comma-separated SYMBOLSxDAYS to run instead of the grid, e.g. 50x5,50x20")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each configuration; the fastest is kept")
    parser.add_argument("--profile", metavar="NAME", help="run only this configuration, under cProfile, and print it")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds one tick may take (default 1200)")
    parser.add_argument("--memory-limit-mb", type=float, help="kill a tick past this (default: 60%% of what is free)")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="warm",
        help="the tick's mode: warm (the last history_days) or full (the daily retrain: full_history_days)",
    )
    parser.add_argument("--keep", type=Path, help="write the bars and MLflow stores here and keep them")
    parser.add_argument("--tick", type=Path, help=argparse.SUPPRESS)  # the child: run one tick on these bars
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tick is not None:
        return tick_child(args.tick, args.out, args.profile_out, args.mode)

    if args.profile:
        configs, repeat = [Config.parse(args.profile)], 1
    elif args.configs:
        configs, repeat = [Config.parse(name.strip()) for name in args.configs.split(",") if name.strip()], args.repeat
    else:
        configs, repeat = grid(args.quick), args.repeat
    limit_mb = args.memory_limit_mb or default_memory_limit_mb()
    console.log(
        f"{len(configs)} configurations × {repeat} runs (a failed one is not run again); "
        f"a tick is killed past {limit_mb:,.0f} MB or {args.timeout:.0f} s"
    )
    start = time.perf_counter()
    runs: dict[Config, list[Tick]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="stockcast-scale-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for attempt in range(repeat):  # runs interleaved, so a burst of load elsewhere spoils one run, not all
            for config in configs:
                if any(t.failed for t in runs[config]):
                    continue
                console.rule(f"{config.name} ({config.symbols} symbols × {config.days} days), run {attempt + 1}")
                tick = run_tick(config, work, limit_mb, args.timeout, profile=bool(args.profile), mode=args.mode)
                runs[config].append(tick)
                if args.profile and tick.tick_s is not None:
                    print_profile(Path(tick.child["profile"]))
                if args.keep is None:
                    shutil.rmtree(work / config.name, ignore_errors=True)
    wall_s = time.perf_counter() - start
    ticks = [fastest(runs[c]) for c in configs]
    print_table(ticks)
    result = summarise(ticks, wall_s, args.quick, memory_total_mb())
    if result["history_growth"] is not None:
        console.print(
            f"history_growth {result['history_growth']:.3f} (target ≤ 1.2) at {result['history_growth_at']} symbols"
        )
    console.print(result["note"] + " (target ≤ 1.0)")
    console.print(f"benchmark wall time {wall_s:.0f} s")
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
