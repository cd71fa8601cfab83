"""Training time and decision-slice RMSE: Stockcast's configuration against the reference's.

Data: 5 symbols x 5 trading days of generated 1-minute bars, written by the ingest code. Both
configurations train the same LSTM-Attention on the same features and are scored on the same
newest, unseen decision slice. The reference configuration is the replaced system's: batch 16,
30 epochs, no early stopping, and a random (not chronological) train/validation split of the
windows before the decision slice. Prints the figures, then one JSON object as the last line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from devhost.feed import FeedConfig, write_bars
from training_job import evaluate
from training_job.config import TrainConfig
from training_job.features import Windows
from training_job.train import fit_model, prepare


def decision_rmse(model: object, dec: Windows) -> float:
    """RMSE of the predicted close on the decision slice."""
    predicted = dec.last_close * np.exp(model(dec.x, training=False).numpy().reshape(-1))  # type: ignore[operator]
    return evaluate.metrics(predicted, dec.target_close, dec.last_close)["rmse"]


def main() -> None:
    """Train both configurations on the same bars and print the figures."""
    cfg = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        write_bars(FeedConfig(days=5, seed=11), tmp)
        start = time.perf_counter()
        prepared = prepare(Path(tmp), cfg)
        bars, windows, split = prepared.bars, prepared.windows, prepared.split
        train, val, dec = prepared.train, prepared.validation, prepared.decision
        ours = fit_model(train, val, cfg)
        train_s = time.perf_counter() - start
        print(f"bars: {len(bars)}; windows train/validation/decision: {len(train)}/{len(val)}/{len(dec)}")
        print(
            f"stockcast: batch {cfg.batch_size}, best epoch {ours.best_epoch} of {len(ours.loss)} "
            f"(early stopping): {train_s:.1f}s"
        )

        start = time.perf_counter()
        pool = np.concatenate([split.train, split.validation])
        rng = np.random.default_rng(cfg.seed)
        shuffled = rng.permutation(pool)
        cut = int(len(shuffled) * 0.8)
        r_train, r_val = windows.take(shuffled[:cut]), windows.take(shuffled[cut:])
        reference_cfg = replace(cfg, batch_size=16, epochs=30, learning_rate=1e-3, patience=10**6)
        reference = fit_model(r_train, r_val, reference_cfg)
        reference_s = time.perf_counter() - start
        print(f"reference: batch 16, 30 epochs, random split: {reference_s:.1f}s")

        persistence = evaluate.metrics(dec.last_close, dec.target_close, dec.last_close)["rmse"]
        rmse, reference_rmse = decision_rmse(ours.model, dec), decision_rmse(reference.model, dec)
        print(
            f"decision-slice RMSE of predicted close: stockcast {rmse:.6f}, "
            f"reference {reference_rmse:.6f}, persistence {persistence:.6f}"
        )
        print(f"stockcast / persistence: {rmse / persistence:.4f} (tolerance {1 + cfg.baseline_tolerance:.2f})")
        print(
            json.dumps(
                {
                    "train_s": round(train_s, 2),
                    "reference_train_s": round(reference_s, 2),
                    "speedup": round(reference_s / train_s, 1),
                    "rmse": round(rmse, 6),
                    "reference_rmse": round(reference_rmse, 6),
                    "persistence_rmse": round(persistence, 6),
                }
            )
        )


if __name__ == "__main__":
    main()
