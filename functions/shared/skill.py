"""Live skill against persistence, kept as running sums: log-RMSE ratio, coverage and a one-sided DM test.

The Function App never imports ``training_job`` (nor SciPy), so the Diebold–Mariano test of the
training gate is written again here, the same way: per-forecast squared log-return errors,
d_t = persistence's loss − the model's, Newey–West long-run variance with Bartlett weights at lag
⌊n^{1/3}⌋, the Harvey–Leybourne–Newbold factor √((n + 1 − 2h + h(h − 1)/n)/n) for h-step forecasts
(√((n − 1)/n) at one step), against Student t with n − 1 degrees of freedom.

The live ledger grows by every scored forecast, so nothing keeps the series itself:
:class:`LossSums` holds what the statistic needs and nothing more (n, the sums of the losses, of
d and d², the lagged cross products Σ d_t d_{t−k} for k ≤ :data:`MAX_LAG`, and the first and last
:data:`MAX_LAG` values of d). Extending it by a batch gives exactly the figures of the whole
series computed at once; the lag is capped at :data:`MAX_LAG` (reached at n = 110,592).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_LAG = 48  # Newey–West lags kept; ⌊n^{1/3}⌋ reaches 48 at n = 48³ = 110,592
_BETA_EPS = 1e-15
_BETA_TINY = 1e-300
_BETA_MAX_ITERATIONS = 20_000


def cube_root_floor(n: int) -> int:
    """⌊n^{1/3}⌋ exactly (``n ** (1/3)`` is 9.999… for n = 1000)."""
    lag = round(n ** (1.0 / 3.0))
    while lag**3 > n:
        lag -= 1
    while (lag + 1) ** 3 <= n:
        lag += 1
    return lag


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _BETA_TINY else _BETA_TINY)
    h = d
    for m in range(1, _BETA_MAX_ITERATIONS + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _BETA_TINY else _BETA_TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _BETA_TINY else _BETA_TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _BETA_EPS:
            return h
    raise ArithmeticError(f"incomplete beta ({a}, {b}, {x}) did not converge")


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 ≤ x ≤ 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"need a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if not df > 0 or math.isnan(t):
        raise ValueError(f"need df > 0 and a number t, got t={t}, df={df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@dataclass(frozen=True)
class DMTest:
    """A one-sided Diebold–Mariano test of the model against persistence, both ways."""

    n: int
    stat: float | None  # positive: the model's loss is lower
    p_better: float | None  # H1: the model's expected loss is lower than persistence's
    p_worse: float | None  # H1: the model's expected loss is higher (the live alert's test)


def _floats(values: Any, name: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be a list of numbers")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class LossSums:
    """Running sums of the squared log-return errors of a model and of persistence, in scoring order."""

    n: int = 0
    model_sq: float = 0.0  # Σ e_model²
    persistence_sq: float = 0.0  # Σ e_persistence²
    d_sum: float = 0.0  # Σ d, d_t = e_persistence² − e_model²
    d_sq: float = 0.0  # Σ d²
    lagged: tuple[float, ...] = (0.0,) * MAX_LAG  # lagged[k−1] = Σ_{t>k} d_t d_{t−k}
    head: tuple[float, ...] = ()  # the first MAX_LAG values of d
    tail: tuple[float, ...] = ()  # the last MAX_LAG values of d
    interval_n: int = 0  # scored forecasts that came with an interval
    covered: int = 0  # of those, how many held the close

    def extend(
        self, model_loss: Sequence[float], persistence_loss: Sequence[float], covered: Sequence[bool | None] = ()
    ) -> LossSums:
        """These sums followed by a batch of losses (in scoring order) and interval outcomes (None: no interval)."""
        model = np.asarray(model_loss, dtype=np.float64)
        persistence = np.asarray(persistence_loss, dtype=np.float64)
        if model.shape != persistence.shape or model.ndim != 1:
            raise ValueError("model and persistence losses must be two sequences of one length")
        if not (np.all(np.isfinite(model)) and np.all(np.isfinite(persistence))):
            raise ValueError("losses must be finite")
        d = persistence - model
        joined = np.concatenate([np.asarray(self.tail, dtype=np.float64), d])
        start = len(self.tail)  # products where the later value is new
        lagged = list(self.lagged)
        for k in range(1, MAX_LAG + 1):
            first = max(start, k)
            if first < len(joined):
                lagged[k - 1] += float(joined[first:] @ joined[first - k : len(joined) - k])
        head = self.head if len(self.head) >= MAX_LAG else (self.head + tuple(d.tolist()))[:MAX_LAG]
        outcomes = [c for c in covered if c is not None]
        return LossSums(
            n=self.n + len(d),
            model_sq=self.model_sq + float(model.sum()),
            persistence_sq=self.persistence_sq + float(persistence.sum()),
            d_sum=self.d_sum + float(d.sum()),
            d_sq=self.d_sq + float(d @ d),
            lagged=tuple(lagged),
            head=head,
            tail=tuple(joined[-MAX_LAG:].tolist()),
            interval_n=self.interval_n + len(outcomes),
            covered=self.covered + sum(bool(c) for c in outcomes),
        )

    def ratio(self) -> float | None:
        """The model's log-RMSE over persistence's (below 1 is better); None before a move was scored."""
        if self.n == 0 or self.persistence_sq <= 0:
            return None
        return math.sqrt(self.model_sq / self.persistence_sq)

    def coverage(self) -> float | None:
        """Share of intervals that held the close; None when no scored forecast had one."""
        return self.covered / self.interval_n if self.interval_n else None

    def long_run_variance(self) -> float:
        """Newey–West variance of d (Bartlett weights, lag min(⌊n^{1/3}⌋, MAX_LAG)), from the sums."""
        n = self.n
        mean = self.d_sum / n
        lrv = (self.d_sq - n * mean * mean) / n
        lag = min(cube_root_floor(n), MAX_LAG, n - 1)
        for k in range(1, lag + 1):
            # Σ_{t>k} (d_t − m)(d_{t−k} − m) = C_k − m(S − first k) − m(S − last k) + (n − k)m²
            head, tail = sum(self.head[:k]), sum(self.tail[-k:])
            gamma = self.lagged[k - 1] - mean * (2 * self.d_sum - head - tail) + (n - k) * mean * mean
            lrv += 2.0 * (1.0 - k / (lag + 1)) * gamma / n
        return lrv

    def dm(self, horizon: int = 1) -> DMTest:
        """One-sided DM tests of ``horizon``-step forecasts (HLN, Student t with n − 1 df); None below 3 forecasts."""
        if horizon < 1:
            raise ValueError(f"horizon must be at least one step, not {horizon}")
        n = self.n
        if n < 3:
            return DMTest(n, None, None, None)
        mean = self.d_sum / n
        lrv = self.long_run_variance()
        # below float rounding of the centred sum of squares: the losses never told the two apart
        if lrv <= 1e-12 * max(self.d_sq / n, 1e-300):
            better = 0.5 if mean == 0 else (0.0 if mean > 0 else 1.0)
            return DMTest(n, 0.0, better, 1.0 - better if mean != 0 else 0.5)
        hln = math.sqrt(max(n + 1 - 2 * horizon + horizon * (horizon - 1) / n, 1.0) / n)
        stat = mean / math.sqrt(lrv / n) * hln
        return DMTest(n, stat, student_t_sf(stat, n - 1), student_t_sf(-stat, n - 1))

    def as_json(self) -> dict[str, Any]:
        """The sums as plain JSON values (floats round-trip exactly through orjson)."""
        return {
            "n": self.n,
            "model_sq": self.model_sq,
            "persistence_sq": self.persistence_sq,
            "d_sum": self.d_sum,
            "d_sq": self.d_sq,
            "lagged": list(self.lagged),
            "head": list(self.head),
            "tail": list(self.tail),
            "interval_n": self.interval_n,
            "covered": self.covered,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LossSums:
        """Sums written by :meth:`as_json`; ValueError naming what is wrong."""
        try:
            n, interval_n, covered = int(doc["n"]), int(doc["interval_n"]), int(doc["covered"])
            sums = {key: float(doc[key]) for key in ("model_sq", "persistence_sq", "d_sum", "d_sq")}
            lagged = _floats(doc["lagged"], "lagged")
            head, tail = _floats(doc["head"], "head"), _floats(doc["tail"], "tail")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"loss sums incomplete: {exc}") from None
        if len(lagged) != MAX_LAG or len(head) > MAX_LAG or len(tail) > MAX_LAG or n < 0:
            raise ValueError(f"loss sums malformed (n={n}, {len(lagged)} lags, head {len(head)}, tail {len(tail)})")
        if not 0 <= covered <= interval_n <= n or len(head) != min(n, MAX_LAG) or len(tail) != min(n, MAX_LAG):
            raise ValueError(f"loss sums inconsistent (n={n}, interval_n={interval_n}, covered={covered})")
        return cls(n, lagged=lagged, head=head, tail=tail, interval_n=interval_n, covered=covered, **sums)
