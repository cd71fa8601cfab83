"""The deployable model: raw bars in, one forecast per symbol out.

:class:`Forecaster` holds the Keras model (or none: the ``persistence`` kind forecasts "no
change"), its window settings, its conformal interval scale (:mod:`training_job.intervals`), the
skill it showed when it was evaluated and the feature code. Batches of windows (evaluation) run
through a ``tf.function`` traced once with a fixed input signature (``model.predict`` costs tens
of milliseconds of per-call setup; a single request must not). One window (a live request) runs
through the model converted to TensorFlow Lite (~0.1 ms for three members on a CPU core), else
XLA-compiled (~0.5 ms). Training converts it once and saves the flatbuffer beside the Keras file,
with the graph's returns on probe windows; the endpoint serves that flatbuffer through LiteRT and
never imports TensorFlow. :class:`ForecasterModel` wraps it as an MLflow pyfunc; the
``training_job`` package travels inside the model as its code.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import orjson
import pandas as pd

from training_job import sessions
from training_job.data import MAX_PRICE, MAX_VOLUME, MIN_TS, epoch_seconds
from training_job.features import FEATURES, Windows, bars_needed, concat, segments, symbol_windows
from training_job.intervals import IntervalScale

META_FILE = "forecaster.json"
KERAS_FILE = "model.keras"
LITE_FILE = "model.tflite"  # one window, converted and checked at training (absent where that failed)
LITE_CHECK_FILE = "model.tflite.json"  # the graph's returns on probe_windows(meta), which the flatbuffer must give
# the pyfunc's model_config (MLflow passes a key at load only where the model was saved with it):
# score.py loads with {"serving": True}, which serves the flatbuffer without TensorFlow
MODEL_CONFIG = {"serving": False}
OUTPUT_COLUMNS = [
    "symbol",
    "as_of",
    "target_ts",
    "predicted_close",
    "predicted_return",
    "interval_low",
    "interval_high",
    "session_closed",
    "next_open",
]
PERSISTENCE = "persistence"
LSTM_ATTENTION = "lstm_attention"
INPUT_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume"]
log = logging.getLogger(__name__)
# windows per forward call when scoring many: bounds the activations' memory (about 135 MB a call)
FORWARD_BATCH = 4096


def ready(symbol: str, ts: np.ndarray, meta: ForecasterMeta, limit: int = 100_000) -> tuple[int, int | None]:
    """How many of the bars a forecast needs ``ts`` has, and when (unix s) the last one needed will have closed.

    The time assumes one bar a minute from the last one on, in the symbol's exchange sessions (none
    outside them): a session's first bar after a gap longer than ``max_gap_minutes`` starts the
    window again, while the warm-up bars may lie before it. None if no time is in sight.
    """
    n, need, window, gap = len(ts), meta.bars_needed, meta.window, meta.max_gap_minutes * 60
    if n == 0:
        return 0, None
    seg = segments(ts, meta.max_gap_minutes)
    tail = int(np.sum(seg == seg[-1]))  # the bars since the last gap: the window's run
    missing = max(need - n, window - tail, 0)
    t = int(ts[-1])
    for _ in range(limit):
        if n >= need and tail >= window:
            return need - missing, t + 60
        step = sessions.next_bar(symbol, t, 1)
        nxt = step.next_open if step.session_closed else step.target_ts
        if nxt is None:
            return need - missing, None
        tail = 1 if nxt - t > gap else tail + 1
        n, t = n + 1, int(nxt)
    return need - missing, None


def short_of(symbol: str, ts: np.ndarray, meta: ForecasterMeta) -> str:
    """Why ``symbol`` has no forecast yet: the usable bars of those needed, and when one becomes possible."""
    have, at = ready(symbol, ts, meta)
    if at is None:
        when = "no time for a forecast is in sight"
    else:
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        same_day = len(ts) and moment.date() == dt.datetime.fromtimestamp(int(ts[-1]), dt.UTC).date()
        when = f"a forecast is possible from {moment:{'%H:%M' if same_day else '%Y-%m-%d %H:%M'}} UTC"
    return (
        f"{symbol}: {have} of {meta.bars_needed} usable bars (need the last {meta.bars_needed} bars, the last "
        f"{meta.window} of them without a gap longer than {meta.max_gap_minutes} minutes); {when} at one bar a minute"
    )


class ForecastInputError(ValueError):
    """Input the forecaster cannot use; ``code`` says which kind (``malformed``, ``not_enough_bars``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ForecasterMeta:
    """Settings that travel with the model."""

    window: int
    horizon: int
    max_gap_minutes: int
    features: tuple[str, ...] = FEATURES
    kind: str = LSTM_ATTENTION
    interval_level: float = 0.9
    # conformal quantile of |error| / window volatility in each volatility bin (a number: one bin)
    interval_q: tuple[float, ...] | float = (float("inf"),)
    interval_edges: tuple[float, ...] = ()  # window volatility between the bins, ascending
    skill: dict[str, Any] | None = None  # decision-slice figures of this version when it was registered

    def __post_init__(self) -> None:
        q = (self.interval_q,) if isinstance(self.interval_q, (int, float)) else self.interval_q
        object.__setattr__(self, "interval_q", tuple(float("inf") if v is None else float(v) for v in q))
        object.__setattr__(self, "interval_edges", tuple(float(v) for v in self.interval_edges))
        IntervalScale(self.interval_level, self.interval_edges, self.interval_q)  # raises if they do not fit

    @property
    def bars_needed(self) -> int:
        """Contiguous bars a request needs for one forecast."""
        return bars_needed(self.window)

    @property
    def interval(self) -> IntervalScale:
        """The interval scale this version draws its intervals with, in training and in serving alike."""
        return IntervalScale(self.interval_level, self.interval_edges, self.interval_q)  # type: ignore[arg-type]


SeriesArrays = tuple[np.ndarray, tuple[np.ndarray, ...]]  # ts seconds, (o, h, l, c, v)


class _LiteWindow:
    """A TensorFlow Lite model of one window (batch 1): ``(1, window, features)`` in, ``(1,)`` out.

    LiteRT's interpreter where ``ai_edge_litert`` is installed, else TensorFlow's own (deprecated,
    still shipped). One thread: a window is far too small to split, and the workers are processes.
    An interpreter holds its tensors, so calls from several threads take turns.
    """

    def __init__(self, flatbuffer: bytes) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter  # noqa: N806
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice, at every load
            self._interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Predicted log return of the one window ``x`` (float32, C-contiguous)."""
        with self._lock:
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).reshape(-1)


def probe_windows(meta: ForecasterMeta, n: int = 8) -> np.ndarray:
    """``n`` windows computed by the feature code from a seeded random walk of 1-minute bars.

    Inputs on the scale of real ones (normalisation and the AR path divide by small scales, so
    unit-scale noise would hide a wrong constant); used to check a converted model at load.
    """
    rng = np.random.default_rng(0)
    bars = meta.bars_needed + n - 1
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, bars)))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = 1.0 + np.abs(rng.normal(0.0, 5e-4, bars))
    high, low = np.maximum(open_, close) * spread, np.minimum(open_, close) / spread
    volume = rng.integers(100, 10_000, bars).astype(np.float64)
    ts = MIN_TS + 60 * np.arange(bars, dtype=np.int64)
    ohlcv = (open_, high, low, close, volume)
    return symbol_windows("PROBE", ts, ohlcv, meta.window, meta.horizon, meta.max_gap_minutes, False).x


def _check_lite(lite: _LiteWindow, x: np.ndarray, expected: np.ndarray) -> None:
    """Raise ValueError unless ``lite`` gives ``expected`` for each window of ``x`` alone (rtol 1e-4)."""
    got = np.concatenate([lite(x[i : i + 1]) for i in range(len(x))])
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-6):
        raise ValueError(f"it differs from the graph by up to {np.max(np.abs(got - expected)):.3g}")


def convert_lite(model: Any, meta: ForecasterMeta) -> tuple[bytes, np.ndarray]:
    """``model`` for one window as a TensorFlow Lite flatbuffer, and the graph's returns it was checked against.

    Raises whatever the converter raises, or ValueError where the flatbuffer forecasts other
    returns than the batched graph on :func:`probe_windows`.
    """
    from training_job.model import single_window_tflite

    flatbuffer = single_window_tflite(model, meta.window, len(meta.features))
    x = probe_windows(meta)
    expected = np.asarray(model(x, training=False), dtype=np.float32).reshape(-1)
    _check_lite(_LiteWindow(flatbuffer), x, expected)
    return flatbuffer, expected


class Forecaster:
    """Inference over raw bars, through a compiled forward pass.

    ``lite``: one window runs through the model converted to TensorFlow Lite (see :meth:`load`);
    otherwise, or where that fails, XLA-compiled. :attr:`single_window` says which.
    """

    def __init__(self, model: Any, meta: ForecasterMeta, lite: bool = False) -> None:
        self.model = model
        self.meta = meta
        self.single_window = "none"  # how one window (a live request) runs: "tflite", "xla" or "none"
        self._forward_one: Any = None  # XLA compiled on first use: training and evaluation never score one window
        sessions.warm(("SPY",))  # build the US calendar (the common case) now, not on the first request
        if model is None:  # persistence: no network, no TensorFlow
            return
        import tensorflow as tf  # deferred: building features or windows needs no TensorFlow

        spec = tf.TensorSpec([None, meta.window, len(meta.features)], tf.float32)
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)
        self.single_window = "xla"
        if lite:
            self.use_lite()

    def _xla_forward(self) -> Any:
        """One window XLA-compiled: ~0.6 ms instead of ~2.5 ms for the plain graph on a CPU core.

        Batches (evaluation) keep the plain graph, since XLA compiles anew for every batch size.
        Called as its concrete function: the polymorphic call's argument binding costs ~0.3 ms.
        """
        import tensorflow as tf

        model, meta = self.model, self.meta
        one = tf.TensorSpec([1, meta.window, len(meta.features)], tf.float32)
        compiled = tf.function(lambda x: model(x, training=False), input_signature=[one], jit_compile=True)
        concrete = compiled.get_concrete_function()
        forward = lambda x: concrete(x).numpy().reshape(-1)  # noqa: E731
        forward(np.zeros((1, meta.window, len(meta.features)), dtype=np.float32))  # compile now
        return forward

    def use_lite(self) -> str:
        """Run one window through TensorFlow Lite from now on, if it converts and checks out; returns the path in use.

        The endpoint calls this once at init; training and evaluation, which score batches, never pay for it.
        The path is chosen once: after a load for serving has chosen it (a failed conversion included),
        a second call converts nothing again.
        """
        if self.model is not None and self._forward_one is None:
            lite = self._lite_forward()
            if lite is not None:
                self._forward_one, self.single_window = lite, "tflite"
            elif self._forward_one is None:
                self._forward_one = self._xla_forward()  # the fallback compiles now, not on the first request
        return self.single_window

    def _lite_forward(self) -> _LiteWindow | None:
        """One window through TensorFlow Lite, checked against the batched graph; None (logged) if that fails."""
        start = time.perf_counter()
        try:
            lite = _LiteWindow(convert_lite(self.model, self.meta)[0])
        except Exception as exc:  # any failure of the converter or the check: serve as before
            log.warning("single windows run XLA-compiled: TensorFlow Lite conversion failed: %s", exc)
            return None
        log.info("single windows run in TensorFlow Lite (converted and checked in %.1f s)", time.perf_counter() - start)
        return lite

    @classmethod
    def _saved_lite(cls, directory: Path, meta: ForecasterMeta) -> Forecaster | None:
        """The flatbuffer training saved, served on LiteRT alone; None (logged) where none checks out.

        The flatbuffer must give the returns the graph gave on the probe windows when it was
        saved: that holds this interpreter to what training checked, without TensorFlow.
        """
        if not (directory / LITE_FILE).exists():
            return None  # saved before training converted, or its conversion failed: load the Keras model
        try:
            lite = _LiteWindow((directory / LITE_FILE).read_bytes())
            expected = np.array(orjson.loads((directory / LITE_CHECK_FILE).read_bytes())["returns"], dtype=np.float32)
            _check_lite(lite, probe_windows(meta), expected)
        except Exception as exc:  # a flatbuffer this interpreter cannot run as checked: serve from Keras
            log.warning("the saved TensorFlow Lite model is not served (%s): loading the Keras model", exc)
            return None
        forecaster = cls(None, meta)
        forecaster._forward_one, forecaster.single_window = lite, "tflite"
        return forecaster

    @classmethod
    def persistence(cls, meta: ForecasterMeta) -> Forecaster:
        """The "no change" forecaster: predicted return 0, same windows, intervals and contract."""
        return cls(None, replace(meta, kind=PERSISTENCE))

    @classmethod
    def load(cls, directory: str | Path, lite: bool = False) -> Forecaster:
        """Load a forecaster saved by :meth:`save`; ``lite``: for serving, one window in TensorFlow Lite.

        With ``lite``, the flatbuffer saved at training is served alone (LiteRT, no TensorFlow,
        several windows one by one). Where there is none, or it does not reproduce its checked
        returns, the Keras model is loaded and converted here (a few seconds); a model that does
        not convert, or converts to different outputs, keeps the XLA-compiled path (with a
        warning in the log). Without ``lite`` (evaluation), the Keras model is loaded.
        """
        directory = Path(directory)
        meta = orjson.loads((directory / META_FILE).read_bytes())
        meta["features"] = tuple(meta["features"])
        if meta.get("interval_q") is None:  # JSON has no infinity (older versions saved one number)
            meta["interval_q"] = float("inf")
        forecaster_meta = ForecasterMeta(**meta)
        if forecaster_meta.kind == PERSISTENCE:  # no network: serving it never imports TensorFlow (~6 s of CPU)
            return cls(None, forecaster_meta)
        served = cls._saved_lite(directory, forecaster_meta) if lite else None
        if served is not None:
            return served
        import keras

        import training_job.model  # noqa: F401  (registers the attention layer for deserialisation)

        with warnings.catch_warnings():
            # each averaged member was saved with its training optimizer; a served model never trains
            # (compile=False), so Keras skipping those optimizer variables is expected, not a fault
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer", UserWarning)
            model = keras.models.load_model(directory / KERAS_FILE, compile=False)
        return cls(model, forecaster_meta, lite=lite)

    @staticmethod
    def save(model: Any, meta: ForecasterMeta, directory: str | Path) -> Path:
        """Write the Keras model, its one-window TensorFlow Lite flatbuffer and its settings into ``directory``.

        A model that does not convert, or converts to other returns, is saved without the
        flatbuffer (logged): serving then loads the Keras model, as :meth:`load` says.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if model is not None:
            model.save(directory / KERAS_FILE)
            try:
                flatbuffer, returns = convert_lite(model, meta)
            except Exception as exc:  # the model still serves, from Keras: never lose a trained model to this
                log.warning("saved without TensorFlow Lite: conversion failed: %s", exc)
            else:
                (directory / LITE_FILE).write_bytes(flatbuffer)
                (directory / LITE_CHECK_FILE).write_bytes(orjson.dumps({"returns": returns.tolist()}))
        fields = dict(meta.__dict__)
        fields["interval_q"] = [q if np.isfinite(q) else None for q in meta.interval_q]  # JSON has no infinity
        (directory / META_FILE).write_bytes(orjson.dumps(fields))
        return directory

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Predicted log returns for windows ``x`` (n, window, features)."""
        if len(x) == 0 or (self.model is None and self._forward_one is None):  # persistence
            return np.zeros(len(x), dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 1:
            if self._forward_one is None:
                self._forward_one = self._xla_forward()
            return self._forward_one(x)
        if self.model is None:  # served from the saved flatbuffer alone, which takes one window
            return np.concatenate([self._forward_one(x[i : i + 1]) for i in range(len(x))])
        # in slices: the network's activations take ~33 KB a window, so scoring a history at once
        # would need memory in proportion to it (gigabytes at 50 symbols x 10 days)
        return np.concatenate(
            [self._forward(x[i : i + FORWARD_BATCH]).numpy().reshape(-1) for i in range(0, len(x), FORWARD_BATCH)]
        )

    def windows(self, series: Mapping[str, SeriesArrays], latest_only: bool) -> Windows:
        """Input windows of each symbol: the last one, or every one (for evaluation)."""
        parts = []
        short = []
        m = self.meta
        for symbol, (ts, ohlcv) in series.items():
            w = symbol_windows(symbol, ts, ohlcv, m.window, m.horizon, m.max_gap_minutes, False, latest_only)
            if latest_only and (len(w) == 0 or w.as_of[-1] != ts[-1]):
                short.append(symbol)
                continue
            parts.append(w)
        if short:
            raise ForecastInputError("not_enough_bars", "; ".join(short_of(s, series[s][0], m) for s in short))
        if not parts:
            raise ForecastInputError("malformed", "no bars")
        return parts[0] if len(parts) == 1 else concat(parts)

    def half_width(self, w: Windows) -> np.ndarray:
        """Half width of each window's interval in log-return units: its volatility bin's q × its volatility."""
        return self.meta.interval.half_width(w.volatility)

    def forecast(self, series: Mapping[str, SeriesArrays], latest_only: bool = True) -> list[dict[str, Any]]:
        """Forecast rows for the latest bar of each symbol (or for every window).

        The target is the bar exactly ``horizon`` minutes after ``as_of``, as in training. A live
        forecast (``latest_only``) whose target minute would fall at or after its exchange
        session's close (or in its lunch break) says so (``session_closed``, ``next_open``) and
        forecasts no change: no such bar will print, and the model never trained on one.
        """
        w = self.windows(series, latest_only)
        ret = self.forward(w.x).astype(np.float64)
        half = self.half_width(w)
        last = w.last_close.astype(np.float64)
        # whole arrays through numpy, then plain floats: the same ufuncs per element as one at a time
        closes, lows, highs = (last * np.exp(ret)).tolist(), last * np.exp(ret - half), last * np.exp(ret + half)
        finite = np.isfinite(half).tolist()
        lows, highs = lows.tolist(), highs.tolist()
        horizon, symbols, stamps, rets = self.meta.horizon, w.symbol.tolist(), w.as_of.tolist(), ret.tolist()
        rows = []
        for i in range(len(w)):
            symbol, as_of, close, r = symbols[i], stamps[i], closes[i], rets[i]
            target, closed, next_open = as_of + horizon * 60, False, None
            if latest_only:
                nxt = sessions.next_bar(symbol, as_of, horizon)
                target, closed, next_open = nxt.target_ts, nxt.session_closed, nxt.next_open
            if closed:
                r, close, low, high = 0.0, float(last[i]), None, None
            elif finite[i]:
                low, high = lows[i], highs[i]
            else:
                low = high = None
            rows.append(
                {
                    "symbol": str(symbol),
                    "as_of": as_of,
                    "target_ts": target,
                    "predicted_close": close,
                    "predicted_return": r,
                    "interval_low": low,
                    "interval_high": high,
                    "session_closed": closed,
                    "next_open": next_open,
                }
            )
        return rows

    def predict_frame(self, bars: pd.DataFrame, latest_only: bool = True) -> pd.DataFrame:
        """The pyfunc contract: a DataFrame of bars in, a DataFrame of forecasts out."""
        rows = self.forecast(series_from_frame(bars), latest_only)
        out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
        for col in ("as_of", "target_ts", "next_open"):  # MLflow schemas hold naive datetimes: these are UTC
            out[col] = pd.to_datetime(pd.Series(out[col], dtype="Int64"), unit="s").astype("datetime64[ns]")
        for col in ("interval_low", "interval_high"):
            out[col] = out[col].astype("float64")
        out["session_closed"] = out["session_closed"].astype(bool)
        return out


# Bounds of a bar the model accepts (the predict API holds POSTed bars to the same prices and volumes).
# Times stop at 2100, not at "now": evaluation reads stored history and the devhost market clock may run
# ahead of the wall clock; 2100 keeps every derived time (targets, next opens, datetime64[ns]) in range.
MAX_TS = 4_102_444_800  # 2100-01-01T00:00:00Z: stored history may run ahead of a devhost clock, not years


def _ts_seconds(value: Any) -> int:
    """Unix seconds of a bar's ``ts`` (unix seconds, ISO 8601 or a datetime), within [2000, 2100)."""
    if isinstance(value, bool):
        raise TypeError("ts must be a time")
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"ts {value} is not a time")
    if isinstance(value, (int, float)):
        seconds = int(value)
    elif isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        seconds = int(parsed.timestamp())
    elif isinstance(value, dt.datetime):
        seconds = int(value.timestamp())
    else:
        raise TypeError(f"ts of type {type(value).__name__}")
    if not MIN_TS <= seconds < MAX_TS:  # also keeps huge numbers (milliseconds, 10**30) out of int64
        raise ForecastInputError("malformed", f"ts {value!r:.40} is not a time between 2000-01-01 and 2100-01-01")
    return seconds


