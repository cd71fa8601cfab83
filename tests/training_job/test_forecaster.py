"""The scoring fast path: records read in bulk as one by one, one window in TensorFlow Lite as in the graph."""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import orjson
import pytest
from keras import layers

from training_job import forecaster as forecaster_module
from training_job import model as model_module
from training_job import score
from training_job.forecaster import (
    LITE_CHECK_FILE,
    LITE_FILE,
    Forecaster,
    ForecasterMeta,
    ForecastInputError,
    _LiteWindow,
    probe_windows,
    series_from_records,
)
from training_job.model import build_member

T0 = 1_793_802_600  # 2026-11-04 14:30 UTC: a Wednesday's open in New York
ROOT = Path(__file__).resolve().parents[2]
META = ForecasterMeta(window=30, horizon=1, max_gap_minutes=5, interval_q=2.0)
NEED = META.bars_needed


def records(n: int = NEED, start: int = T0, symbol: str = "AAA", seed: int = 0) -> list[dict]:
    """``n`` one-minute bars of a seeded random walk from ``start``, as a client posts them (ISO times)."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, n)))
    open_ = np.concatenate([[50.0], close[:-1]])
    spread = 1.0 + np.abs(rng.normal(0.0, 1e-3, n))
    volume = rng.integers(100, 5_000, n)
    return [
        {
            "symbol": symbol,
            "ts": dt.datetime.fromtimestamp(start + 60 * i, dt.UTC).isoformat(),
            "open": float(open_[i]),
            "high": float(max(open_[i], close[i]) * spread[i]),
            "low": float(min(open_[i], close[i]) / spread[i]),
            "close": float(close[i]),
            "volume": int(volume[i]),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A two-member averaged model as training exports it, with a head that matters, saved as served."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = probe_windows(META, 64)
    members = [build_member(META.window, len(META.features), 8, 10, 1e-3, x, 1e-3, k) for k in range(2)]
    for member in members:  # the head starts at zero: give the LSTM path a say
        member.get_layer("head").set_weights([rng.normal(0.0, 0.5, (8, 1)).astype(np.float32), np.zeros(1, np.float32)])
    inputs = keras.Input(shape=(META.window, len(META.features)), name="features")
    mean = layers.Average()([member(inputs) for member in members])
    model = keras.Model(inputs, layers.Rescaling(1e-3 * 0.8)(mean))
    return Forecaster.save(model, META, tmp_path_factory.mktemp("forecaster"))


@pytest.fixture(scope="module")
def lite(saved):
    """The forecaster as the endpoint serves it: the flatbuffer saved with the model, on LiteRT alone."""
    return Forecaster.load(saved, lite=True)


@pytest.fixture(scope="module")
def converted(saved, tmp_path_factory):
    """Served from a model saved without a flatbuffer (an older one): converted to TensorFlow Lite at load."""
    folder = tmp_path_factory.mktemp("keras-only") / "forecaster"
    shutil.copytree(saved, folder, ignore=shutil.ignore_patterns(LITE_FILE, LITE_CHECK_FILE))
    return Forecaster.load(folder, lite=True)


@pytest.fixture(scope="module")
def xla(saved):
    """The forecaster as served before TensorFlow Lite: one window XLA-compiled."""
    return Forecaster.load(saved, lite=False)


@pytest.mark.slow
def test_served_forecasts_equal_the_xla_paths_within_1e_5(lite, xla):
    """Served from the saved flatbuffer (no Keras model), a forecast equals the XLA path's within 1e-5."""
    assert (lite.single_window, xla.single_window) == ("tflite", "xla")
    assert lite.model is None and xla.model is not None
    bars = records(NEED + 40)
    diffs, returns = [], []
    for end in range(NEED, NEED + 41):
        series = series_from_records(bars[end - NEED : end])
        [new], [old] = lite.forecast(series), xla.forecast(series)
        assert {k: v for k, v in new.items() if not isinstance(v, float)} == {
            k: v for k, v in old.items() if not isinstance(v, float)
        }
        for key in ("predicted_return", "predicted_close", "interval_low", "interval_high"):
            diffs.append(abs(new[key] - old[key]))
        returns.append(new["predicted_return"])
    assert max(diffs) <= 1e-5
    assert np.std(returns) > 1e-6  # the model's returns vary from window to window: a real comparison


