"""End-to-end predict latency: 2,000 requests, 8 at a time, over loopback through devhost → azmlinfsrv.

Set-up (not timed): Azurite in a temporary home, one day of bars for five symbols replayed through
ingest, a small model trained and served by azmlinfsrv, and ``devhost up`` in its own process.
Requests are ``GET /api/predict/{symbol}``; each answer's ``server-timing`` header gives the
function's time and the endpoint's, so the function's own overhead is their difference. A GET
scores a symbol's latest bars once per read of ``latest/`` (``PREDICT_CACHE_SECONDS``), so the
same number of ``POST /api/predict`` requests, which always call the endpoint, is measured too
(``post_*``, also reported as ``uncached_*``), and the GETs again against a second ``devhost up``
with ``PREDICT_CACHE_SECONDS=0`` (``get_uncached_*``: every GET reads ``latest/`` by ETag and
scores unless the blob is unchanged since its last forecast; ``get_uncached_scored_ratio`` is the
share that called the endpoint). ``cache_hit_ratio`` is the share of cached-phase GETs answered
without an endpoint call. The POSTs are then sent once more through a third ``devhost up`` to an
``azmlinfsrv`` running ``benchmarks/memo_score.py``, which answers a request it has scored before
from memory (``post_memo_*``): the same path with no model work left, the floor that no change to
the model or its features can go below. ``post_cpu_ms`` is the CPU each process spent per POST
(devhost with the function, the endpoint, this load generator; psutil): with ``CONCURRENCY``
requests in flight on N cores no p50 can go below ``CONCURRENCY`` × its total ÷ N. Prints the
figures, then one JSON object as the last line.

The load comes from 8 threads with one keep-alive ``http.client`` connection each. One shared
``httpx.Client`` (the first version of this script) spends 1.3–1.8 ms of CPU per request in its
pool's locks. Against a server that answers fixed bytes and does no work, its own p50 was 8–12 ms,
at or above the targets being measured. ``http.client`` leaves the two cores to the path under test;
its own floor, the same load against ``benchmarks/null_server.py``, is reported as ``floor_*``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

REQUESTS, CONCURRENCY = 2000, 8
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG")


def _timing(header: str) -> dict[str, float]:
    parts = (p.strip().split(";dur=") for p in header.split(","))
    return {name: float(value) for name, value in parts}


class _Connections:
    """One keep-alive ``http.client`` connection per load thread (the load generator: see the docstring)."""

    def __init__(self, port: int) -> None:
        self.port, self.local = port, threading.local()

    def timed(self, method: str, path: str, body: bytes | None = None) -> tuple[float, int, float | None, float | None]:
        """(seconds, status, the function's own ms, the endpoint's ms) of one request, its whole answer read."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        header = response.getheader("server-timing")
        timing = _timing(header) if header else None
        overhead = timing["total"] - timing["endpoint"] if timing else None
        return elapsed, response.status, overhead, timing["endpoint"] if timing else None


def _figures(results: list[tuple[float, int, float | None, float | None]]) -> tuple[float, float, float, int]:
    """p50 and p99 latency (ms), p50 function overhead (ms) and the error count of one phase."""
    latency = np.array([r[0] for r in results]) * 1000
    overhead = np.array([r[2] for r in results if r[2] is not None])
    o50 = float(np.percentile(overhead, 50)) if len(overhead) else float("nan")
    errors = sum(1 for r in results if r[1] != 200)
    return float(np.percentile(latency, 50)), float(np.percentile(latency, 99)), o50, errors


class _CpuMeter:
    """The CPU time a process (and its descendants, with ``tree``) spends from now; a process that ends is lost."""

    def __init__(self, pid: int, tree: bool = True) -> None:
        import psutil

        self.root, self.tree = psutil.Process(pid), tree
        self.start = self._total()

    def _total(self) -> float:
        import psutil

        total = 0.0
        for proc in [self.root, *(self.root.children(recursive=True) if self.tree else ())]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def spent(self) -> float:
        """CPU seconds spent since the meter was made."""
        return self._total() - self.start


def _phase(load: _Connections, request: Callable[[int], tuple]) -> list[tuple[float, int, float | None, float | None]]:
    """``REQUESTS`` requests, ``CONCURRENCY`` at a time: ``request(i)`` gives the i-th (method, path, body)."""
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda i: load.timed(*request(i)), range(REQUESTS)))


