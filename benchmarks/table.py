"""The README's benchmark table, generated from the stored result of each benchmark.

Every benchmark in ``benchmarks/`` prints its figures and, as its last line, one JSON object. A run is
kept as ``benchmarks/results/<name>.json``: that object (``result``), the command that printed it,
when, and the machine it ran on (cores as ``nproc`` counts them, memory from ``/proc/meminfo``, the
CPU model from ``/proc/cpuinfo``). This script writes the README's section between the
``bench-table`` markers from those files: one row per benchmark, its key figures, its targets beside
them (met or not) and the machine. The targets live here, in ``BENCHMARKS``, and nowhere else.

    python benchmarks/table.py                         # rewrite README.md's table (make bench-table)
    python benchmarks/table.py --check                 # exit 1 when README.md's table is not the generated one
    .venv/bin/python benchmarks/table.py --record predict                  # run predict's command, keep its JSON
    .venv/bin/python benchmarks/table.py --record predict -- CMD [ARG ...] # the same with another command

``--record`` runs the command (its output passes through), takes the last line as the JSON object,
writes the results file and rewrites the table; a command that fails, or whose last line is not a
JSON object, writes nothing. A benchmark without a results file is listed as "not run".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import string
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"

# Modules the benchmarks import or start; they print no result of their own.
HELPERS = frozenset({"common.py", "real_bars.py", "null_server.py", "memo_score.py", "table.py"})

MISSING = object()


@dataclass(frozen=True)
class Target:
    """One target of a benchmark: its wording in the table and the check on the result (None: no figure)."""

    label: str
    check: Callable[[Mapping[str, Any]], bool | None]


def _at(result: Mapping[str, Any], key: str) -> Any:
    """``result[a][b]`` for the key ``"a.b"``; MISSING where any part is absent."""
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def _compare(key: str, op: str, bound: float | str) -> Callable[[Mapping[str, Any]], bool | None]:
    """A check of ``result[key] op bound``; a string bound names another key of the same result."""
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
    }

    def check(result: Mapping[str, Any]) -> bool | None:
        value = _at(result, key)
        other = _at(result, bound) if isinstance(bound, str) else bound
        if value is MISSING or other is MISSING or value is None or other is None:
            return None
        return ops[op](value, other)

    return check


def at_most(key: str, bound: float | str, label: str) -> Target:
    """``key`` ≤ ``bound`` (a number, or another key of the result)."""
    return Target(label, _compare(key, "<=", bound))


def at_least(key: str, bound: float | str, label: str) -> Target:
    """``key`` ≥ ``bound`` (a number, or another key of the result)."""
    return Target(label, _compare(key, ">=", bound))


def below(key: str, bound: float | str, label: str) -> Target:
    """``key`` < ``bound`` (a number, or another key of the result)."""
    return Target(label, _compare(key, "<", bound))


def equals(key: str, value: Any, label: str) -> Target:
    """``key`` == ``value``."""
    return Target(label, _compare(key, "==", value))


def completed_at_most(key: str, bound: float, label: str) -> Target:
    """``key`` ≤ ``bound``; a null ``key`` is not met where the result lists runs that did not complete.

    A figure that could not be measured because a run it needs failed (out of memory, say) is a
    target missed, not a figure missing.
    """
    plain = _compare(key, "<=", bound)

    def check(result: Mapping[str, Any]) -> bool | None:
        if _at(result, key) is None and _at(result, "failed") not in (MISSING, None, {}):
            return False
        return plain(result)

    return Target(label, check)


def terciles_within(points: float, label: str) -> Target:
    """Every volatility tercile's coverage within ``points`` of the result's ``level``."""

    def check(result: Mapping[str, Any]) -> bool | None:
        level = _at(result, "level")
        coverage = [_at(result, f"coverage.{t}") for t in ("low", "mid", "high")]
        if level is MISSING or MISSING in coverage:
            return None
        return all(abs(c - level) <= points + 1e-12 for c in coverage)

    return Target(label, check)


@dataclass(frozen=True)
class Benchmark:
    """One row of the table: a run of a script, the figures it shows and the targets beside them."""

    name: str  # benchmarks/results/<name>.json
    script: str  # the script in benchmarks/ whose last line the result is
    command: str  # what --record runs ({python}: this interpreter), through bash
    figures: str  # a format string over the result; {a[b]} reaches into nested objects
    targets: tuple[Target, ...] = field(default_factory=tuple)
    label: str = ""  # how the table names it, where the command alone would not say

    @property
    def title(self) -> str:
        """The benchmark as the table names it: the script and its arguments."""
        shown = self.command.split("&&")[-1].replace("{python} benchmarks/", "").strip()
        return self.label or f"`{shown}`"


PY = "{python} benchmarks/"
REAL_BARS = ".local/bench/real-bars"
INTERVALS = (
    "{level:pct} intervals, coverage low/mid/high {coverage[low]:.3f}/{coverage[mid]:.3f}/{coverage[high]:.3f} "
    "(reference {reference_by_own_terciles[coverage][low]:.3f}/{reference_by_own_terciles[coverage][mid]:.3f}/"
    "{reference_by_own_terciles[coverage][high]:.3f}); "
    "Winkler {winkler[low]:.5f}/{winkler[mid]:.5f}/{winkler[high]:.5f}"
)

# The targets: where the project set a figure, that figure; otherwise "no worse than the reference"
# (the approach Stockcast replaces, measured in the same run on the same data, as docs/design.md's
# "Benchmarks" defines it), or the invariant the benchmark exists to show (nothing missing, lag 0).
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "ingest",
        "ingest.py",
        PY + "ingest.py",
        "decode {bars_per_s:si} bars/s on one core, {ratio}× the reference; "
        "end to end {e2e_bars_per_s:si} bars/s ({e2e_ratio} of decode-only)",
        (
            at_least("e2e_ratio", 0.25, "end to end ≥ 0.25 of decode-only"),
            at_least("ratio", 1, "faster than the reference"),
        ),
    ),
    Benchmark(
        "train",
        "train.py",
        PY + "train.py",
        "log-RMSE ratio to persistence {log_rmse_ratio:.4f} (p {p_vs_persistence:p}; the planted AR(1)'s "
        "oracle {oracle_log_rmse_ratio:.4f}), reference {reference_log_rmse_ratio:.4f}; "
        "{train_s:.1f} s, {speedup}× faster to the same validation loss",
        (
            below("p_vs_persistence", 0.05, "beats persistence, p < 0.05"),
            at_most("log_rmse_ratio", "reference_log_rmse_ratio", "ratio ≤ the reference's"),
        ),
    ),
    Benchmark(
        "train-real",
        "train.py",
        PY + "train.py --data real",
        "log-RMSE ratio to persistence {log_rmse_ratio:.4f} (p {p_vs_persistence:p}), "
        "reference {reference_log_rmse_ratio:.4f} (p {reference_p_vs_persistence:p}); {train_s:.1f} s",
        (
            at_most("log_rmse_ratio", 1.0, "never worse than persistence (ratio ≤ 1)"),
            at_most("log_rmse_ratio", "reference_log_rmse_ratio", "ratio ≤ the reference's"),
        ),
    ),
    Benchmark(
        "intervals",
        "intervals.py",
        PY + "intervals.py",
        INTERVALS,
        (terciles_within(0.03, "every tercile within ±0.03 of the level"),),
    ),
    Benchmark(
        "intervals-real",
        "intervals.py",
        PY + f"real_bars.py {REAL_BARS} && " + PY + f"intervals.py --bars {REAL_BARS}",
        INTERVALS,
        (terciles_within(0.03, "every tercile within ±0.03 of the level"),),
        label="`intervals.py --bars` on real bars",
    ),
    Benchmark(
        "score",
        "score.py",
        PY + "score.py",
        "one request in process p50 {p50_ms:.3g} ms, p99 {p99_ms:.3g} ms ({single_window}); over HTTP p50 "
        "{http_p50_ms:.3g} ms; Keras `model.predict` {reference_p50_ms:.3g} ms ({speedup:.3g}×)",
        (at_least("speedup", 1, "faster than the reference (`model.predict`)"),),
    ),
    Benchmark(
        "predict",
        "predict.py",
        PY + "predict.py",
        "GET p50 {p50_ms:.3g} ms, p99 {p99_ms:.3g} ms ({cache_hit_ratio:pct} cached); POST p50 {post_p50_ms:.3g} ms, "
        "p99 {post_p99_ms:.3g} ms, answered from memory p50 {post_memo_p50_ms:.3g} ms; uncached GET p50 "
        "{get_uncached_p50_ms:.3g} ms; the load generator's floor {floor_post_p50_ms:.3g} ms; CPU per POST "
        "{post_cpu_ms[total]:.2g} ms (host {post_cpu_ms[host]:.2g}, endpoint {post_cpu_ms[endpoint]:.2g}, load "
        "{post_cpu_ms[load]:.2g})",
        (
            at_most("post_p50_ms", 8, "POST p50 ≤ 8 ms"),
            at_most("post_p99_ms", 25, "POST p99 ≤ 25 ms"),
            at_most("get_uncached_p50_ms", 10, "uncached GET p50 ≤ 10 ms"),
            equals("errors", 0, "no errors"),
        ),
    ),
    Benchmark(
        "sequential",
        "sequential.py",
        PY + "sequential.py",
        "no-skill champion crowned in {false_champion_run_rate:pct} of runs (reference "
        "{reference_false_champion_run_rate:pct}); planted signal promoted in {planted_promoted_run_rate:pct}; "
        "a signal from the middle tick promoted in {late_promoted_run_rate:pct}, median "
        "{late_ticks_to_promotion_p50:g} ticks after it starts (reference {reference_late_ticks_to_promotion_p50:g})",
        (
            at_most("false_champion_run_rate", "alpha", "false champions ≤ α"),
            at_least("planted_promoted_run_rate", "reference_planted_promoted_run_rate", "power ≥ the reference's"),
        ),
    ),
    Benchmark(
        "kafka",
        "kafka.py",
        PY + "kafka.py",
        "{messages_per_s:,.0f} messages/s = {bars_per_s:si} bars/s; lag at {rate_messages_per_s:g} messages/s "
        "p50 {lag_p50_ms:ms}, p99 {lag_p99_ms:ms} (filling batches of 32 for up to 5 s: "
        "{lag_p50_ms_filling_batches:ms}, {lag_p99_ms_filling_batches:ms})",
        (equals("final_lag", 0, "final lag 0"),),
    ),
    Benchmark(
        "stream",
        "stream.py",
        PY + "stream.py",
        "bar → forecast p50 {bar_to_forecast_p50_ms:ms}, p99 {bar_to_forecast_p99_ms:ms}, {symbols} symbols; "
        "missing {missing}, duplicates {duplicates}",
        (equals("missing", 0, "none missing"), equals("duplicates", 0, "no duplicates")),
    ),
    Benchmark(
        "scale",
        "scale.py",
        PY + "scale.py",
        "`history_growth` {history_growth:.2f} (50 symbols, 5 → 20 trading days stored); {note}; "
        "50 symbols × 20 days: tick {tick_s[50x20]:.0f} s, peak {peak_rss_mb[50x20]:,} MB",
        (
            at_most("history_growth", 1.2, "`history_growth` ≤ 1.2"),
            completed_at_most("per_symbol_growth", 1.0, "`per_symbol_growth` ≤ 1.0"),
        ),
    ),
    Benchmark(
        "scale-full",
        "scale.py",
        PY + "scale.py --mode full --configs 50x20,500x20 --repeat 1",
        "the daily full retrain ({history_days} trading days, from scratch): 500 symbols tick "
        "{tick_s[500x20]:.0f} s, peak {peak_rss_mb[500x20]:,} MB; {cost_model[per_symbol_s]:.2f} s and "
        "{cost_model[per_symbol_mb]:.0f} MB a symbol",
        (at_least("cost_model.symbols_per_15min_tick", 500, "500 symbols within the 15-minute period"),),
    ),
)


# ---- rendering ----------------------------------------------------------------------------------------------


class _Figures(string.Formatter):
    """str.format over a result: a missing key shows as n/a; the specs si, pct, p and ms are ours."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, TypeError):
            return MISSING, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is MISSING or value is None:
            return "n/a"
        if format_spec == "si":
            for scale, suffix in ((1e6, " M"), (1e3, " k")):
                if abs(value) >= scale:
                    return f"{value / scale:.3g}{suffix}"
            return f"{value:g}"
        if format_spec == "pct":
            return f"{value * 100:.1f} %".replace(".0 %", " %")
        if format_spec == "p":
            return re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{value:.2g}").replace("e+", "e")
        if format_spec == "ms":
            return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"
        return format(value, format_spec)


