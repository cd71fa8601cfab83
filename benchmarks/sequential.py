"""Promotion across 15-minute ticks: how often a no-skill model is crowned, and how soon a real signal is.

Each run simulates 1-minute log returns of 5 symbols and a tick every 15 minutes, as the timer runs
the training job. At each tick the data so far ends ``end`` minutes in: the newest 390 minutes (20 %
of five trading days) are the decision slice, the 1,560 before it train the challenger, so
consecutive slices share 96 % of their windows, as in the job. The challenger is a cheap stand-in
for the trained model: the model's own linear AR skip path (AR(10), pooled least squares over the
training span; no TensorFlow per tick), scored with the window variance of its last 10 returns.

Worlds: ``no_skill`` (pure random walks: nothing beats persistence, so every promotion is false),
``planted`` (AR(1) returns with φ = 0.2 from the start) and ``late`` (a random walk that turns AR(1)
at the middle tick: only the evidence accumulated across ticks can find it, the first decision cannot).

Stockcast: the real decision code, ``evaluate.decide``, with its record carried from tick to tick as
the version tag the job writes and reads (``Evidence.to_tag`` / ``Evidence.from_tag``). Reference (the
rule it replaces): ``evaluate.gate`` on the stacked windows of each tick's whole slice, deciding afresh
every tick. Prints the figures, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from rich.progress import Progress

from training_job import evaluate

SYMBOLS = 5
TICK = 15  # minutes between training jobs
HISTORY = 1950  # minutes of data a job reads: five trading days
DECISION = 390  # the newest 20 %: the decision slice
LAGS = 10  # the AR skip path's lags (TrainConfig.ar_lags)
VOL_BARS = 10  # the window variance: mean squared return of the last 10 bars
SIGMA = 1e-3  # 1-minute return volatility
PHI = 0.2  # the planted AR(1) coefficient
ALPHA = 0.05
EPOCH = 1_800_000_000  # the first minute's timestamp (a whole minute)
PERSISTENCE = "1"


@dataclass(frozen=True)
class World:
    """What the returns are: a random walk that turns AR(1) with ``phi`` at a share ``onset`` of the ticks."""

    name: str
    phi: float
    onset: float  # 0: AR(1) from the first minute; 0.5: from the middle tick on


WORLDS = (World("no_skill", 0.0, 0.0), World("planted", PHI, 0.0), World("late", PHI, 0.5))


@dataclass(frozen=True)
class RunResult:
    """One run of one world under both rules: per tick, whether a trained model was champion after it."""

    world: str
    onset: int  # the tick the signal starts at (0 also when there is none)
    served: np.ndarray  # bool per tick: Stockcast's champion is a trained model after the tick
    promoted: np.ndarray  # bool per tick: Stockcast promoted the tick's challenger
    demotions: int
    reference_served: np.ndarray
    reference_promoted: np.ndarray
    reference_demotions: int

    def first_promotion(self, reference: bool = False, after: int = 0) -> int | None:
        """Ticks from ``after`` to the first promotion at or after it, counting that tick (None: none)."""
        found = np.flatnonzero((self.reference_promoted if reference else self.promoted)[after:])
        return int(found[0]) + 1 if len(found) else None


def returns(rng: np.random.Generator, phi: float, onset_minute: int, minutes: int) -> np.ndarray:
    """(symbols, minutes) log returns: a random walk, AR(1) with ``phi`` from ``onset_minute`` on."""
    noise = rng.standard_normal((SYMBOLS, minutes)) * SIGMA
    if phi == 0.0:
        return noise
    r = noise.copy()
    for t in range(max(onset_minute, 1), minutes):
        r[:, t] = phi * r[:, t - 1] + noise[:, t]
    return r


class Market:
    """The lagged returns, targets, window variances and running cross-products of one run."""

    def __init__(self, r: np.ndarray) -> None:
        self.minutes = r.shape[1]
        # x[s, t] = (r[t], r[t-1], …, r[t-LAGS+1]): the window that ends at minute t; y[s, t] = r[t+1]
        padded = np.concatenate([np.zeros((SYMBOLS, LAGS - 1)), r], axis=1)
        self.x = np.stack([padded[:, LAGS - 1 - j : LAGS - 1 - j + self.minutes] for j in range(LAGS)], axis=2)
        self.y = np.concatenate([r[:, 1:], np.full((SYMBOLS, 1), np.nan)], axis=1)
        squares = np.concatenate([np.zeros((SYMBOLS, VOL_BARS)), r**2], axis=1).cumsum(axis=1)
        self.variance = np.maximum((squares[:, VOL_BARS:] - squares[:, :-VOL_BARS]) / VOL_BARS, 1e-12)
        target = np.nan_to_num(self.y)
        xx = np.einsum("sti,stj->tij", self.x, self.x)
        xy = np.einsum("sti,st->ti", self.x, target)
        self.xx = np.concatenate([np.zeros((1, LAGS, LAGS)), xx.cumsum(axis=0)])
        self.xy = np.concatenate([np.zeros((1, LAGS)), xy.cumsum(axis=0)])

    def fit(self, start: int, stop: int) -> np.ndarray:
        """AR coefficients by pooled least squares on the windows ending at minutes [start, stop)."""
        a = self.xx[stop] - self.xx[start]
        b = self.xy[stop] - self.xy[start]
        return np.linalg.solve(a + 1e-12 * np.eye(LAGS), b)

    def predict(self, coef: np.ndarray | None, start: int, stop: int) -> np.ndarray:
        """Predicted returns of the windows ending at minutes [start, stop), symbol by symbol, flattened."""
        if coef is None:
            return np.zeros(SYMBOLS * (stop - start))
        return (self.x[:, start:stop] @ coef).ravel()


def run_world(world: World, seed: int, ticks: int) -> RunResult:
    """Both rules over ``ticks`` ticks of one simulated market."""
    rng = np.random.default_rng(seed)
    minutes = HISTORY + ticks * TICK + 1
    onset = int(world.onset * ticks)
    market = Market(returns(rng, world.phi, 0 if onset == 0 else HISTORY + onset * TICK, minutes))
    served, promoted = np.zeros(ticks, bool), np.zeros(ticks, bool)
    reference_served, reference_promoted = np.zeros(ticks, bool), np.zeros(ticks, bool)
    tag, carrier = None, None  # the newest recorded evidence and the version carrying it
    champion, champion_coef, reference_coef = PERSISTENCE, None, None
    demotions = reference_demotions = 0
    for k in range(ticks):
        end = HISTORY + k * TICK  # minutes of returns known at this tick
        start, stop = end - DECISION, end - 1  # decision windows: their targets are known
        coef = market.fit(end - HISTORY + LAGS, start - 1)  # windows whose targets precede the slice
        as_of = EPOCH + 60 * np.tile(np.arange(start, stop), SYMBOLS)
        actual = market.y[:, start:stop].ravel()
        variance = market.variance[:, start:stop].ravel()
        mine = market.predict(coef, start, stop)
        version = str(k + 2)

        evidence = evaluate.Evidence() if tag is None else evaluate.Evidence.from_tag(tag, carrier)
        verdict = evaluate.decide(
            evidence,
            as_of,
            actual,
            mine,
            market.predict(champion_coef, start, stop),
            variance,
            champion,
            champion == PERSISTENCE,
            PERSISTENCE,
            ALPHA,
        )
        tag, carrier = verdict.evidence.to_tag(), version
        if verdict.champion == evaluate.SELF:
            champion, champion_coef = version, coef
            promoted[k] = True
        elif verdict.champion == PERSISTENCE and champion != PERSISTENCE:
            champion, champion_coef = PERSISTENCE, None
            demotions += 1
        served[k] = champion != PERSISTENCE

        persistence_loss = actual**2
        theirs = None if reference_coef is None else (market.predict(reference_coef, start, stop) - actual) ** 2
        decision = evaluate.gate((mine - actual) ** 2, persistence_loss, theirs, reference_coef is None, ALPHA)
        if decision.decision == evaluate.PROMOTED:
            reference_coef = coef
            reference_promoted[k] = True
        elif decision.demoted:
            reference_coef = None
            reference_demotions += 1
        reference_served[k] = reference_coef is not None
    return RunResult(
        world.name, onset, served, promoted, demotions, reference_served, reference_promoted, reference_demotions
    )


def _task(job: tuple[World, int, int]) -> RunResult:
    return run_world(*job)


def simulate(runs: int, ticks: int, seed: int = 0, workers: int = 1) -> Iterator[RunResult]:
    """Every run of every world, each from its own seed; in parallel over ``workers`` processes."""
    jobs = [
        (world, seed * 1_000_003 + i * len(WORLDS) + w, ticks) for i in range(runs) for w, world in enumerate(WORLDS)
    ]
    if workers <= 1:
        yield from map(_task, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_task, jobs, chunksize=4)


def _median(values: list[int | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(np.median(found)) if found else None


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def summarise(results: list[RunResult], ticks: int) -> dict[str, float | int | None]:
    """The benchmark's figures from every run of every world."""
    by = {w.name: [r for r in results if r.world == w.name] for w in WORLDS}
    null, planted, late = by["no_skill"], by["planted"], by["late"]
    five_days = min(130, ticks)  # ticks in five trading days
    figures: dict[str, float | int | None] = {
        "runs": len(null),
        "ticks_per_run": ticks,
        "symbols": SYMBOLS,
        "alpha": ALPHA,
    }
    for prefix, reference in (("", False), ("reference_", True)):
        first = [r.first_promotion(reference) for r in null]
        served = [(r.reference_served if reference else r.served).mean() for r in null]
        planted_first = [r.first_promotion(reference) for r in planted]
        late_first = [r.first_promotion(reference, r.onset) for r in late]
        figures |= {
            f"{prefix}false_champion_run_rate": round(_mean([f is not None for f in first]), 4),
            f"{prefix}false_champion_run_rate_5_days": round(
                _mean([f is not None and f <= five_days for f in first]), 4
            ),
            f"{prefix}no_skill_served_tick_share": round(_mean(served), 4),
            f"{prefix}no_skill_promotions_per_run": round(
                _mean([(r.reference_promoted if reference else r.promoted).sum() for r in null]), 3
            ),
            f"{prefix}no_skill_demotions_per_run": round(
                _mean([r.reference_demotions if reference else r.demotions for r in null]), 3
            ),
            f"{prefix}planted_promoted_run_rate": round(_mean([f is not None for f in planted_first]), 4),
            f"{prefix}planted_ticks_to_promotion_p50": _median(planted_first),
            f"{prefix}planted_demotions_per_run": round(
                _mean([r.reference_demotions if reference else r.demotions for r in planted]), 3
            ),
            f"{prefix}late_promoted_run_rate": round(_mean([f is not None for f in late_first]), 4),
            f"{prefix}late_ticks_to_promotion_p50": _median(late_first),
        }
    return figures


