"""What a tick tells Application Insights about the models, read from the registry's version tags.

The training job records its decision and figures as tags of the version it registers
(``training_job/train.py``); the Function App reads them through the backend's registry reader,
so it needs neither the job's code nor MLflow in Azure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from functions import telemetry
from functions.train_trigger.ports import Models, ModelSnapshot

log = logging.getLogger(__name__)

# version tags written by training_job/train.py
DECISION = "decision"
REASON = "reason"
MODEL_RMSE = "decision_rmse"
CHAMPION_RMSE = "champion_rmse"
PERSISTENCE_RMSE = "persistence_rmse"
SIGNIFICANCE = ("p_vs_persistence", "p_vs_champion", "n_decision")  # the gate's figures


def _figure(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


class ModelReport:
    """Per tick: the champion's decision-slice RMSE (gauge) and, once, the newest version's decision."""

    def __init__(self) -> None:
        self.last_decision: str | None = None  # the version whose decision this process logged

    def __call__(self, models: Models, tick_id: str) -> ModelSnapshot:
        """Read the registry and record; returns what it read."""
        snapshot = models.snapshot()
        champion = snapshot.champion
        if champion is not None:
            telemetry.model_rmse(
                champion.version, _figure(champion.tags, MODEL_RMSE), _figure(champion.tags, PERSISTENCE_RMSE)
            )
        newest = snapshot.newest
        # a decision is logged once per version and process, not every 15 minutes; a new instance
        # logs it once more, so the workbook keeps the latest record per version
        if newest is not None and DECISION in newest.tags and newest.version != self.last_decision:
            telemetry.training_decision(
                tick_id,
                newest.version,
                newest.tags[DECISION],
                newest.tags.get(REASON, ""),
                _figure(newest.tags, MODEL_RMSE),
                _figure(newest.tags, CHAMPION_RMSE),
                _figure(newest.tags, PERSISTENCE_RMSE),
                {key: _figure(newest.tags, key) for key in SIGNIFICANCE},
            )
            self.last_decision = newest.version
        log.info(
            "tick=%s champion=%s newest=%s",
            tick_id,
            champion.version if champion else None,
            newest.version if newest else None,
        )
        return snapshot


report_models = ModelReport()