def _warm(load: _Connections) -> None:
    """A few GETs per symbol before a timed phase: connections open, first forecasts made."""
    for symbol in SYMBOLS * 10:
        load.timed("GET", f"/api/predict/{symbol}")


def _floor(body: bytes) -> tuple[float, float]:
    """p50 (ms) of the same load, GET and POST, against benchmarks/null_server.py: what no server goes below here."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "null_server.py")], stdout=subprocess.PIPE)
    try:
        load = _Connections(int(proc.stdout.readline()))
        _warm(load)
        figures = [
            float(np.percentile([r[0] for r in _phase(load, lambda _, r=request: r)], 50)) * 1000
            for request in (("GET", "/api/predict/AAPL", None), ("POST", "/api/predict", body))
        ]
        return figures[0], figures[1]
    finally:
        proc.kill()
        proc.wait()


def _post_bodies(folder: Path, bars: int = 90) -> list[bytes]:
    """One POST body per symbol: its newest ``bars`` bars, as a client would send them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(folder)
    out = []
    for symbol in SYMBOLS:
        rows = table.filter(pc.equal(table.column("symbol"), symbol)).sort_by("ts")
        rows = rows.slice(rows.num_rows - bars)
        ts = pc.cast(pc.cast(rows.column("ts"), pa.timestamp("s", "UTC")), "int64").to_pylist()
        cols = {k: rows.column(k).to_pylist() for k in ("open", "high", "low", "close", "volume")}
        records = [{"ts": t, **{k: cols[k][i] for k in cols}} for i, t in enumerate(ts)]
        out.append(json.dumps({"symbol": symbol, "bars": records}).encode())
    return out


_Answer = tuple[float, int, float | None, float | None]  # as _Connections.timed gives it
_PhaseFigures = tuple[float, float, float, int]  # as _figures gives them


