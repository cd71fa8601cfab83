"""One reconcile of the local rollout in a process of its own, for the tests that race or kill it.

``python -m tests.devhost.serving.rollout_worker HOME TRACKING_URI MODEL_NAME PORT TICK`` prints what the
reconcile returned and exits 0, or prints the error (``Type: message``) and exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from devhost.serving.local_rollout import LocalRollout
from functions.settings import Settings


def main(argv: Sequence[str]) -> int:
    """Reconcile once with the settings given; print the outcome."""
    home, uri, model, port, tick = argv
    settings = Settings(
        "bars",
        "bars",
        "$Default",
        "0 */5 * * * *",
        model_name=model,
        stockcast_home=home,
        mlflow_tracking_uri=uri,
        scoring_port=int(port),
        scoring_workers=1,
    )
    try:
        outcome, code = LocalRollout(settings).reconcile(tick), 0
    except Exception as exc:
        outcome, code = f"{type(exc).__name__}: {exc}", 1
    sys.stdout.write(outcome + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
