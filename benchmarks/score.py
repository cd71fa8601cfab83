"""Single-request scoring latency: score.py in-process and over HTTP (azmlinfsrv).

Next to it, Keras ``model.predict`` (the replaced system's scoring path) and a plain Keras call
``model(x, training=False)`` (what Keras advises for a single input) on the same model and window.

A small model is trained on generated bars first (a few seconds). Prints the figures, then one
JSON object as the last line; ``init_s`` is score.init's time (loading the pyfunc and the
TensorFlow Lite flatbuffer training saved) and ``single_window`` how one window ran ("tflite",
or "xla" where conversion failed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
import orjson
from common import save_pyfunc, train_small  # benchmarks/common.py, beside this script

from devhost.market.feed import FeedConfig, write_bars
from devhost.serving import local_rollout as scoring
from devhost.shared.processes import free_port
from training_job import data
from training_job.config import TrainConfig
from training_job.forecaster import ForecasterMeta

if TYPE_CHECKING:
    import keras
    import pandas as pd


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn, n: int) -> list[float]:  # noqa: ANN001
    """Durations of ``n`` calls."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


class _Durations(NamedTuple):
    """Seconds of each call timed, per scoring path."""

    in_process: list[float]  # score.score, JSON in and out
    http: list[float]  # POST /score to azmlinfsrv
    keras_predict: list[float]  # the reference: Keras model.predict
    keras_call: list[float]  # Keras model(x, training=False)


def _payload(bars: pd.DataFrame, count: int) -> dict[str, list[dict[str, Any]]]:
    """A request body for AAPL's newest ``count`` bars, as a client sends it."""
    rows = bars[bars["symbol"] == "AAPL"].tail(count)
    return {
        "bars": [
            {
                "symbol": "AAPL",
                "ts": r.ts.isoformat(),
                "open": r.open,
                "high": r.high,
                "low": r.low,
                "close": r.close,
                "volume": int(r.volume),
            }
            for r in rows.itertuples()
        ]
    }


def _load_score(model_dir: Path) -> tuple[ModuleType, float]:
    """The entry script, imported as azmlinfsrv imports it and initialised, and the seconds init took."""
    os.environ["AZUREML_MODEL_DIR"] = str(model_dir)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training_job"))
    import score  # the entry script, as azmlinfsrv imports it

    start = time.perf_counter()
    score.init()  # loads the pyfunc and the TensorFlow Lite flatbuffer saved with it
    return score, time.perf_counter() - start


def _time_in_process(score: ModuleType, body: bytes) -> list[float]:
    """Durations of ``score.score`` on ``body``, parsed as the server parses it."""
    # a second of calls first: the figure is the steady state, not the first calls after a short init
    for _ in range(1000):
        score.score(orjson.loads(body))
    return timed(lambda: score.score(orjson.loads(body)), 1000)


def _time_keras(window: keras.Model, x: np.ndarray) -> tuple[list[float], list[float]]:
    """Durations of Keras ``model.predict`` and of a plain ``model(x, training=False)`` on ``x``."""
    window.predict(x, verbose=0)
    keras_predict = timed(lambda: window.predict(x, verbose=0), 100)
    for _ in range(20):
        window(x, training=False)
    return keras_predict, timed(lambda: window(x, training=False).numpy(), 300)


def _time_http(model_dir: Path, log_path: Path, body: bytes) -> list[float]:
    """Durations of ``POST /score`` with ``body`` to azmlinfsrv serving ``model_dir``, over one keep-alive client."""
    port = free_port()
    proc = scoring.start_scoring_server(model_dir, port, "bench", "1", log_path)
    try:
        scoring.wait_healthy(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(20):
                client.post("/score", content=body, headers={"Content-Type": "application/json"})
            return timed(
                lambda: client.post(
                    "/score", content=body, headers={"Content-Type": "application/json"}
                ).raise_for_status(),
                500,
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _report(window: int, bars: int, init_s: float, single_window: str, durations: _Durations) -> None:
    """Print the figures, then the JSON line."""
    p50, p99 = percentiles(durations.in_process)
    h50, h99 = percentiles(durations.http)
    r50, r99 = percentiles(durations.keras_predict)
    c50, c99 = percentiles(durations.keras_call)
    print(f"request: 1 symbol, {bars} bars (window {window} + indicator warm-up)")
    print(f"score.py init (load the pyfunc and its flatbuffer):  {init_s:.1f} s; one window runs {single_window}")
    print(f"score.py in-process (JSON -> features -> {single_window:6s}):  p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    print(f"score.py over HTTP (azmlinfsrv, keep-alive):         p50 {h50:.3f} ms, p99 {h99:.3f} ms")
    print(f"reference: Keras model.predict on the same window:   p50 {r50:.3f} ms, p99 {r99:.3f} ms")
    print(f"Keras model(x, training=False) on the same window:   p50 {c50:.3f} ms, p99 {c99:.3f} ms")
    print(f"speedup in-process vs model.predict: {r50 / p50:.1f}x; vs model(x): {c50 / p50:.1f}x")
    print(
        json.dumps(
            {
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "http_p50_ms": round(h50, 3),
                "http_p99_ms": round(h99, 3),
                "reference_p50_ms": round(r50, 3),
                "speedup": round(r50 / p50, 1),
                "model_call_p50_ms": round(c50, 3),
                "speedup_vs_call": round(c50 / p50, 1),
                "single_window": single_window,
                "init_s": round(init_s, 1),
            }
        )
    )


def main() -> None:
    """Train a model, then time the three scoring paths."""
    cfg = TrainConfig(epochs=3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_bars(FeedConfig(days=3, seed=5), tmp_path / "bars")
        bars = data.read_bars(tmp_path / "bars")
        result = train_small(tmp_path / "bars", cfg)
        meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes)
        model_dir = save_pyfunc(result, cfg, tmp_path)
        payload = _payload(bars, meta.bars_needed + 10)
        body = orjson.dumps(payload)
        score, init_s = _load_score(model_dir)
        single_window = score._state["forecaster"].single_window  # "tflite", or "xla" where that failed
        in_process = _time_in_process(score, body)
        x = score._state["forecaster"].windows(score._state["series"](payload["bars"]), True).x
        keras_predict, keras_call = _time_keras(result.model, x)  # Keras on the same window the forecaster builds
        http = _time_http(model_dir, tmp_path / "score.log", body)
    durations = _Durations(in_process, http, keras_predict, keras_call)
    _report(cfg.window, len(payload["bars"]), init_s, single_window, durations)


if __name__ == "__main__":
    main()
