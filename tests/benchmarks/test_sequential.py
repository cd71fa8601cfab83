"""benchmarks/sequential.py on tiny sizes: the real decision code over simulated ticks, and the figures it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import sequential
from benchmarks.sequential import WORLDS, Market, run_world, summarise

REQUIRED = {
    "runs",
    "ticks_per_run",
    "false_champion_run_rate",
    "no_skill_served_tick_share",
    "planted_promoted_run_rate",
    "planted_ticks_to_promotion_p50",
}


def test_the_stand_in_fits_the_ar_path_by_least_squares():
    """The running cross-products give the pooled least-squares AR fit of a span, and its forecasts."""
    rng = np.random.default_rng(0)
    r = rng.normal(0, 1e-3, (sequential.SYMBOLS, 600))
    market = Market(r)
    x = market.x[:, 100:400].reshape(-1, sequential.LAGS)
    y = market.y[:, 100:400].ravel()
    coef = market.fit(100, 400)
    assert coef == pytest.approx(np.linalg.lstsq(x, y, rcond=None)[0], rel=1e-6, abs=1e-9)
    assert market.x[2, 50, 3] == r[2, 47] and market.y[2, 50] == r[2, 51]
    assert market.variance[1, 50] == pytest.approx(np.mean(r[1, 41:51] ** 2))
    assert market.predict(coef, 100, 102) == pytest.approx((market.x[:, 100:102] @ coef).ravel())
    assert market.predict(None, 100, 102).tolist() == [0.0] * 2 * sequential.SYMBOLS


@pytest.mark.parametrize(("world", "promoted"), [(WORLDS[0], False), (WORLDS[1], True)])
def test_a_run_records_what_the_decision_code_did(world, promoted):
    """Random walk: nothing promoted (the reference may); planted AR(1): promoted at the first decision and served."""
    result = run_world(world, seed=5, ticks=30)
    assert result.world == world.name and len(result.served) == len(result.reference_served) == 30
    assert bool(result.promoted.any()) is promoted and bool(result.served.any()) is promoted
    if promoted:
        assert result.first_promotion() == 1 and result.served.all() and result.demotions == 0


def test_summary_figures_from_tiny_runs():
    """The summary's fields and their sense on 3 runs x 40 ticks of every world."""
    results = [run_world(world, seed=10 + i, ticks=40) for i in range(3) for world in WORLDS]
    figures = summarise(results, 40)
    assert set(figures) >= REQUIRED and (figures["runs"], figures["ticks_per_run"]) == (3, 40)
    assert figures["false_champion_run_rate"] == 0.0 and figures["no_skill_served_tick_share"] == 0.0
    assert (figures["planted_promoted_run_rate"], figures["planted_ticks_to_promotion_p50"]) == (1.0, 1.0)
    assert 0.0 <= figures["reference_false_champion_run_rate"] <= 1.0
    assert all(figures[k] >= 0 for k in figures if k.endswith("_per_run"))


def test_main_prints_the_json_last(capsys):
    """The script's last line is the JSON object with the required fields."""
    sequential.main(["--runs", "1", "--ticks", "20", "--workers", "1"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) >= REQUIRED and (last["runs"], last["ticks_per_run"]) == (1, 20)