@pytest.mark.slow
def test_served_windows_agree_with_the_batched_graph_of_evaluation(lite, xla):
    """Several windows served from the flatbuffer (one at a time) give the batched graph's returns."""
    x = probe_windows(META, 32)
    batched = xla.forward(x)
    served = lite.forward(x)
    single = np.concatenate([lite.forward(x[i : i + 1]) for i in range(len(x))])
    assert batched.shape == served.shape == single.shape == (32,)
    assert np.max(np.abs(served - batched)) <= 1e-6 and np.array_equal(served, single)
    assert np.max(np.abs(batched - xla.model.predict(x, verbose=0).reshape(-1))) <= 1e-6


@pytest.mark.slow
def test_many_windows_are_scored_in_slices_with_the_same_returns(xla, monkeypatch):
    """Windows beyond FORWARD_BATCH are scored slice by slice, each return as the one-call graph gives it."""
    x = probe_windows(META, 32)
    whole = xla.forward(x)
    monkeypatch.setattr(forecaster_module, "FORWARD_BATCH", 5)
    sliced = xla.forward(x)
    assert sliced.shape == (32,) and np.max(np.abs(sliced - whole)) <= 1e-6


@pytest.mark.slow
def test_save_keeps_the_flatbuffer_and_the_graph_returns_it_was_checked_against(saved, xla):
    """Beside the Keras file, save writes the one-window flatbuffer and the graph's returns on the probe windows."""
    recorded = np.array(orjson.loads((saved / LITE_CHECK_FILE).read_bytes())["returns"])
    assert (saved / LITE_FILE).read_bytes()[4:8] == b"TFL3"  # the TensorFlow Lite flatbuffer identifier
    assert recorded.shape == (8,) and np.std(recorded) > 1e-6
    assert np.max(np.abs(recorded - xla.forward(probe_windows(META)))) <= 1e-6