def _ts_array(values: Sequence[Any]) -> np.ndarray:
    """Unix seconds of every bar's ``ts``, as :func:`_ts_seconds` reads them, each within [2000, 2100).

    Times of one kind (all ISO 8601 strings, all integers or all floats: what JSON clients send)
    are converted in bulk; anything else, or any time out of range, goes through
    :func:`_ts_seconds` one by one, which raises the error of the first bad one.
    """
    kind = type(values[0])
    seconds = None
    if kind in (str, int, float) and all(type(v) is kind for v in values):
        try:
            if kind is str:
                seconds = np.array(
                    [
                        (t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)).timestamp()
                        for t in map(dt.datetime.fromisoformat, values)
                    ]
                )
            else:
                seconds = np.array(values, dtype=np.int64 if kind is int else np.float64)
        except (ValueError, OverflowError, OSError):  # a bad string, an integer past int64: told one by one
            seconds = None
    if seconds is not None and ((seconds >= MIN_TS) & (seconds < MAX_TS)).all():  # NaN fails too
        return seconds.astype(np.int64)  # floats truncate toward zero, as int() does
    return np.fromiter(map(_ts_seconds, values), dtype=np.int64, count=len(values))


def _validated(symbol: str, ts: np.ndarray, values: np.ndarray) -> SeriesArrays:
    """One symbol's bars floored to their minute and sorted, one row per minute; checked.

    ``values`` holds the open, high, low, close and volume rows (5, n) in the order of ``ts``. Times
    are floored first, then a minute sent more than once keeps one bar: the one stamped latest in
    it (a bar at :30 over one at :00), and of bars stamped alike the one sent later.
    """
    if len(ts) and (ts.min() < MIN_TS or ts.max() >= MAX_TS):
        raise ForecastInputError("malformed", f"{symbol}: bar times must lie between 2000-01-01 and 2100-01-01")
    minutes = ts - ts % 60
    if not (minutes[1:] > minutes[:-1]).all():  # already one bar a minute, in order: the common case needs no sort
        order = np.argsort(ts, kind="stable")  # by the stamp itself, so the latest in its minute comes last
        minutes, values = minutes[order], values[:, order]
        last = np.concatenate([minutes[1:] != minutes[:-1], [True]])
        minutes, values = minutes[last], values[:, last]
    o, h, lo, c, v = values
    ok = (
        np.isfinite(values).all() and (lo > 0).all() and (h <= MAX_PRICE).all() and ((v >= 0) & (v <= MAX_VOLUME)).all()
    )
    if not ok or (lo > np.minimum(o, c)).any() or (np.maximum(o, c) > h).any():
        raise ForecastInputError(
            "malformed",
            f"{symbol}: bars must have finite prices in (0, {MAX_PRICE:g}], low <= open/close <= high, "
            f"volume in [0, {MAX_VOLUME:g}]",
        )
    return minutes, (o, h, lo, c, v)


