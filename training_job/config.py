"""Every option of the training job, with its default, in one place."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``python -m training_job.train``; the CLI is generated from these fields."""

    bars: Path = Path("bars")
    model_name: str = "stockcast-lstm-attention"
    experiment: str = "stockcast"
    epochs: int = 25
    window: int = 30
    horizon: int = 1
    units: int = 32
    ar_lags: int = 10
    seeds: int = 3
    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 42
    max_gap_minutes: int = 5
    validation_fraction: float = 0.15
    calibration_fraction: float = 0.1
    decision_fraction: float = 0.2
    alpha: float = 0.05
    interval_level: float = 0.9
    patience: int = 4
    min_windows_per_symbol: int = 200
    # what one tick trains on: the timer picks the mode (warm most ticks, full on a slower schedule)
    mode: str = "warm"
    history_days: int = 10
    full_history_days: int = 20
    max_train_windows: int = 20_000
    warm_epochs: int = 5
    summary_out: Path | None = None


_HELP = {
    "bars": "folder read recursively for Parquet bars (an Azure ML mount or a local folder)",
    "epochs": "maximum epochs; early stopping on the validation slice usually ends sooner",
    "window": "bars of history per input window",
    "horizon": "minutes ahead to forecast",
    "max_gap_minutes": "longest gap (overnight, halts) a window may not span",
    "validation_fraction": "share of time, before calibration, for early stopping and the shrinkage",
    "calibration_fraction": "share of time between validation and decision that calibrates the intervals only",
    "decision_fraction": "newest share of time kept unseen for the promotion decision",
    "ar_lags": "recent 1-minute log returns fed to the linear autoregressive skip path",
    "seeds": "members trained from consecutive seeds and averaged",
    "alpha": "level of the one-sided Diebold-Mariano tests that promote (and demote) a champion",
    "interval_level": "nominal coverage of the split-conformal forecast interval, in each volatility tercile",
    "mode": "warm: the last --history-days, starting from the champion's weights where its architecture matches and "
    "its weights never saw this decision slice; full: from scratch on the last --full-history-days",
    "history_days": "trading days (weekdays, UTC) of bars a warm tick reads, the newest bar's day included; 0: all",
    "full_history_days": "trading days (weekdays, UTC) of bars a full retrain reads; 0: all",
    "max_train_windows": "most training windows a tick fits on, sampled evenly across symbols and time "
    "(validation is sampled in the same proportion; the decision slice never); 0: no cap",
    "warm_epochs": "maximum epochs of a warm start (early stopping as usual)",
    "summary_out": "write the decision summary as JSON here",
}
MODES = ("warm", "full")
_CHOICES = {"mode": MODES}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Build the config from command-line options (each field is ``--field-name``)."""
    parser = argparse.ArgumentParser(prog="python -m training_job.train", description="Train, evaluate, register.")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = {int: int, float: float}.get(type(default), Path if f.name in ("bars", "summary_out") else str)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=default,
            required=f.name == "bars",
            choices=_CHOICES.get(f.name),
            help=f"{_HELP.get(f.name, f.name.replace('_', ' '))} (default: {default})",
        )
    return TrainConfig(**vars(parser.parse_args(argv)))