@pytest.mark.slow
def test_loading_an_averaged_model_warns_nothing_of_its_members_optimizers(saved: Path) -> None:
    """The members' training optimizers are saved with them; loading to serve (compile=False) says nothing of them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = Forecaster.load(saved, lite=False)
    assert [str(w.message) for w in caught if "optimizer" in str(w.message)] == []
    assert served.model is not None and served.single_window == "xla"


@pytest.mark.slow
def test_an_older_model_converts_at_load_and_keeps_its_keras_loops(converted, lite):
    """Without a saved flatbuffer, serving converts at load; only the trace unrolls, Keras keeps its loops."""
    assert converted.single_window == "tflite" and converted.model is not None
    rnns = [layer for layer in model_module._all_layers(converted.model) if isinstance(layer, layers.RNN)]
    assert len(rnns) == 2
    assert [layer.unroll for layer in rnns] == [False, False]
    x = probe_windows(META, 4)[:1]
    assert abs(float(converted.forward(x)[0]) - float(lite.forward(x)[0])) <= 1e-6


@pytest.mark.slow
def test_a_model_that_does_not_convert_is_saved_without_a_flatbuffer_and_served_xla_compiled(
    xla, lite, tmp_path, monkeypatch, caplog
):
    """A converter failure at training is logged, the model is saved without a flatbuffer and served XLA-compiled."""

    def broken(*args: object) -> bytes:
        raise RuntimeError("no converter here")

    monkeypatch.setattr(model_module, "single_window_tflite", broken)
    with caplog.at_level(logging.WARNING, logger="training_job.forecaster"):
        folder = Forecaster.save(xla.model, META, tmp_path / "forecaster")
        fallback = Forecaster.load(folder, lite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["forecaster.json", "model.keras"]
    assert "saved without TensorFlow Lite: conversion failed: no converter here" in caplog.text
    assert fallback.single_window == "xla"
    assert "TensorFlow Lite conversion failed: no converter here" in caplog.text
    assert fallback.use_lite() == "xla"  # what score.init calls next: no second conversion
    assert caplog.text.count("TensorFlow Lite conversion failed: no converter here") == 1
    x = probe_windows(META, 4)[:1]
    assert abs(float(fallback.forward(x)[0]) - float(lite.forward(x)[0])) <= 1e-6


@pytest.mark.slow
def test_a_converted_model_with_other_outputs_is_not_served(saved, monkeypatch, caplog):
    """Both checks compare TensorFlow Lite with the graph: the saved flatbuffer is refused, then the conversion."""
    monkeypatch.setattr(_LiteWindow, "__call__", lambda self, x: np.array([0.01], dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="training_job.forecaster"):
        fallback = Forecaster.load(saved, lite=True)
    assert fallback.single_window == "xla" and fallback.model is not None
    assert "the saved TensorFlow Lite model is not served (it differs from the graph by up to" in caplog.text
    assert "TensorFlow Lite conversion failed: it differs from the graph by up to" in caplog.text


def _altered_returns(folder: Path) -> None:
    returns = orjson.loads((folder / LITE_CHECK_FILE).read_bytes())["returns"]
    (folder / LITE_CHECK_FILE).write_bytes(orjson.dumps({"returns": [r + 1e-3 for r in returns]}))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(_altered_returns, "it differs from the graph by up to 0.001", id="other-recorded-returns"),
        pytest.param(lambda f: (f / LITE_CHECK_FILE).unlink(), "[Errno 2] No such file", id="no-recorded-returns"),
        pytest.param(lambda f: (f / LITE_FILE).write_bytes(b"not a flatbuffer"), "", id="not-a-flatbuffer"),
    ],
)
def test_a_saved_flatbuffer_that_does_not_check_out_is_refused_with_its_reason(saved, tmp_path, damage, reason, caplog):
    """A flatbuffer or recorded returns that disagree are refused (logged), so serving loads the Keras model."""
    folder = tmp_path / "forecaster"
    shutil.copytree(saved, folder)
    assert Forecaster._saved_lite(folder, META) is not None  # the copy as saved checks out
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="training_job.forecaster"):
        assert Forecaster._saved_lite(folder, META) is None
    assert f"the saved TensorFlow Lite model is not served ({reason}" in caplog.text


@pytest.mark.slow
def test_refused_recorded_returns_serve_the_keras_model_converted_at_load(saved, xla, tmp_path, caplog):
    """Where the saved flatbuffer is refused, the Keras model loads and converts as before, with the same returns."""
    folder = tmp_path / "forecaster"
    shutil.copytree(saved, folder)
    _altered_returns(folder)
    with caplog.at_level(logging.WARNING, logger="training_job.forecaster"):
        served = Forecaster.load(folder, lite=True)
    assert served.model is not None and served.single_window == "tflite"
    assert "the saved TensorFlow Lite model is not served (it differs from the graph" in caplog.text
    x = probe_windows(META, 4)[:1]
    assert abs(float(served.forward(x)[0]) - float(xla.forward(x)[0])) <= 1e-6


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(lambda s: dt.datetime.fromtimestamp(s, dt.UTC).isoformat(), id="iso-offset"),
        pytest.param(lambda s: dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), id="iso-z"),
        pytest.param(lambda s: dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"), id="iso-naive"),
        pytest.param(
            lambda s: dt.datetime.fromtimestamp(s, dt.timezone(dt.timedelta(hours=-5))).isoformat(), id="iso-new-york"
        ),
        pytest.param(lambda s: s, id="int"),
        pytest.param(lambda s: s + 0.7, id="float"),
        pytest.param(lambda s: s if s % 120 else dt.datetime.fromtimestamp(s, dt.UTC).isoformat(), id="mixed"),
    ],
)
def test_every_time_format_reads_as_the_same_minutes(ts):
    """ISO 8601 (offset, Z, naive UTC, other zone), integer and float seconds, or a mix: the same minute times."""
    bars = records(12)
    series = series_from_records([{**bar, "ts": ts(T0 + 60 * i)} for i, bar in enumerate(bars)])
    times, (_, _, _, c, v) = series["AAA"]
    assert times.dtype == np.int64 and times.tolist() == [T0 + 60 * i for i in range(12)]
    assert c.tolist() == [bar["close"] for bar in bars] and v.tolist() == [float(bar["volume"]) for bar in bars]


def test_shuffled_and_repeated_bars_are_sorted_and_the_later_row_wins():
    """Bars out of order are sorted; a minute sent twice keeps the row sent later."""
    bars = records(10)
    again = {**bars[4], "close": bars[4]["close"] * 1.001, "high": bars[4]["high"] * 1.001}
    shuffled = [bars[i] for i in (9, 3, 0, 4, 7, 1, 8, 2, 6, 5)] + [again]
    times, (_, _, _, close, _) = series_from_records(shuffled)["AAA"]
    assert times.tolist() == [T0 + 60 * i for i in range(10)]
    assert close[4] == again["close"] and close[5] == bars[5]["close"]


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


@pytest.mark.parametrize(
    ("seconds", "kept"),
    [
        pytest.param([0, 30], 1, id="30-after-00"),
        pytest.param([30, 0], 0, id="30-before-00"),
        pytest.param([59, 1, 30], 0, id="59-of-three"),
        pytest.param([30, 30], 1, id="same-stamp-the-later-sent"),
        pytest.param([0, 0], 1, id="same-minute-start-the-later-sent"),
    ],
)
def test_a_minute_sent_several_times_keeps_the_bar_stamped_latest_in_it(seconds, kept):
    """Times are floored before repeats go: one row a minute, the bar stamped latest in it (a tie: the later sent)."""
    bars = records(10)
    minute = T0 + 5 * 60
    extra = [
        {**bars[5], "ts": _iso(minute + second), "open": 60.0 + k, "high": 60.0 + k, "low": 60.0 + k, "close": 60.0 + k}
        for k, second in enumerate(seconds)
    ]
    times, (_, _, _, close, _) = series_from_records(bars[:5] + extra + bars[6:])["AAA"]
    assert times.tolist() == [T0 + 60 * i for i in range(10)]
    assert close.tolist() == [bar["close"] for bar in bars[:5]] + [60.0 + kept] + [bar["close"] for bar in bars[6:]]


def test_a_minute_sent_twice_counts_once_towards_the_bars_needed():
    """NEED - 1 minutes, the last sent again at :30: still too few bars (not_enough_bars), not a forecast."""
    bars = records(NEED - 1)
    again = {**bars[-1], "ts": _iso(T0 + 60 * (NEED - 2) + 30)}
    with pytest.raises(ForecastInputError) as caught:
        Forecaster.persistence(META).forecast(series_from_records([*bars, again]))
    assert caught.value.code == "not_enough_bars"


def test_symbols_are_grouped_upper_cased_and_sorted():
    """Bars of several symbols are grouped per upper-cased symbol, in name order."""
    series = series_from_records(records(5, symbol="msft") + records(7, symbol="AAPL", seed=1))
    assert list(series) == ["AAPL", "MSFT"]
    assert [len(series[s][0]) for s in series] == [7, 5]


def _set(index: int | None, **fields: object):
    """A change to the bar at ``index`` (every bar when None)."""
    return lambda i, bar: {**bar, **fields} if index is None or i == index else bar


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda i, bar: {k: v for k, v in bar.items() if k != "ts"} if i == 3 else bar, "'ts'", id="no-ts"),
        pytest.param(lambda i, bar: "a bar" if i == 3 else bar, "each bar needs", id="not-an-object"),
        pytest.param(_set(3, ts="yesterday"), "Invalid isoformat string", id="ts-word"),
        pytest.param(_set(9, ts="9999-12-31T23:59:00+00:00"), "is not a time between 2000-01-01", id="ts-year-9999"),
        pytest.param(lambda i, bar: {**bar, "ts": 10**30 + i}, "is not a time between", id="ts-huge-int"),
        pytest.param(_set(None, ts=1e300), "is not a time between", id="ts-1e300"),
        pytest.param(lambda i, bar: {**bar, "ts": 1_793_629_800_000 + 60_000 * i}, "1793629800000", id="ts-ms"),
        pytest.param(_set(2, ts=float("nan")), "ts nan is not a time", id="ts-nan-among-strings"),
        pytest.param(lambda i, bar: {**bar, "ts": T0 + 60 * i if i != 2 else math.nan}, "nan", id="ts-nan-among-ints"),
        pytest.param(lambda i, bar: {**bar, "ts": 946_684_799.5 + 60 * i}, "946684799.5", id="ts-before-2000"),
        pytest.param(_set(None, ts=True), "ts must be a time", id="ts-bool"),
        pytest.param(_set(4, ts=None), "ts of type NoneType", id="ts-null"),
        pytest.param(_set(9, high=1e308), "finite prices", id="price-1e308"),
        pytest.param(_set(9, volume=10**19), "volume in [0", id="volume-1e19"),
        pytest.param(_set(9, volume=10**400), "int too large", id="volume-past-float"),
        pytest.param(_set(1, close="abc"), "could not convert", id="price-word"),
        pytest.param(_set(1, close=None), "finite prices", id="price-null"),
        pytest.param(_set(1, close=[1.0]), "each bar needs", id="price-list"),
        pytest.param(
            _set(None, open=[1.0], high=[1.0], low=[1.0], close=[1.0], volume=[1.0]), "must be numbers", id="all-lists"
        ),
        pytest.param(
            lambda i, bar: {**bar, "low": bar["high"] * 1.01} if i == 1 else bar, "low <=", id="low-above-high"
        ),
        pytest.param(_set(1, volume=-1), "volume in [0", id="volume-negative"),
    ],
)
def test_bad_bars_are_malformed_with_the_reason(change, message):
    """Every unusable bar makes the request malformed, whether it stops the bulk reader or the one-by-one one."""
    bad = [change(i, bar) for i, bar in enumerate(records(10))]
    with pytest.raises(ForecastInputError) as caught:
        series_from_records(bad)
    assert caught.value.code == "malformed"
    assert message in str(caught.value)


def test_no_bars_is_malformed():
    """An empty list of bars is malformed."""
    with pytest.raises(ForecastInputError) as caught:
        series_from_records([])
    assert (caught.value.code, str(caught.value)) == ("malformed", "no bars")


def test_too_few_bars_says_how_many_are_needed():
    """Fewer bars than a window and its warm-up: not_enough_bars, naming the count."""
    with pytest.raises(ForecastInputError) as caught:
        Forecaster.persistence(META).forecast(series_from_records(records(NEED - 1)))
    assert caught.value.code == "not_enough_bars"
    assert f"need the last {NEED} bars" in str(caught.value)


CLOSE = T0 + 390 * 60  # 21:00 UTC, the Wednesday's close; the next open is Thursday 14:30 UTC


def _hhmm(seconds: int, fmt: str = "%H:%M") -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime(fmt)


@pytest.mark.parametrize(
    ("ts", "have", "possible"),
    [
        # 12 bars from the open: NEED - 12 minutes more, the same day
        ([T0 + 60 * i for i in range(12)], 12, _hhmm(T0 + 60 * NEED)),
        # a gap of 10 minutes 5 bars before the end: the window needs 25 bars more after it
        (
            [T0 + 60 * i for i in range(NEED - 5)] + [T0 + 60 * (NEED + 5 + i) for i in range(5)],
            NEED - 25,
            _hhmm(T0 + 60 * (NEED + 5 + 4 + 25 + 1)),
        ),
        # the last 10 minutes of a session: the night breaks the run, so the window fills the next morning
        (
            [CLOSE - 600 + 60 * i for i in range(10)],
            10,
            _hhmm(T0 + 86_400 + 60 * (NEED - 10), "%Y-%m-%d %H:%M"),
        ),
    ],
    ids=["from-the-open", "after-a-gap", "at-the-close"],
)
def test_too_few_bars_says_how_many_are_usable_and_when_a_forecast_is_possible(
    ts: list[int], have: int, possible: str
) -> None:
    """The 422's message: usable bars of those needed, and the minute a forecast becomes possible, sessions minded."""
    bars = [{**record, "ts": _iso(t)} for record, t in zip(records(len(ts)), ts, strict=True)]
    with pytest.raises(ForecastInputError) as caught:
        Forecaster.persistence(META).forecast(series_from_records(bars))
    assert (caught.value.code, str(caught.value)) == (
        "not_enough_bars",
        f"AAA: {have} of {NEED} usable bars (need the last {NEED} bars, the last 30 of them without a gap longer "
        f"than 5 minutes); a forecast is possible from {possible} UTC at one bar a minute",
    )