_BAR_FIELDS = operator.itemgetter("symbol", "ts", "open", "high", "low", "close", "volume")


def series_from_records(records: Sequence[Mapping[str, Any]]) -> dict[str, SeriesArrays]:
    """Group JSON bar records by symbol into validated arrays (the scoring fast path)."""
    if not records:
        raise ForecastInputError("malformed", "no bars")
    try:
        symbols, stamps, *columns = zip(*map(_BAR_FIELDS, records), strict=True)
        ts = _ts_array(stamps)
        values = np.array(columns, dtype=np.float64)
    except ForecastInputError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:  # OverflowError: ints past float64
        raise ForecastInputError(
            "malformed", f"each bar needs symbol, ts, open, high, low, close, volume: {exc}"
        ) from None
    if values.shape != (5, len(records)):  # a value that is itself a list would add a dimension
        raise ForecastInputError("malformed", "open, high, low, close and volume must be numbers")
    first = symbols[0]
    if type(first) is str and symbols.count(first) == len(symbols):  # one symbol: the usual request
        return {first.upper(): _validated(first.upper(), ts, values)}
    names = np.array([str(s).upper() for s in symbols])
    out = {}
    for name in sorted(set(names.tolist())):
        mask = names == name
        out[name] = _validated(name, ts[mask], values[:, mask])
    return out


