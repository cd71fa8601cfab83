"""The deployable model: raw bars in, one forecast per symbol out.

:class:`Forecaster` holds the Keras model (or none: the ``persistence`` kind forecasts "no
change"), its window settings, its conformal interval scale, the skill it showed when it was
evaluated and the feature code, and runs inference through a ``tf.function`` traced once with a
fixed input signature (``model.predict`` costs tens of milliseconds of per-call setup; a single
request must not). :class:`ForecasterModel` wraps it as an MLflow pyfunc; the ``training_job``
package travels inside the model as its code.
"""

from __future__ import annotations

import datetime as dt
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
from training_job.features import FEATURES, Windows, bars_needed, concat, symbol_windows

META_FILE = "forecaster.json"
KERAS_FILE = "model.keras"
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
    interval_q: float = float("inf")  # conformal quantile of |error| / window volatility
    skill: dict[str, Any] | None = None  # decision-slice figures of this version when it was registered

    @property
    def bars_needed(self) -> int:
        """Contiguous bars a request needs for one forecast."""
        return bars_needed(self.window)


SeriesArrays = tuple[np.ndarray, tuple[np.ndarray, ...]]  # ts seconds, (o, h, l, c, v)


class Forecaster:
    """Inference over raw bars, through a compiled forward pass."""

    def __init__(self, model: Any, meta: ForecasterMeta) -> None:
        self.model = model
        self.meta = meta
        sessions.warm(("SPY",))  # build the US calendar (the common case) now, not on the first request
        if model is None:  # persistence: no network, no TensorFlow
            return
        import tensorflow as tf  # deferred: building features or windows needs no TensorFlow

        spec = tf.TensorSpec([None, meta.window, len(meta.features)], tf.float32)
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)
        # one window (a live request) runs XLA-compiled: ~0.6 ms instead of ~2.5 ms on a CPU core;
        # batches (evaluation) keep the plain graph, since XLA compiles anew for every batch size
        one = tf.TensorSpec([1, meta.window, len(meta.features)], tf.float32)
        self._forward_one = tf.function(lambda x: model(x, training=False), input_signature=[one], jit_compile=True)
        self._forward_one(
            np.zeros((1, meta.window, len(meta.features)), dtype=np.float32)
        )  # compile now, not on the first request

    @classmethod
    def persistence(cls, meta: ForecasterMeta) -> Forecaster:
        """The "no change" forecaster: predicted return 0, same windows, intervals and contract."""
        return cls(None, replace(meta, kind=PERSISTENCE))

    @classmethod
    def load(cls, directory: str | Path) -> Forecaster:
        """Load a forecaster saved by :meth:`save`."""
        import keras

        import training_job.model  # noqa: F401  (registers the attention layer for deserialisation)

        directory = Path(directory)
        meta = orjson.loads((directory / META_FILE).read_bytes())
        meta["features"] = tuple(meta["features"])
        if meta.get("interval_q") is None:  # JSON has no infinity
            meta["interval_q"] = float("inf")
        forecaster_meta = ForecasterMeta(**meta)
        if forecaster_meta.kind == PERSISTENCE:
            return cls(None, forecaster_meta)
        return cls(keras.models.load_model(directory / KERAS_FILE, compile=False), forecaster_meta)

    @staticmethod
    def save(model: Any, meta: ForecasterMeta, directory: str | Path) -> Path:
        """Write the Keras model and its settings into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if model is not None:
            model.save(directory / KERAS_FILE)
        fields = dict(meta.__dict__)
        if not np.isfinite(fields["interval_q"]):
            fields["interval_q"] = None
        (directory / META_FILE).write_bytes(orjson.dumps(fields))
        return directory

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Predicted log returns for windows ``x`` (n, window, features)."""
        if len(x) == 0 or self.model is None:
            return np.zeros(len(x), dtype=np.float32)
        fn = self._forward_one if len(x) == 1 else self._forward
        return fn(np.ascontiguousarray(x, dtype=np.float32)).numpy().reshape(-1)

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
            raise ForecastInputError(
                "not_enough_bars",
                f"{', '.join(short)}: need the last {m.bars_needed} bars, the last {m.window} of them "
                f"without a gap longer than {m.max_gap_minutes} minutes",
            )
        if not parts:
            raise ForecastInputError("malformed", "no bars")
        return concat(parts)

    def half_width(self, w: Windows) -> np.ndarray:
        """Half width of each window's interval in log-return units (conformal q × window volatility)."""
        return self.meta.interval_q * w.volatility

    def forecast(self, series: Mapping[str, SeriesArrays], latest_only: bool = True) -> list[dict[str, Any]]:
        """Forecast rows for the latest bar of each symbol (or for every window).

        A live forecast (``latest_only``) whose target would fall after its exchange session's
        close says so (``session_closed``, ``next_open``) and forecasts no change: the model was
        only ever trained and evaluated on next bars inside a session.
        """
        w = self.windows(series, latest_only)
        ret = self.forward(w.x).astype(np.float64)
        half = self.half_width(w)
        rows = []
        for i in range(len(w)):
            as_of, last = int(w.as_of[i]), float(w.last_close[i])
            r, target, closed, next_open = float(ret[i]), as_of + self.meta.horizon * 60, False, None
            if latest_only:
                nxt = sessions.next_bar(str(w.symbol[i]), as_of, self.meta.horizon)
                target, closed, next_open = nxt.target_ts, nxt.session_closed, nxt.next_open
            if closed:
                r, low, high = 0.0, None, None
            elif np.isfinite(half[i]):
                low, high = last * float(np.exp(r - half[i])), last * float(np.exp(r + half[i]))
            else:
                low = high = None
            rows.append(
                {
                    "symbol": str(w.symbol[i]),
                    "as_of": as_of,
                    "target_ts": target,
                    "predicted_close": last * float(np.exp(r)),
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


def _validated(symbol: str, ts: np.ndarray, ohlcv: tuple[np.ndarray, ...]) -> SeriesArrays:
    """One symbol's bars sorted by time, a repeated time kept once (the later row), minutes floored; checked."""
    if len(ts) and (ts.min() < MIN_TS or ts.max() >= MAX_TS):
        raise ForecastInputError("malformed", f"{symbol}: bar times must lie between 2000-01-01 and 2100-01-01")
    order = np.argsort(ts, kind="stable")
    ts, ohlcv = ts[order], tuple(x[order] for x in ohlcv)
    last = np.concatenate([ts[1:] != ts[:-1], [True]])  # a repeated minute: the later row wins
    ts, ohlcv = ts[last], tuple(x[last] for x in ohlcv)
    o, h, lo, c, v = ohlcv
    ok = (
        np.isfinite(np.stack([o, h, lo, c, v])).all()
        and (lo > 0).all()
        and (h <= MAX_PRICE).all()
        and ((v >= 0) & (v <= MAX_VOLUME)).all()
    )
    if not ok or (lo > np.minimum(o, c)).any() or (np.maximum(o, c) > h).any():
        raise ForecastInputError(
            "malformed",
            f"{symbol}: bars must have finite prices in (0, {MAX_PRICE:g}], low <= open/close <= high, "
            f"volume in [0, {MAX_VOLUME:g}]",
        )
    return ts - ts % 60, ohlcv


def series_from_records(records: Sequence[Mapping[str, Any]]) -> dict[str, SeriesArrays]:
    """Group JSON bar records by symbol into validated arrays (the scoring fast path)."""
    try:
        symbols = np.array([str(r["symbol"]).upper() for r in records])
        ts = np.fromiter((_ts_seconds(r["ts"]) for r in records), dtype=np.int64, count=len(records))
        values = np.array(
            [(r["open"], r["high"], r["low"], r["close"], r["volume"]) for r in records], dtype=np.float64
        )
    except ForecastInputError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:  # OverflowError: ints past float64
        raise ForecastInputError(
            "malformed", f"each bar needs symbol, ts, open, high, low, close, volume: {exc}"
        ) from None
    if values.shape != (len(records), 5):  # a value that is itself a list would add a dimension
        raise ForecastInputError("malformed", "open, high, low, close and volume must be numbers")
    out = {}
    for symbol in sorted(set(symbols.tolist())):
        mask = symbols == symbol
        out[symbol] = _validated(symbol, ts[mask], tuple(values[mask, k] for k in range(5)))
    return out


def series_from_frame(bars: pd.DataFrame) -> dict[str, SeriesArrays]:
    """Group a bar DataFrame by symbol into validated arrays."""
    missing = [c for c in INPUT_COLUMNS if c not in bars.columns]
    if missing:
        raise ForecastInputError("malformed", f"missing columns: {missing}")
    ts = epoch_seconds(bars["ts"])
    symbols = bars["symbol"].astype(str).str.upper().to_numpy()
    values = [bars[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")]
    out = {}
    for symbol in sorted(set(symbols)):
        mask = symbols == symbol
        out[symbol] = _validated(symbol, ts[mask], tuple(v[mask] for v in values))
    return out


class ForecasterModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: ``predict(bars_df, params={"mode": "latest"|"all"})``."""

    def load_context(self, context: Any) -> None:
        """Load the Keras model and settings from the model's artifacts."""
        self.forecaster = Forecaster.load(context.artifacts["forecaster"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Forecast the next close of every symbol in ``model_input``."""
        mode = (params or {}).get("mode", "latest")
        return self.forecaster.predict_frame(model_input, latest_only=mode != "all")