def test_a_mid_session_forecast_has_its_interval_around_the_last_close():
    """Persistence mid-session: no change, target one minute on, interval last × exp(±q × volatility)."""
    forecaster = Forecaster.persistence(META)
    series = series_from_records(records())
    [row] = forecaster.forecast(series)
    half = 2.0 * float(forecaster.windows(series, True).volatility[0])
    last, as_of = series["AAA"][1][3][-1], T0 + 60 * (NEED - 1)
    assert (row["symbol"], row["as_of"], row["target_ts"]) == ("AAA", as_of, as_of + 60)
    assert (row["predicted_return"], row["predicted_close"]) == (0.0, last)
    assert row["interval_low"] == pytest.approx(last * math.exp(-half), rel=1e-12)
    assert row["interval_high"] == pytest.approx(last * math.exp(half), rel=1e-12)
    assert (row["session_closed"], row["next_open"]) == (False, None)


def test_the_sessions_last_minute_forecasts_no_change_and_the_next_open():
    """A window ending at 15:59 New York: session closed, no target, no interval, the next day's open."""
    start = T0 + (389 - (NEED - 1)) * 60  # the last bar starts at 20:59 UTC
    [row] = Forecaster.persistence(META).forecast(series_from_records(records(start=start)))
    assert (row["session_closed"], row["target_ts"], row["next_open"]) == (True, None, T0 + 86_400)
    assert (row["interval_low"], row["interval_high"], row["predicted_return"]) == (None, None, 0.0)