def series_from_frame(bars: pd.DataFrame) -> dict[str, SeriesArrays]:
    """Group a bar DataFrame by symbol into validated arrays."""
    missing = [c for c in INPUT_COLUMNS if c not in bars.columns]
    if missing:
        raise ForecastInputError("malformed", f"missing columns: {missing}")
    ts = epoch_seconds(bars["ts"])
    symbols = bars["symbol"].astype(str).str.upper().to_numpy()
    values = np.stack([bars[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")])
    out = {}
    for symbol in sorted(set(symbols)):
        mask = symbols == symbol
        out[symbol] = _validated(symbol, ts[mask], values[:, mask])
    return out


class ForecasterModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: ``predict(bars_df, params={"mode": "latest"|"all"})``."""

    def load_context(self, context: Any) -> None:
        """Load the model and settings from the model's artifacts; ``model_config={"serving": True}``: as served.

        Served, the flatbuffer saved at training runs without TensorFlow (see :meth:`Forecaster.load`).
        """
        serving = bool((context.model_config or {}).get("serving"))
        self.forecaster = Forecaster.load(context.artifacts["forecaster"], lite=serving)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Forecast the next close of every symbol in ``model_input``."""
        mode = (params or {}).get("mode", "latest")
        return self.forecaster.predict_frame(model_input, latest_only=mode != "all")