def machine_label(machine: Mapping[str, Any] | None) -> str:
    """``2 cores, 23.5 GiB, AMD EPYC``; a dash when unknown."""
    if not machine:
        return "–"
    parts = [f"{machine['cores']} cores" if "cores" in machine else None]
    parts.append(f"{machine['memory_gib']:g} GiB" if "memory_gib" in machine else None)
    parts.append(machine.get("cpu"))
    return ", ".join(p for p in parts if p) or "–"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def row(bench: Benchmark, stored: Mapping[str, Any] | None) -> str:
    """The table row of one benchmark from its results file's content (None: not run)."""
    if stored is None:
        figures = "not run"
        targets = "; ".join(t.label for t in bench.targets)
        machine = "–"
    else:
        result = stored.get("result", {})
        figures = _Figures().vformat(bench.figures, (), result)
        verdicts = {True: "met", False: "**not met**", None: "no figure"}
        targets = "; ".join(f"{t.label}: {verdicts[t.check(result)]}" for t in bench.targets)
        machine = machine_label(stored.get("machine"))
    return f"| {bench.title} | {_cell(figures)} | {_cell(targets) or '–'} | {_cell(machine)} |"


def load(name: str, results: Path = RESULTS) -> dict[str, Any] | None:
    """The content of ``results/<name>.json``, or None where the benchmark was not recorded."""
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(results: Path = RESULTS) -> str:
    """The whole generated table, header included, one line per benchmark."""
    lines = ["| benchmark | key figures | target | machine |", "|---|---|---|---|"]
    lines += [row(bench, load(bench.name, results)) for bench in BENCHMARKS]
    return "\n".join(lines)