@pytest.mark.parametrize(
    ("horizon", "last_bar_minute", "target_minute", "next_open"),
    [
        pytest.param(1, 60, 61, None, id="h1-mid-session"),
        pytest.param(1, 388, 389, None, id="h1-last-but-one-bar"),
        pytest.param(1, 389, None, T0 + 86_400, id="h1-last-bar"),
        pytest.param(5, 60, 65, None, id="h5-mid-session"),
        pytest.param(5, 384, 389, None, id="h5-target-is-the-last-bar"),
        pytest.param(5, 385, None, T0 + 86_400, id="h5-target-at-the-close"),
    ],
)
def test_the_target_is_exactly_as_of_plus_the_horizon(horizon, last_bar_minute, target_minute, next_open):
    """target_ts = as_of + horizon × 60 s, the bar training targets; none where the session closes first."""
    meta = replace(META, horizon=horizon)
    start = T0 + (last_bar_minute - (NEED - 1)) * 60  # minutes after Wednesday's 09:30 New York open
    [row] = Forecaster.persistence(meta).forecast(series_from_records(records(start=start)))
    as_of = T0 + last_bar_minute * 60
    assert row["as_of"] == as_of
    assert row["target_ts"] == (None if target_minute is None else as_of + horizon * 60)
    assert target_minute is None or as_of + horizon * 60 == T0 + target_minute * 60  # the table's own arithmetic
    assert (row["session_closed"], row["next_open"]) == (target_minute is None, next_open)
    assert (row["interval_low"] is None) is (target_minute is None)


