"""Forecast intervals per volatility tercile: coverage and Winkler score, Stockcast's against the reference.

Data: ``--bars`` (a folder of Parquet bars as ingest writes them, one such file, or a CSV file of
``ts, open, high, low, close, volume`` and ``symbol``, or ``--symbol``), else 5 symbols × 20 trading
days of generated 1-minute bars (devhost's feed). The windows are split as the training job splits
them: train, validation (early stopping, shrinkage), calibration, and the newest, unseen decision
slice. Forecasts: the model trained as the job trains it (``--model lstm``), or a ridge regression
on the last 10 returns (``--model ar``: seconds, the model's linear path), and persistence.

Stockcast: Mondrian split conformal (training_job/intervals.py): |error| / whole-window volatility,
one quantile per volatility tercile fixed on the calibration slice. Reference (the approach it
replaces): one split-conformal quantile of |error| / the last 10 bars' volatility, on the validation
slice that also stopped training and fit the shrinkage. Both are scored on the decision slice per
tercile of the window volatility served (known at forecast time), and the reference also by its own
10-bar volatility. Prints the figures, then one JSON object as the last line:
``{"level", "n", "coverage": {"low", "mid", "high"}, "winkler": {...}, "persistence": {...},
"reference": {...}, ...}`` (Winkler in log-return units).

    python benchmarks/intervals.py [--bars PATH] [--model lstm|ar] [--level 0.9]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from devhost.market.feed import FeedConfig, write_bars  # noqa: E402
from training_job import data, intervals  # noqa: E402
from training_job.config import TrainConfig  # noqa: E402
from training_job.features import FEATURES, VOL_FLOOR, Windows  # noqa: E402
from training_job.forecaster import Forecaster, ForecasterMeta  # noqa: E402
from training_job.model import ridge_ar, symbol_weights  # noqa: E402
from training_job.train import Prepared, fit_model, interval_scale, prepare_bars, with_interval  # noqa: E402

log = logging.getLogger("benchmarks.intervals")
TARGET_POINTS = 0.03  # every tercile within ±3 points of the level


def read_bars(path: Path, symbol: str | None) -> pd.DataFrame:
    """True bars from a Parquet folder or file, or a CSV file (columns as the bar table; ``symbol`` optional)."""
    if path.is_dir():
        return data.read_bars(path)
    if path.suffix == ".parquet":
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / path.name).symlink_to(path.resolve())
            return data.read_bars(Path(tmp))
    frame = pd.read_csv(path)
    frame.columns = [c.strip().lower() for c in frame.columns]
    frame = frame.rename(columns={c: "ts" for c in ("date", "datetime", "timestamp") if c in frame.columns})
    if "symbol" not in frame.columns:
        frame["symbol"] = (symbol or path.stem).upper()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.floor("min")
    frame = frame.dropna(subset=["open", "high", "low", "close"])
    frame["volume"] = frame["volume"].fillna(0).astype("int64")
    frame = frame.sort_values(["symbol", "ts"]).drop_duplicates(["symbol", "ts"], keep="last")
    return frame[["symbol", "ts", "open", "high", "low", "close", "volume"]].reset_index(drop=True)


def last_bars_volatility(w: Windows, bars: int = 10) -> np.ndarray:
    """The reference's scale: the same close-to-close/Parkinson blend over the window's last ``bars`` bars only."""
    ret = w.x[:, -bars:, FEATURES.index("ret_1")].astype(np.float64)
    rng = w.x[:, -bars:, FEATURES.index("range")].astype(np.float64)
    var = 0.5 * np.mean(ret**2, axis=1) + 0.5 * np.mean(rng**2, axis=1) / (4.0 * np.log(2.0))
    return np.maximum(np.sqrt(var), VOL_FLOOR)


def model_forecaster(prepared: Prepared, cfg: TrainConfig, kind: str) -> Forecaster:
    """The forecaster whose intervals are measured: the job's model, or its linear AR path alone."""
    meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes, interval_level=cfg.interval_level)
    if kind == "lstm":
        return Forecaster(fit_model(prepared.train, prepared.validation, cfg).model, meta)
    train = prepared.train
    lags = min(cfg.ar_lags, cfg.window)
    scale = float(np.std(train.y)) or 1.0
    coef, intercept = ridge_ar(train.x, train.y / scale, symbol_weights(train.symbol, train.y), lags, scale)

    class _Ridge(Forecaster):
        def forward(self, x: np.ndarray) -> np.ndarray:
            recent = x[:, -lags:, FEATURES.index("ret_1")].astype(np.float64) / scale
            return ((recent @ coef + intercept) * scale).astype(np.float32)

    return _Ridge(None, meta)


def tercile_figures(
    volatility: np.ndarray, y: np.ndarray, level: float, predicted: np.ndarray, half: np.ndarray
) -> dict[str, dict[str, float]]:
    """Coverage and Winkler score per volatility tercile and overall."""
    rows = intervals.by_volatility(volatility, y, level, (predicted, half), (predicted, half))
    out: dict[str, dict[str, float]] = {"coverage": {}, "winkler": {}}
    for row in rows:
        out["coverage"][str(row["tercile"])] = round(float(row["coverage"]), 4)
        out["winkler"][str(row["tercile"])] = float(f"{float(row['winkler']):.4g}")
    out["coverage"]["all"] = round(intervals.coverage(predicted, y, half), 4)
    out["winkler"]["all"] = float(f"{intervals.winkler(predicted, y, half, level):.4g}")
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=Path, help="Parquet folder or file, or a CSV file (default: generated bars)")
    parser.add_argument("--symbol", help="the symbol of a CSV file without a symbol column (default: its name)")
    parser.add_argument("--model", choices=("lstm", "ar"), default="lstm")
    parser.add_argument("--level", type=float, default=TrainConfig.interval_level)
    parser.add_argument("--days", type=int, default=20, help="trading days of generated bars without --bars")
    return parser.parse_args(argv)