@dataclass(frozen=True)
class _Summary:
    """The figures of every phase, unrounded."""

    req_per_s: float  # of the cached GETs
    get: _PhaseFigures  # GETs, answered from the cache where they can be
    post: _PhaseFigures  # POSTs, every one scored by the endpoint
    uncached_get: _PhaseFigures  # GETs with PREDICT_CACHE_SECONDS=0
    memo_post: _PhaseFigures  # POSTs to an endpoint that answers from memory
    scored_ratio: float  # the share of the uncached GETs that called the endpoint
    hit_ratio: float  # the share of the cached GETs answered without an endpoint call
    floor: tuple[float, float]  # GET and POST p50 (ms) against a server that does no work
    post_cpu: dict[str, float]  # CPU seconds the POST phase cost each process: host, endpoint, load generator

    @classmethod
    def of(
        cls,
        gets: list[_Answer],
        wall: float,
        posts: list[_Answer],
        uncached_gets: list[_Answer],
        memo_posts: list[_Answer],
        floor: tuple[float, float],
        post_cpu: dict[str, float],
    ) -> _Summary:
        """The figures of the phases' answers; ``wall``: the seconds the cached GETs took."""
        return cls(
            REQUESTS / wall,
            _figures(gets),
            _figures(posts),
            _figures(uncached_gets),
            _figures(memo_posts),
            sum(1 for r in uncached_gets if r[3]) / len(uncached_gets),
            sum(1 for r in gets if r[2] is not None and r[3] == 0.0) / len(gets),
            floor,
            post_cpu,
        )

    def post_cpu_ms(self) -> dict[str, float]:
        """CPU milliseconds per POST in each process, and their sum."""
        per = {name: seconds * 1000 / REQUESTS for name, seconds in self.post_cpu.items()}
        return {**per, "total": sum(per.values())}

    def lines(self) -> list[str]:
        """The figures in words, one printed line each."""
        p50, p99, o50, errors = self.get
        u50, u99, uo50, post_errors = self.post
        g50, g99, go50, get_errors = self.uncached_get
        m50, m99, mo50, memo_errors = self.memo_post
        floor_get, floor_post = self.floor
        return [
            f"{REQUESTS} requests, {CONCURRENCY} at a time, GET /api/predict/{{symbol}} over loopback: "
            f"{self.req_per_s:.0f} req/s",
            f"end to end: p50 {p50:.2f} ms, p99 {p99:.2f} ms; errors: {errors}",
            f"function overhead (its time minus the endpoint's): p50 {o50:.2f} ms",
            f"cache hit ratio (answered without an endpoint call): {self.hit_ratio:.1%}",
            f"uncached (POST /api/predict, every request scored by the endpoint): p50 {u50:.2f} ms, "
            f"p99 {u99:.2f} ms, function overhead p50 {uo50:.2f} ms; errors: {post_errors}",
            f"uncached GET (PREDICT_CACHE_SECONDS=0: read latest/ and score): p50 {g50:.2f} ms, "
            f"p99 {g99:.2f} ms, function overhead p50 {go50:.2f} ms; errors: {get_errors}",
            f"uncached GETs that called the endpoint (latest/ changed, or another model): {self.scored_ratio:.1%}",
            f"POST with every answer from memory (benchmarks/memo_score.py: no model work): p50 {m50:.2f} ms, "
            f"p99 {m99:.2f} ms, function overhead p50 {mo50:.2f} ms; errors: {memo_errors}",
            f"the same load against a server that does no work: GET p50 {floor_get:.2f} ms, "
            f"POST p50 {floor_post:.2f} ms",
            "CPU per POST: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.post_cpu_ms().items()),
        ]

    def json_figures(self) -> dict[str, float | int]:
        """The figures of the last line's JSON object, rounded."""
        p50, p99, o50, errors = self.get
        u50, u99, uo50, post_errors = self.post
        g50, g99, _, get_errors = self.uncached_get
        m50, m99, _, memo_errors = self.memo_post
        floor_get, floor_post = self.floor
        return {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "overhead_p50_ms": round(o50, 2),
            "requests": REQUESTS,
            "errors": errors,
            "uncached_p50_ms": round(u50, 2),
            "uncached_p99_ms": round(u99, 2),
            "uncached_overhead_p50_ms": round(uo50, 2),
            "uncached_errors": post_errors,
            "post_p50_ms": round(u50, 2),
            "post_p99_ms": round(u99, 2),
            "get_uncached_p50_ms": round(g50, 2),
            "get_uncached_p99_ms": round(g99, 2),
            "get_uncached_errors": get_errors,
            "get_uncached_scored_ratio": round(self.scored_ratio, 3),
            "post_memo_p50_ms": round(m50, 2),
            "post_memo_p99_ms": round(m99, 2),
            "post_memo_errors": memo_errors,
            "cache_hit_ratio": round(self.hit_ratio, 3),
            "floor_get_p50_ms": round(floor_get, 2),
            "floor_post_p50_ms": round(floor_post, 2),
            "post_cpu_ms": {name: round(ms, 3) for name, ms in self.post_cpu_ms().items()},
        }