@pytest.mark.parametrize(
    ("edges", "expected_q"),
    [
        pytest.param((1.0, 2.0), 3.0, id="calm-bin"),  # volatility ~2e-3: below the first edge
        pytest.param((1e-4, 1.0), 2.0, id="mid-bin"),
        pytest.param((1e-5, 1e-4), 1.5, id="busy-bin"),
        pytest.param((), 2.5, id="one-bin"),
    ],
)
def test_a_served_interval_is_its_volatility_bins_quantile_times_the_windows_volatility(edges, expected_q):
    """Serving draws the interval with the calibrated bins: last × exp(±q_bin × volatility of the bars sent)."""
    meta = replace(META, interval_q=(3.0, 2.0, 1.5) if edges else 2.5, interval_edges=edges)
    forecaster = Forecaster.persistence(meta)
    series = series_from_records(records())
    [row] = forecaster.forecast(series)
    volatility = float(forecaster.windows(series, True).volatility[0])
    last = series["AAA"][1][3][-1]
    assert 1e-4 < volatility < 1.0
    assert row["interval_high"] == pytest.approx(last * math.exp(expected_q * volatility), rel=1e-12)
    assert row["interval_low"] == pytest.approx(last * math.exp(-expected_q * volatility), rel=1e-12)
    assert forecaster.half_width(forecaster.windows(series, True)).tolist() == [expected_q * volatility]