def _load_bars(source: Path | None, symbol: str | None, days: int) -> pd.DataFrame:
    """The bars of ``source`` (see :func:`read_bars`), or ``days`` trading days of generated ones."""
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            write_bars(FeedConfig(days=days, seed=11), tmp)
            source = Path(tmp)
        return read_bars(source, symbol)


def _interval_figures(who: Forecaster, val: Windows, cal: Windows, dec: Windows, level: float) -> dict[str, Any]:
    """Both methods' quantiles and decision-slice figures for one forecaster; its meta gains Stockcast's interval."""
    y = dec.y.astype(np.float64)
    served = dec.volatility  # what the served interval is scaled by, known at forecast time
    scale = interval_scale(who, cal, level)
    predicted = who.forward(dec.x).astype(np.float64)
    who.meta = with_interval(who.meta, scale)
    half = who.half_width(dec)  # the function serving draws the interval with
    errors_val = np.abs(val.y.astype(np.float64) - who.forward(val.x).astype(np.float64))
    q_ref = intervals.conformal_quantile(errors_val / last_bars_volatility(val), level)
    half_ref = q_ref * last_bars_volatility(dec)
    return {
        "q": [round(q, 4) for q in scale.q],
        "edges": [float(f"{e:.4g}") for e in scale.edges],
        "figures": tercile_figures(served, y, level, predicted, half),
        "reference": tercile_figures(served, y, level, predicted, half_ref),
        "reference_own_terciles": tercile_figures(last_bars_volatility(dec), y, level, predicted, half_ref),
        "reference_q": round(q_ref, 4),
    }


def _print_results(results: dict[str, dict[str, Any]]) -> None:
    """One line per forecaster and method: coverage and Winkler score per tercile and overall."""
    for name, r in results.items():
        label = "model" if name == "stockcast" else name
        for method, key in (
            ("stockcast", "figures"),
            ("reference", "reference"),
            ("reference by its own 10-bar terciles", "reference_own_terciles"),
        ):
            cov, wink = r[key]["coverage"], r[key]["winkler"]
            print(
                f"{label:>11} {method:>37}: coverage low/mid/high "
                f"{cov['low']:.3f}/{cov['mid']:.3f}/{cov['high']:.3f} (all {cov['all']:.3f}); Winkler "
                f"{wink['low']:.4g}/{wink['mid']:.4g}/{wink['high']:.4g} (all {wink['all']:.4g})"
            )


def _json_figures(
    args: argparse.Namespace, level: float, n: int, n_calibration: int, results: dict[str, dict[str, Any]], within: bool
) -> dict[str, Any]:
    """The last line's JSON object: the model's figures, with persistence's and the reference's beside them."""
    ours = results["stockcast"]["figures"]
    return {
        "bars": str(args.bars) if args.bars else "generated",
        "model": args.model,
        "level": level,
        "n": n,
        "n_calibration": n_calibration,
        "coverage": ours["coverage"],
        "winkler": ours["winkler"],
        "q": results["stockcast"]["q"],
        "within_3_points": within,
        "persistence": results["persistence"]["figures"],
        "reference": results["stockcast"]["reference"],
        "reference_by_own_terciles": results["stockcast"]["reference_own_terciles"],
        "reference_persistence": results["persistence"]["reference"],
    }


def main(argv: list[str] | None = None) -> None:
    """Measure both interval methods for the model and persistence; print the figures and the JSON line."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = replace(TrainConfig(), interval_level=args.level)
    bars = _load_bars(args.bars, args.symbol, args.days)
    prepared = prepare_bars(bars, cfg)
    val, cal, dec = prepared.validation, prepared.calibration, prepared.decision
    missing = {s: d for s, d in prepared.without_target.items() if d["in_segment"] or d["at_gap"]}
    print(
        f"bars: {len(bars)} of {bars['symbol'].nunique()} symbols from {args.bars or 'the generated feed'}; "
        f"windows train/validation/calibration/decision: {len(prepared.train)}/{len(val)}/{len(cal)}/{len(dec)}; "
        f"dropped without a bar at the target minute: {missing}"
    )
    start = time.perf_counter()
    forecaster = model_forecaster(prepared, cfg, args.model)
    print(f"model: {args.model}, fitted in {time.perf_counter() - start:.1f}s")
    level = cfg.interval_level
    results = {
        name: _interval_figures(who, val, cal, dec, level)
        for name, who in (("stockcast", forecaster), ("persistence", Forecaster.persistence(forecaster.meta)))
    }
    _print_results(results)
    ours = results["stockcast"]["figures"]
    within = all(abs(ours["coverage"][t] - level) <= TARGET_POINTS for t in intervals.TERCILES)
    print(f"every tercile of the model's interval within ±{TARGET_POINTS:.0%} of {level:.0%}: {within}")
    print(json.dumps(_json_figures(args, level, len(dec), len(cal), results, within)))


if __name__ == "__main__":
    main()