def section(text: str) -> str:
    """What ``text`` holds between the markers (without them)."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise SystemExit(f"README must hold {START} and then {END}, once each")
    return text.split(START, 1)[1].split(END, 1)[0]


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with the section between the markers replaced by the generated table."""
    section(text)  # the markers are there, once each
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{table(results)}\n{END}{rest.split(END, 1)[1]}"


# ---- recording ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine: the cores this process may use (as nproc counts them), total memory and the CPU model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"cores": cores}
    meminfo, cpuinfo = Path("/proc/meminfo"), Path("/proc/cpuinfo")
    total = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.M) if meminfo.exists() else None
    if total:
        info["memory_gib"] = round(int(total.group(1)) / 2**20, 1)
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    info["cpu"] = model.group(1).strip() if model else platform.processor() or platform.machine()
    return info


def last_json(lines: Sequence[str]) -> dict[str, Any]:
    """The JSON object on the last non-empty line."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError("the command printed nothing")
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the last line is not JSON: {lines[-1][:200]!r}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"the last line is JSON but not an object: {lines[-1][:200]!r}")
    return value


def run(command: Sequence[str] | str) -> list[str]:
    """Run the command (a string through bash, or an argument list), echo its output, return its lines."""
    shell = isinstance(command, str)
    proc = subprocess.Popen(
        ["bash", "-c", command] if shell else list(command),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    if proc.wait() != 0:
        raise RuntimeError(f"the command exited {proc.returncode}: nothing recorded")
    return lines


def record(name: str, command: Sequence[str] | None, results: Path = RESULTS) -> Path:
    """Run a benchmark, keep its last-line JSON with the command and the machine as results/<name>.json."""
    bench = next((b for b in BENCHMARKS if b.name == name), None)
    if bench is None:
        raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(b.name for b in BENCHMARKS)}")
    if command:
        shown, to_run = shlex.join(command), command
    else:
        to_run = bench.command.format(python=shlex.quote(sys.executable))
        shown = bench.command.format(python=".venv/bin/python")
    result = last_json(run(to_run))
    doc = {
        "benchmark": name,
        "command": shown,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "result": result,
    }
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or check) the README's table; with --record, run a benchmark and keep its result first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", metavar="NAME", help="run NAME's command (or the one after --) and keep its JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is not the generated one")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if command is not None and not args.record:
        parser.error("a command after -- needs --record NAME")
    if command == []:
        parser.error("nothing after --")
    if args.record:
        try:
            path = record(args.record, command, args.results)
        except (RuntimeError, ValueError) as exc:
            print(f"--record {args.record}: {exc}", file=sys.stderr)
            return 1
        print(f"recorded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    text = args.readme.read_text()
    new = rewrite(text, args.results)
    if args.check:
        if new != text:
            print(f"{args.readme} has a stale benchmark table: run `make bench-table`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"rewrote the benchmark table of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