def _start_up(port: int, env: dict[str, str]) -> subprocess.Popen:
    """``devhost up`` serving the request path only: no timer tick, no live feed, no MLflow UI."""
    command = ["up", "--port", str(port), "--schedule", "0 0 0 1 1 *", "--no-first-tick"]
    command += ["--feed-every", "0", "--no-mlflow-ui"]
    return subprocess.Popen(
        [sys.executable, "-m", "devhost", *command],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_answers(base: str) -> None:
    """Wait (a minute at most) until ``devhost up`` at ``base`` answers a GET."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/AAPL", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


def _warm_load(port: int) -> _Connections:
    """The load on the ``devhost up`` at ``port``, once it answers, warmed up."""
    _wait_answers(f"http://127.0.0.1:{port}/api/predict")
    load = _Connections(port)
    _warm(load)
    return load


def _get(i: int) -> tuple[str, str, None]:
    """The i-th GET of a phase: the symbols in turn."""
    return "GET", f"/api/predict/{SYMBOLS[i % len(SYMBOLS)]}", None


def _set_up(home: Path) -> tuple[Path, Path]:
    """Two days of bars replayed through ingest into Azurite and a small model saved to serve.

    Returns Azurite's home and the model's folder.
    """
    from common import save_pyfunc, train_small  # benchmarks/common.py, beside this script

    from devhost.app.host import Host
    from devhost.app.runtime import prepare
    from devhost.kafka.replay import make_batches, replay
    from devhost.market.feed import FeedConfig, generate, write_bars
    from training_job.config import TrainConfig

    runtime = prepare()
    bodies = list(generate(FeedConfig(symbols=SYMBOLS, days=2, seed=9)))
    replay(Host(), make_batches(bodies, 4, 64, 0))
    cfg = TrainConfig(epochs=2)
    write_bars(FeedConfig(symbols=SYMBOLS, days=2, seed=9), home / "bars")
    return runtime.home, save_pyfunc(train_small(home / "bars", cfg), cfg, home)


def _memo_posts(
    home: Path, model_dir: Path, workers: int, env: dict[str, str], bodies: list[bytes], started: list[subprocess.Popen]
) -> list[_Answer]:
    """The POSTs again, through a ``devhost up`` whose endpoint answers a request it has scored before from memory."""
    from devhost.serving.local_rollout import start_scoring_server, wait_healthy
    from devhost.shared.processes import free_port, stop_group

    memo_port, memo_http = free_port(), free_port()
    memo_script = ROOT / "benchmarks" / "memo_score.py"
    memo = start_scoring_server(model_dir, memo_port, "bench", "1", home / "memo.log", workers, memo_script)
    started.append(memo)
    memo_up = _start_up(memo_http, {**env, "SCORING_PORT": str(memo_port)})
    started.append(memo_up)
    wait_healthy(memo_port, memo)
    memo_posts = _phase(_warm_load(memo_http), lambda i: ("POST", "/api/predict", bodies[i % len(bodies)]))
    stop_group(memo_up.pid)
    stop_group(memo.pid)
    return memo_posts


def _uncached_gets(env: dict[str, str], started: list[subprocess.Popen]) -> list[_Answer]:
    """The GETs again, through a ``devhost up`` with ``PREDICT_CACHE_SECONDS=0``."""
    from devhost.shared.processes import free_port

    uncached_port = free_port()
    started.append(_start_up(uncached_port, {**env, "PREDICT_CACHE_SECONDS": "0"}))
    return _phase(_warm_load(uncached_port), _get)


def _measure(home: Path, model_dir: Path, started: list[subprocess.Popen]) -> _Summary:
    """Serve the model and run every phase against it; each process started is added to ``started``."""
    from devhost.serving.local_rollout import start_scoring_server, wait_healthy
    from devhost.shared.processes import free_port, stop_group
    from functions.settings import get_settings

    scoring_port, http_port = free_port(), free_port()
    workers = get_settings().scoring_workers  # as devhost's rollout and the Azure deployment run it
    scorer = start_scoring_server(model_dir, scoring_port, "bench", "1", home / "score.log", workers)
    started.append(scorer)
    env = {**os.environ, "SCORING_PORT": str(scoring_port), "PYTHONPATH": str(ROOT)}
    up = _start_up(http_port, env)
    started.append(up)
    wait_healthy(scoring_port, scorer)
    load = _warm_load(http_port)
    bodies = _post_bodies(home / "bars")
    start = time.perf_counter()
    gets = _phase(load, _get)
    wall = time.perf_counter() - start
    meters = {"host": _CpuMeter(up.pid), "endpoint": _CpuMeter(scorer.pid), "load": _CpuMeter(os.getpid(), tree=False)}
    posts = _phase(load, lambda i: ("POST", "/api/predict", bodies[i % len(bodies)]))
    post_cpu = {name: meter.spent() for name, meter in meters.items()}
    stop_group(up.pid)
    memo_posts = _memo_posts(home, model_dir, workers, env, bodies, started)
    uncached_gets = _uncached_gets(env, started)
    return _Summary.of(gets, wall, posts, uncached_gets, memo_posts, _floor(bodies[0]), post_cpu)


def main() -> None:
    """Set up the local stack, fire the requests, print the figures."""
    home = Path(tempfile.mkdtemp(prefix="stockcast-bench-"))
    os.environ.update({"STOCKCAST_HOME": str(home), "STOCKCAST_AZURITE_PORT": "0"})
    from devhost.shared.processes import stop_group
    from devhost.storage import azurite

    azurite_home, model_dir = _set_up(home)
    started: list[subprocess.Popen] = []
    try:
        summary = _measure(home, model_dir, started)
    finally:
        for proc in reversed(started):
            stop_group(proc.pid)
        azurite.stop(azurite_home)
    for line in summary.lines():
        print(line)
    print(json.dumps(summary.json_figures()))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
