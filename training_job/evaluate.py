"""Chronological splits, honest error metrics, the Diebold–Mariano gate and conformal intervals.

Every predictor is judged on squared log-return errors on the newest, unseen slice, with no
tolerance anywhere, so "no change" (persistence) is what a model has to beat. The slice's one-sided
Diebold–Mariano tests (Harvey–Leybourne–Newbold small-sample correction, Newey–West long-run
variance) run on per-minute means across symbols. They decide the first decision, at level α/2;
every later one (:func:`decide`) bets the minutes no decision has used into e-processes that keep
the error rate however many ticks decide (docs/design.md, "Training and promotion").
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import signal, stats

from training_job.features import Windows
from training_job.intervals import conformal_quantile, coverage  # noqa: F401  (re-exported: the interval code's home)

PROMOTED = "promoted"
RETAINED = "retained"
POWER = 0.8  # the power at which the smallest detectable improvement is reported


@dataclass(frozen=True)
class Split:
    """Row indices of the slices, oldest first, and the times that separate them.

    Validation stops training early and fits the shrinkage; calibration (between validation and
    decision, possibly empty) calibrates the forecast intervals on windows no fit has seen.
    """

    train: np.ndarray
    validation: np.ndarray
    decision: np.ndarray
    validation_start: int
    decision_start: int
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    calibration_start: int = 0  # equals decision_start when there is no calibration slice


def chronological_split(
    w: Windows, validation_fraction: float, decision_fraction: float, calibration_fraction: float = 0.0
) -> Split:
    """Split by time into train, validation, calibration and decision, newest last.

    The fractions are shares of the times the windows cover. A window belongs to a slice only if
    every bar it reads, its target included, lies inside that slice, so no window of a later slice
    overlaps one of an earlier slice.
    """
    times = np.unique(np.concatenate([w.start, w.target_ts]))

    def boundary(newest_share: float) -> int:
        return int(times[min(int(len(times) * (1 - newest_share)), len(times) - 1)])

    decision_start = boundary(decision_fraction)
    calibration_start = boundary(decision_fraction + calibration_fraction)
    validation_start = boundary(decision_fraction + calibration_fraction + validation_fraction)
    train = np.flatnonzero(w.target_ts < validation_start)
    validation = np.flatnonzero((w.start >= validation_start) & (w.target_ts < calibration_start))
    calibration = np.flatnonzero((w.start >= calibration_start) & (w.target_ts < decision_start))
    decision = np.flatnonzero(w.start >= decision_start)
    return Split(train, validation, decision, validation_start, decision_start, calibration, calibration_start)


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


def per_minute_mean(values: np.ndarray, as_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct minutes of ``as_of``, ascending, and the mean of ``values`` over each minute's windows."""
    minutes, inverse = np.unique(np.asarray(as_of), return_inverse=True)
    sums = np.bincount(inverse, weights=np.asarray(values, dtype=np.float64), minlength=len(minutes))
    return minutes, sums / np.maximum(np.bincount(inverse, minlength=len(minutes)), 1)


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
    as_of: np.ndarray | None = None,
) -> Decision:
    """Apply the promotion rule to per-window squared log-return errors on the decision slice.

    1. A champion that is not persistence is re-tested against persistence on the new slice and
       demoted when significantly worse.
    2. The challenger is promoted only when significantly better (p < α) than the champion that
       stands after step 1 and than persistence; equal or merely lower loss is not enough.

    With ``as_of`` (each window's minute) every test runs on the per-minute mean loss across the
    symbols that have that minute: one observation per minute, so Newey–West sees the dependence
    over time and none is hidden across symbols of the same minute.
    """
    if as_of is not None:
        challenger_loss = per_minute_mean(challenger_loss, as_of)[1]
        persistence_loss = per_minute_mean(persistence_loss, as_of)[1]
        champion_loss = None if champion_loss is None else per_minute_mean(champion_loss, as_of)[1]
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


# ---- across ticks: evidence that accumulates over minutes no decision has used before ----