def main(argv: list[str] | None = None) -> None:
    """Simulate every world under both rules and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per world")
    parser.add_argument("--ticks", type=int, default=260, help="15-minute ticks per run (260: ten trading days)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    results = []
    with Progress(transient=True) as progress:
        task = progress.add_task("runs", total=args.runs * len(WORLDS))
        for result in simulate(args.runs, args.ticks, args.seed, args.workers):
            results.append(result)
            progress.advance(task)
    figures = summarise(results, args.ticks)
    figures["seconds"] = round(time.perf_counter() - begin, 1)
    print(
        f"{figures['runs']} runs x {args.ticks} ticks x {SYMBOLS} symbols per world, alpha {ALPHA}; "
        f"{figures['seconds']}s on {args.workers} workers"
    )
    for who, prefix in (("stockcast", ""), ("reference", "reference_")):
        print(
            f"{who:>9}: no skill: {figures[prefix + 'false_champion_run_rate']:.1%} of runs crown a champion "
            f"({figures[prefix + 'false_champion_run_rate_5_days']:.1%} within five days), "
            f"served on {figures[prefix + 'no_skill_served_tick_share']:.1%} of ticks, "
            f"{figures[prefix + 'no_skill_promotions_per_run']} promotions and "
            f"{figures[prefix + 'no_skill_demotions_per_run']} demotions a run; planted: "
            f"{figures[prefix + 'planted_promoted_run_rate']:.1%} of runs promote, median tick "
            f"{figures[prefix + 'planted_ticks_to_promotion_p50']}; signal from the middle tick: "
            f"{figures[prefix + 'late_promoted_run_rate']:.1%} promote after it, median "
            f"{figures[prefix + 'late_ticks_to_promotion_p50']} ticks after it starts"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
