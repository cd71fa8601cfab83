"""What the benchmarks share: a small trained model saved as the MLflow pyfunc the endpoint serves."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlflow.pyfunc  # noqa: E402

from training_job.config import TrainConfig  # noqa: E402
from training_job.forecaster import MODEL_CONFIG, Forecaster, ForecasterMeta, ForecasterModel  # noqa: E402
from training_job.model import FitResult  # noqa: E402
from training_job.train import fit_model, prepare  # noqa: E402


def train_small(bars_folder: Path, cfg: TrainConfig) -> FitResult:
    """Train on the bars under ``bars_folder`` with ``cfg`` (no MLflow run)."""
    prepared = prepare(bars_folder, cfg)
    return fit_model(prepared.train, prepared.validation, cfg)


def save_pyfunc(result: FitResult, cfg: TrainConfig, folder: Path) -> Path:
    """Save the model as the MLflow pyfunc that score.py loads; returns the model folder."""
    meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes)
    forecaster = Forecaster.save(result.model, meta, folder / "forecaster")
    model_dir = folder / "model"
    mlflow.pyfunc.save_model(
        model_dir,
        python_model=ForecasterModel(),
        artifacts={"forecaster": str(forecaster)},
        model_config=MODEL_CONFIG,
        code_paths=[str(ROOT / "training_job")],
        pip_requirements=["mlflow"],
    )
    return model_dir