SELF = "self"  # a recorded champion that is the version carrying the record (its number comes later)
SOFTNESS = 8.0  # κ: squared errors up to about κ window variances count almost linearly
MAX_BET = 0.5  # the largest share of the wealth staked on one minute (outcomes lie in [-1, 1])
PRIOR_VARIANCE = 0.25  # the bets' prior guess of an outcome's variance, worth one minute
MEMORY = 390.0  # minutes: how fast the bets' estimates forget (one trading day)
FIRST_SHARE = 0.5  # of α: spent by the first decision's slice tests; the e-processes spend the rest


def bounded_differential(
    incumbent: np.ndarray, candidate: np.ndarray, actual: np.ndarray, variance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per window, how much closer the candidate's forecast came than the incumbent's, and a bound on it.

    ``D = (e_i² − e_c²) / (e_i² + e_c² + κ·v)`` with e the two errors and v the window's variance, known
    before the outcome. With δ the gap between the forecasts, ``|D| ≤ b = |δ| / √(δ² + 2κ·v) ≤ 1``, also
    known before the outcome. D is odd in the outcome's distance from the forecasts' midpoint, so when
    the outcome is symmetric and unimodal around a centre no nearer the candidate's forecast than the
    incumbent's (a random walk against persistence, whatever the candidate forecasts), E[D] ≤ 0.
    """
    incumbent_error = (np.asarray(actual, dtype=np.float64) - incumbent) ** 2
    candidate_error = (np.asarray(actual, dtype=np.float64) - candidate) ** 2
    softness = SOFTNESS * np.asarray(variance, dtype=np.float64)
    total = incumbent_error + candidate_error + softness
    d = np.divide(incumbent_error - candidate_error, total, out=np.zeros_like(total), where=total > 0)
    gap = np.asarray(candidate, dtype=np.float64) - incumbent
    reach = np.sqrt(gap**2 + 2.0 * softness)
    bound = np.divide(np.abs(gap), reach, out=np.zeros_like(reach), where=reach > 0)
    return d, bound


def minute_outcomes(
    incumbent: np.ndarray, candidate: np.ndarray, actual: np.ndarray, variance: np.ndarray, as_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The minutes, ascending, and one outcome per minute in [−1, 1]: mean D over mean bound of its windows.

    The bound is known before the outcome, so dividing by it keeps E ≤ 0 under the null while using the
    whole range a bet may take; one outcome per minute, so symbols that move together count once.
    A minute where the two forecasts agree everywhere has outcome 0.
    """
    d, bound = bounded_differential(incumbent, candidate, actual, variance)
    minutes, mean_d = per_minute_mean(d, as_of)
    mean_bound = per_minute_mean(bound, as_of)[1]
    outcome = np.divide(mean_d, mean_bound, out=np.zeros_like(mean_d), where=mean_bound > 0)
    return minutes, np.clip(outcome, -1.0, 1.0)


@dataclass(frozen=True)
class Bets:
    """A test supermartingale: the wealth of betting, minute by minute, that the candidate does better.

    Each minute stakes λ of the wealth on its outcome x ∈ [−1, 1] (wealth × (1 + λx)), λ chosen from the
    earlier minutes only (aGRAPA, Waudby-Smith & Ramdas 2024: λ = m / (s² + m²) with m and s² estimates
    of the outcomes' mean and variance, clipped to [0, MAX_BET]); the estimates forget with a memory of
    MEMORY minutes, so the bets follow a signal that starts late. Any such λ keeps the wealth a
    nonnegative supermartingale from 1 while no outcome has a positive mean given the past, so by
    Ville's inequality it ever reaches 1/α with probability at most α.
    """

    log_e: float = 0.0  # log of the wealth now
    peak: float = 0.0  # the highest log wealth reached
    n: int = 0  # minutes bet on
    mass: float = 0.0  # the discounted count of those minutes
    total: float = 0.0  # the discounted sum of their outcomes
    spread: float = 0.0  # the discounted sum of (outcome − the mean estimated before it)²

    @property
    def e_value(self) -> float:
        """The wealth now: the e-value of the evidence so far."""
        return math.exp(min(self.log_e, 700.0))

    def crossed(self, threshold: float) -> bool:
        """The wealth has reached ``threshold`` at some minute."""
        return self.peak >= math.log(threshold)

    def after(self, outcomes: np.ndarray) -> Bets:
        """The wealth after betting on ``outcomes``, in order."""
        x = np.asarray(outcomes, dtype=np.float64)
        if len(x) == 0:
            return self
        keep = 1.0 - 1.0 / MEMORY

        def before(values: np.ndarray, start: float) -> tuple[np.ndarray, float]:
            """The discounted sums before each value (s ← keep·s + value after it), and after the last."""
            sums = signal.lfilter([1.0], [1.0, -keep], values, zi=[keep * start])[0]
            return np.concatenate([[start], sums[:-1]]), float(sums[-1])

        mass, mass_after = before(np.ones(len(x)), self.mass)
        total, total_after = before(x, self.total)
        mean = total / (mass + 1.0)  # the prior: one minute with outcome 0
        residual = (x - mean) ** 2
        spread, spread_after = before(residual, self.spread)
        variance = (PRIOR_VARIANCE + spread) / (mass + 1.0)
        bet = np.clip(mean / (variance + mean**2), 0.0, MAX_BET)
        path = self.log_e + np.cumsum(np.log1p(bet * x))
        return Bets(
            float(path[-1]), max(self.peak, float(path.max())), self.n + len(x), mass_after, total_after, spread_after
        )


@dataclass(frozen=True)
class Evidence:
    """What the promotion rule carries from one tick to the next; the job records it as a version tag."""

    champion: str | None = None  # the champion this record is about; None: no decision recorded yet
    watermark: int | None = None  # the newest minute (epoch s) any decision has used
    since: int | None = None  # the first minute of the current record
    challengers: Bets = Bets()  # each tick's challenger against persistence, since the last promotion
    vs_champion: Bets = Bets()  # each tick's challenger against the trained champion, since its promotion
    champion_worse: Bets = Bets()  # the trained champion against persistence, since its promotion: worse?

    def to_tag(self) -> str:
        """The record as compact JSON (floats round-trip exactly)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str, carrier: str) -> Evidence:
        """The record read back from the tag of version ``carrier`` (``SELF`` means ``carrier``)."""
        raw = json.loads(text)
        bets = {key: Bets(**raw[key]) for key in ("challengers", "vs_champion", "champion_worse")}
        champion = carrier if raw["champion"] == SELF else raw["champion"]
        return cls(champion, raw["watermark"], raw["since"], **bets)


def fresh_windows(as_of: np.ndarray, watermark: int | None, horizon: int = 1) -> np.ndarray:
    """Which windows a decision may still use: minutes after ``watermark``, at least ``horizon`` minutes apart.

    A window's outcome is known ``horizon`` minutes after its forecast; spaced that far apart, every
    outcome bet on is known before the next bet is placed, and no minute is used twice.
    """
    as_of = np.asarray(as_of)
    step = 60 * horizon
    minutes = np.unique(as_of if watermark is None else as_of[as_of >= watermark + step])
    if horizon > 1 and len(minutes):
        keep, last = [], -math.inf
        for minute in minutes.tolist():
            if minute >= last + step:
                keep.append(minute)
                last = minute
        minutes = np.asarray(keep, dtype=minutes.dtype)
    return np.isin(as_of, minutes)


@dataclass(frozen=True)
class Verdict:
    """What the promotion rule decided at one tick, and the record to carry to the next."""

    decision: str  # promoted | retained
    demoted: bool  # the champion was moved back to persistence
    reason: str
    champion: str  # the champion after this tick; SELF: the challenger
    evidence: Evidence  # the record after this tick (started afresh where a role moved)
    reached: Evidence  # the record this tick's decision saw, before any fresh start
    minutes: int  # minutes this decision used
    slice_tests: Decision | None  # the first decision's Diebold–Mariano tests; None afterwards
    against_champion: bool = False  # a trained champion was scored, so it had records of its own

    def figures(self, alpha: float) -> dict[str, Any]:
        """The evidence as plain JSON values: e-values, minutes, thresholds, times."""
        r = self.reached
        trained = self.against_champion

        def bets(b: Bets) -> dict[str, float | int]:
            return {"e": b.e_value, "n": b.n}

        return {
            "first_decision": self.slice_tests is not None,
            "minutes": self.minutes,
            "since": utc_minute(r.since),
            "watermark": utc_minute(self.evidence.watermark),
            "threshold": promotion_threshold(alpha),
            "demotion_threshold": 1.0 / alpha,
            "e_value": min(r.challengers.e_value, r.vs_champion.e_value) if trained else r.challengers.e_value,
            "vs_persistence": bets(r.challengers),
            "vs_champion": bets(r.vs_champion) if trained else None,
            "champion_worse": bets(r.champion_worse) if trained else None,
        }


def promotion_threshold(alpha: float) -> float:
    """The e-value that promotes: 1 / (the share of α left to the e-processes)."""
    return 1.0 / (alpha * (1.0 - FIRST_SHARE))


def utc_minute(ts: int | None) -> str | None:
    """Epoch seconds as an ISO UTC time (None stays None)."""
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(
    evidence: Evidence,
    as_of: np.ndarray,
    actual: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    variance: np.ndarray,
    champion_version: str,
    champion_is_persistence: bool,
    persistence_version: str,
    alpha: float,
    horizon: int = 1,
) -> Verdict:
    """Decide one tick from its decision slice (predicted and actual returns per window) and the record so far.

    The first decision (no record yet) has only unused data: the slice tests of :func:`gate`, on per-minute
    means, at level α·FIRST_SHARE. Every later decision uses only minutes after the watermark and
    bets them into e-processes started at the champion's promotion: the champion is demoted when
    its record shows it worse than persistence (e ≥ 1/α), and the challenger is promoted when the
    challengers' record beats persistence, and a trained champion, with e ≥ 1/(α·(1 − FIRST_SHARE)).
    ``champion`` is None when a trained champion could not be scored: it is demoted.
    """
    as_of = np.asarray(as_of)
    actual = np.asarray(actual, dtype=np.float64)
    if evidence.champion is None:
        known = (champion_version, champion_is_persistence, persistence_version)
        return _first_decision(as_of, actual, challenger, champion, known, alpha, horizon)
    record = evidence
    if evidence.champion != champion_version:  # the record is about another champion: its own record starts now
        record = replace(evidence, champion=champion_version, vs_champion=Bets(), champion_worse=Bets())
    trained = None if champion_is_persistence else champion
    reached, minutes = _bet_fresh_minutes(record, as_of, actual, challenger, trained, variance, horizon)
    unscorable = not champion_is_persistence and champion is None
    demoted = unscorable or (not champion_is_persistence and reached.champion_worse.crossed(1.0 / alpha))
    promoted, reason = _promotion(
        reached, record.watermark, minutes, champion_is_persistence or demoted, demoted and not unscorable, alpha
    )
    scored = not champion_is_persistence and not unscorable
    if promoted:
        after = Evidence(SELF, reached.watermark)
        return Verdict(PROMOTED, demoted, reason, SELF, after, reached, minutes, None, scored)
    if demoted:
        after = replace(reached, champion=persistence_version, vs_champion=Bets(), champion_worse=Bets())
        return Verdict(RETAINED, True, reason, persistence_version, after, reached, minutes, None, scored)
    return Verdict(RETAINED, False, reason, champion_version, reached, reached, minutes, None, scored)


def _bet_fresh_minutes(
    record: Evidence,
    as_of: np.ndarray,
    actual: np.ndarray,
    challenger: np.ndarray,
    trained: np.ndarray | None,
    variance: np.ndarray,
    horizon: int,
) -> tuple[Evidence, int]:
    """The record after betting the minutes not used before, and how many minutes that was.

    ``trained`` is the trained champion's predictions, None when the champion is persistence or
    could not be scored: its own bets then stay as they were.
    """
    fresh = fresh_windows(as_of, record.watermark, horizon)
    a, y, v = as_of[fresh], actual[fresh], np.asarray(variance, dtype=np.float64)[fresh]
    mine = np.asarray(challenger, dtype=np.float64)[fresh]
    minutes, outcomes = minute_outcomes(np.zeros(len(y)), mine, y, v, a)
    challengers, vs_champion, worse = record.challengers.after(outcomes), record.vs_champion, record.champion_worse
    if trained is not None:
        theirs = np.asarray(trained, dtype=np.float64)[fresh]
        vs_champion = vs_champion.after(minute_outcomes(theirs, mine, y, v, a)[1])
        worse = worse.after(minute_outcomes(theirs, np.zeros(len(y)), y, v, a)[1])
    since = record.since if record.since is not None or not len(minutes) else int(minutes[0])
    watermark = int(minutes[-1]) if len(minutes) else record.watermark
    return Evidence(record.champion, watermark, since, challengers, vs_champion, worse), len(minutes)


def _promotion(
    reached: Evidence,
    watermark: int | None,
    minutes: int,
    against_persistence: bool,
    demoted_as_worse: bool,
    alpha: float,
) -> tuple[bool, str]:
    """Whether the record ``reached`` promotes the challenger, and the reason in words.

    ``watermark`` is the newest minute used before this tick; ``against_persistence``: the champion
    to beat is persistence (it is, or it was just demoted); ``demoted_as_worse``: a trained champion
    was just demoted on its own record, which the reason names last.
    """
    threshold = promotion_threshold(alpha)
    challengers, vs_champion, since = reached.challengers, reached.vs_champion, reached.since
    beats_persistence = challengers.crossed(threshold)
    beats_champion = against_persistence or vs_champion.crossed(threshold)
    if not minutes:
        notes = [f"no minute after {utc_minute(watermark)} yet: nothing new to decide on"]
    elif beats_persistence and beats_champion:
        notes = [f"challengers beat persistence ({_record(challengers, since)} ≥ {threshold:g})"]
        if not against_persistence:
            notes.append(f"and the champion ({_record(vs_champion, since)} ≥ {threshold:g})")
    elif not beats_persistence:
        notes = [f"challengers do not yet beat persistence ({_record(challengers, since)} < {threshold:g})"]
    else:
        notes = [f"challengers do not yet beat the champion ({_record(vs_champion, since)} < {threshold:g})"]
    if demoted_as_worse:
        worse = reached.champion_worse
        notes.append(f"champion demoted: worse than persistence ({_record(worse, since)} ≥ {1 / alpha:g})")
    return bool(minutes) and beats_persistence and beats_champion, "; ".join(notes)


def _first_decision(
    as_of: np.ndarray,
    actual: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    known: tuple[str, bool, str],
    alpha: float,
    horizon: int,
) -> Verdict:
    champion_version, champion_is_persistence, persistence_version = known
    level = alpha * FIRST_SHARE
    champion_loss = None if champion_is_persistence or champion is None else (champion - actual) ** 2
    tests = gate((challenger - actual) ** 2, actual**2, champion_loss, champion_is_persistence, level, horizon, as_of)
    demoted = tests.demoted or (not champion_is_persistence and champion is None)
    after = SELF if tests.decision == PROMOTED else (persistence_version if demoted else champion_version)
    record = Evidence(after, int(as_of.max()) if len(as_of) else None)
    minutes = len(np.unique(as_of))
    reason = f"first decision, on all {minutes} minutes of the slice at level {level:g}: {tests.reason}"
    seen = replace(record, champion=champion_version)
    return Verdict(tests.decision, demoted, reason, after, record, seen, minutes, tests)


def _record(bets: Bets, since: int | None) -> str:
    shown = math.exp(min(bets.peak, 700.0)) if bets.peak > bets.log_e else bets.e_value
    return f"e={shown:.3g} over {bets.n} minutes since {utc_minute(since)}"
