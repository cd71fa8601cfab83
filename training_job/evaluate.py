"""Chronological splits, honest error metrics, the Diebold–Mariano gate and conformal intervals.

Every predictor is judged on per-window squared log-return errors on the newest, unseen slice.
A challenger takes ``champion`` only when a one-sided Diebold–Mariano test (Harvey–Leybourne–
Newbold small-sample correction, Newey–West long-run variance) says it is better at level α;
there is no tolerance anywhere, so "no change" (persistence) is what a model has to beat.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from training_job.features import Windows

PROMOTED = "promoted"
RETAINED = "retained"
POWER = 0.8  # the power at which the smallest detectable improvement is reported


@dataclass(frozen=True)
class Split:
    """Row indices of the three slices, and the times that separate them."""

    train: np.ndarray
    validation: np.ndarray
    decision: np.ndarray
    validation_start: int
    decision_start: int


def chronological_split(w: Windows, validation_fraction: float, decision_fraction: float) -> Split:
    """Split by time, newest last.

    A window belongs to a slice only if every bar it reads, its target included, lies inside
    that slice, so no decision window overlaps a training one.
    """
    times = np.unique(np.concatenate([w.start, w.target_ts]))
    decision_start = int(times[int(len(times) * (1 - decision_fraction))])
    validation_start = int(times[int(len(times) * (1 - decision_fraction - validation_fraction))])
    train = np.flatnonzero(w.target_ts < validation_start)
    validation = np.flatnonzero((w.start >= validation_start) & (w.target_ts < decision_start))
    decision = np.flatnonzero(w.start >= decision_start)
    return Split(train, validation, decision, validation_start, decision_start)


def metrics(
    predicted_return: np.ndarray, actual_return: np.ndarray, last_close: np.ndarray, persistence: bool = False
) -> dict[str, float | None]:
    """RMSE/MAE of the predicted close (price units), log-return RMSE, and direction over moved bars.

    Directional accuracy counts only bars whose close moved; persistence never predicts a move,
    so its directional accuracy is ``None`` rather than a misleading number.
    """
    predicted_close = last_close * np.exp(predicted_return)
    actual_close = last_close * np.exp(actual_return)
    err = predicted_close - actual_close
    moved = actual_return != 0
    direction = None
    if not persistence and moved.any():
        direction = float(np.mean(np.sign(predicted_return[moved]) == np.sign(actual_return[moved])))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "log_rmse": float(np.sqrt(np.mean((predicted_return - actual_return) ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "directional_accuracy": direction,
    }


@dataclass(frozen=True)
class DMTest:
    """One-sided Diebold–Mariano test that ``candidate`` has lower expected loss than ``incumbent``.

    ``loss_ratio`` is the candidate's mean loss over the incumbent's (< 1 is better);
    ``min_detectable_ratio`` is the log-RMSE ratio the test would detect with 80 % power at α.
    """

    n: int
    dm_stat: float | None
    p_value: float | None
    loss_ratio: float | None
    min_detectable_ratio: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        """The figures as plain JSON values."""
        return asdict(self)


def newey_west_variance(d: np.ndarray, lag: int) -> float:
    """Long-run variance of ``d`` with Bartlett weights up to ``lag`` autocovariances."""
    centred = d - d.mean()
    n = len(d)
    lrv = float(centred @ centred) / n
    for k in range(1, min(lag, n - 1) + 1):
        lrv += 2.0 * (1.0 - k / (lag + 1)) * float(centred[k:] @ centred[:-k]) / n
    return lrv


def cube_root_floor(n: int) -> int:
    """⌊n^{1/3}⌋ exactly (n ** (1/3) is 9.999… for n = 1000)."""
    lag = round(n ** (1.0 / 3.0))
    while lag**3 > n:
        lag -= 1
    while (lag + 1) ** 3 <= n:
        lag += 1
    return lag


def diebold_mariano(
    candidate_loss: np.ndarray, incumbent_loss: np.ndarray, horizon: int = 1, alpha: float = 0.05
) -> DMTest:
    """H0: equal expected loss; H1: the candidate's expected loss is lower.

    d_t = incumbent − candidate; DM = d̄ / √(LRV/n) with Newey–West LRV at lag ⌊n^{1/3}⌋, times the
    Harvey–Leybourne–Newbold factor √((n + 1 − 2h + h(h−1)/n)/n), against Student t with n − 1 df.
    """
    d = np.asarray(incumbent_loss, dtype=np.float64) - np.asarray(candidate_loss, dtype=np.float64)
    n = len(d)
    incumbent_mean = float(np.mean(incumbent_loss)) if n else 0.0
    ratio = float(np.mean(candidate_loss)) / incumbent_mean if n and incumbent_mean > 0 else None
    if n < 3:
        return DMTest(n, None, None, ratio, None)
    lrv = newey_west_variance(d, cube_root_floor(n))
    hln = math.sqrt(max(n + 1 - 2 * horizon + horizon * (horizon - 1) / n, 1.0) / n)
    if lrv <= 0:  # identical losses everywhere: nothing to tell them apart
        return DMTest(n, 0.0, 0.5 if d.mean() == 0 else (0.0 if d.mean() > 0 else 1.0), ratio, None)
    se = math.sqrt(lrv / n)
    stat = float(d.mean() / se * hln)
    p_value = float(stats.t.sf(stat, df=n - 1))
    detectable = None
    if incumbent_mean > 0:
        # the mean loss reduction a one-sided test at α finds with POWER, as a log-RMSE ratio
        delta = (stats.t.ppf(1 - alpha, n - 1) + stats.t.ppf(POWER, n - 1)) * se / hln
        detectable = math.sqrt(max(1.0 - delta / incumbent_mean, 0.0))
    return DMTest(n, stat, p_value, ratio, detectable)


def better(test: DMTest, alpha: float) -> bool:
    """The candidate is significantly better: lower mean loss and p < α (no tolerance)."""
    return test.p_value is not None and test.loss_ratio is not None and test.loss_ratio < 1 and test.p_value < alpha


@dataclass(frozen=True)
class Decision:
    """What the gate decided, and every test it ran."""

    decision: str  # promoted | retained
    demoted: bool  # the champion was moved back to persistence
    reason: str
    vs_champion: DMTest | None
    vs_persistence: DMTest
    champion_vs_persistence: DMTest | None


def gate(
    challenger_loss: np.ndarray,
    persistence_loss: np.ndarray,
    champion_loss: np.ndarray | None,
    champion_is_persistence: bool,
    alpha: float,
    horizon: int = 1,
) -> Decision:
    """Apply the promotion rule to per-window squared log-return errors on the decision slice.

    1. A champion that is not persistence is re-tested against persistence on the new slice and
       demoted when significantly worse.
    2. The challenger is promoted only when significantly better (p < α) than the champion that
       stands after step 1 and than persistence; equal or merely lower loss is not enough.
    """
    vs_persistence = diebold_mariano(challenger_loss, persistence_loss, horizon, alpha)
    champion_vs_persistence = None
    vs_champion = None
    demoted = False
    notes = []
    if champion_loss is None or champion_is_persistence:
        incumbent = "persistence"
        vs_champion = vs_persistence
    else:
        # one-sided the other way round: is the champion worse than persistence?
        champion_vs_persistence = diebold_mariano(persistence_loss, champion_loss, horizon, alpha)
        if better(champion_vs_persistence, alpha):
            demoted = True
            incumbent = "persistence"
            notes.append(
                f"champion demoted: worse than persistence (p={champion_vs_persistence.p_value:.3g}, "
                f"n={champion_vs_persistence.n})"
            )
            vs_champion = diebold_mariano(challenger_loss, champion_loss, horizon, alpha)
        else:
            incumbent = "champion"
            vs_champion = diebold_mariano(challenger_loss, champion_loss, horizon, alpha)
    wins_persistence = better(vs_persistence, alpha)
    wins_champion = wins_persistence if incumbent == "persistence" else better(vs_champion, alpha)
    if wins_persistence and wins_champion:
        decision = PROMOTED
        notes.insert(0, _verdict("beats", incumbent, vs_champion if incumbent == "champion" else vs_persistence))
        if incumbent == "champion":
            notes.append(_verdict("beats", "persistence", vs_persistence))
    else:
        decision = RETAINED
        loser = vs_persistence if not wins_persistence else vs_champion
        against = "persistence" if not wins_persistence else "the champion"
        notes.insert(0, _verdict("does not significantly beat", against, loser, alpha))
    return Decision(decision, demoted, "; ".join(notes), vs_champion, vs_persistence, champion_vs_persistence)


def _verdict(verb: str, who: str, test: DMTest, alpha: float | None = None) -> str:
    ratio = "n/a" if test.loss_ratio is None else f"{math.sqrt(test.loss_ratio):.4f}"
    p = "n/a" if test.p_value is None else f"{test.p_value:.3g}"
    need = f" (needs < {alpha:g} and ratio < 1)" if alpha is not None else ""
    return f"challenger {verb} {who}: log-RMSE ratio {ratio}, DM p={p}{need}, n={test.n}"


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ⌈(n+1)·level⌉-th smallest score (infinite if n is too small)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(scores)
    k = math.ceil((n + 1) * level)
    return float("inf") if n == 0 or k > n else float(scores[k - 1])


def coverage(predicted_return: np.ndarray, actual_return: np.ndarray, half_width: np.ndarray) -> float:
    """Share of actual returns inside predicted ± half width."""
    return float(np.mean(np.abs(actual_return - predicted_return) <= half_width))