@pytest.mark.parametrize(
    ("saved", "q", "edges"),
    [
        pytest.param({"interval_q": [1.5, None, 2.5], "interval_edges": [0.001, 0.002]}, (1.5, math.inf, 2.5),
                     (0.001, 0.002), id="bins"),
        pytest.param({"interval_q": 1.7}, (1.7,), (), id="one-number"),  # saved before the bins
        pytest.param({"interval_q": None}, (math.inf,), (), id="never-calibrated"),
    ],
)  # fmt: skip
def test_the_interval_scale_survives_save_and_load(tmp_path, saved, q, edges):
    """Quantiles (infinite ones as JSON null) and edges load back; an older single quantile is one bin."""
    folder = Forecaster.save(None, replace(META, kind="persistence"), tmp_path / "f")
    stored = orjson.loads((folder / "forecaster.json").read_bytes())
    assert (stored["interval_q"], stored["interval_edges"]) == ([2.0], [])
    stored = {k: v for k, v in stored.items() if k != "interval_edges"} | saved
    (folder / "forecaster.json").write_bytes(orjson.dumps(stored))
    loaded = Forecaster.load(folder).meta
    assert (loaded.interval_q, loaded.interval_edges, loaded.interval.q) == (q, edges, q)
    Forecaster.save(None, loaded, tmp_path / "again")
    assert Forecaster.load(tmp_path / "again").meta == loaded


def test_score_answers_iso_times_and_the_interval_as_one_object(monkeypatch):
    """score.score: 200 with ISO times and {level, low, high}; too few bars 422; a bar without fields 400."""
    forecaster = Forecaster.persistence(META)
    state = {
        "forecaster": forecaster,
        "error": ForecastInputError,
        "series": series_from_records,
        "model": {"name": "m", "version": "1", "kind": "persistence"},
        "skill": None,
    }
    monkeypatch.setattr(score, "_state", state)
    bars = records()
    body, status = score.score({"bars": bars})
    [row] = body["forecasts"]
    assert status == 200 and body["model"] == state["model"] and body["skill"] is None
    assert (row["as_of"], row["target_ts"], row["next_open"]) == ("2026-11-04T15:39:00Z", "2026-11-04T15:40:00Z", None)
    assert row["predicted_close"] == bars[-1]["close"] and row["interval"]["level"] == 0.9
    assert row["interval"]["low"] < row["predicted_close"] < row["interval"]["high"]
    assert score.score({"bars": bars[:10]})[1] == 422
    assert score.score({"bars": [{"symbol": "A"}]}) == (
        {"error": {"code": "malformed", "message": "each bar needs symbol, ts, open, high, low, close, volume: 'ts'"}},
        400,
    )


def test_serving_persistence_never_imports_tensorflow(tmp_path):
    """A persistence champion loads and forecasts in a process that never imports TensorFlow."""
    folder = Forecaster.save(None, replace(META, kind="persistence"), tmp_path / "persistence")
    code = (
        "import sys\n"
        "from training_job.forecaster import Forecaster\n"
        f"f = Forecaster.load({str(folder)!r}, lite=True)\n"
        "print(f.meta.kind, f.single_window, f.use_lite(), 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["persistence", "none", "none", "False"], done.stderr[-2000:]


@pytest.mark.slow
def test_serving_a_saved_flatbuffer_never_imports_tensorflow(saved, xla):
    """The endpoint's load of a trained model runs its flatbuffer on LiteRT and never imports TensorFlow."""
    bars = records()
    code = (
        "import sys, orjson\n"
        "from training_job.forecaster import Forecaster, series_from_records\n"
        f"f = Forecaster.load({str(saved)!r}, lite=True)\n"
        "[row] = f.forecast(series_from_records(orjson.loads(sys.stdin.buffer.read())))\n"
        "print(f.single_window, 'tensorflow' in sys.modules, 'keras' in sys.modules, row['predicted_return'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=orjson.dumps(bars), capture_output=True, cwd=ROOT, timeout=120
    )
    runs, tensorflow, keras_imported, served = done.stdout.decode().split()
    assert (runs, tensorflow, keras_imported) == ("tflite", "False", "False"), done.stderr[-2000:]
    [expected] = xla.forecast(series_from_records(bars))
    assert abs(float(served) - expected["predicted_return"]) <= 1e-6
