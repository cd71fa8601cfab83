"""Session fixtures for the training job: generated bars and a real MLflow on SQLite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pytest

from devhost.feed import FeedConfig, write_bars
from training_job.config import TrainConfig

TINY = dict(epochs=2, units=8, window=20, batch_size=128, min_windows_per_symbol=100, patience=2)


@dataclass
class Trained:
    """Two runs against one registry: a normal one and a deliberately crippled one."""

    home: Path
    tracking_uri: str
    config: TrainConfig
    first: dict
    second: dict


@pytest.fixture(scope="session")
def bars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trading days of bars for three symbols, written by the ingest code."""
    folder = tmp_path_factory.mktemp("bars")
    write_bars(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=2, seed=3), folder)
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, bars_dir: Path) -> Iterator[Trained]:
    """Train twice against one local MLflow: v1 promotes, crippled v2 must be retained."""
    from training_job.train import run

    home = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{home}/mlflow.db"
    cwd = Path.cwd()
    os.chdir(home)  # MLflow's default artifact root is relative to the working directory
    mlflow.set_tracking_uri(uri)
    try:
        cfg = TrainConfig(bars=bars_dir, experiment="tests", summary_out=home / "first.json", **TINY)
        first = run(cfg)
        crippled = replace(cfg, learning_rate=5.0, units=2, epochs=1, summary_out=home / "second.json")
        second = run(crippled)
        yield Trained(home, uri, cfg, first, second)
    finally:
        os.chdir(cwd)
