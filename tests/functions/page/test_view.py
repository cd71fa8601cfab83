"""The live page's pure parts: per-minute series, the versions table, the partitions read, the inlined page."""

from __future__ import annotations

from pathlib import Path

from functions.page.blueprint import INLINED, STATIC, page_html
from functions.page.view import served_prefixes, symbol_series, version_rows
from functions.shared.ledger import ServedRecord
from functions.train_trigger.ports import ModelSnapshot, ModelVersion

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_793_629_800


def _record(as_of: int, version: str, predicted: float, served_at_ms: int = 0, band: bool = True) -> ServedRecord:
    low, high = (predicted - 1, predicted + 1) if band else (None, None)
    return ServedRecord("AAPL", version, "k", as_of, as_of + 60, predicted, 10.0, 0.9, low, high, served_at_ms, "get")


def test_series_align_closes_and_the_newest_forecast_per_minute_and_mark_version_changes():
    """Each target minute shows its newest forecast; the version changing between minutes is marked."""
    closes = {T0 + 60 * i: 10.0 + i for i in range(4)}
    served = [
        _record(T0, "1", 11.0, band=False),
        _record(T0 + 60, "1", 12.0, served_at_ms=1),
        _record(T0 + 60, "1", 12.5, served_at_ms=2),  # served again later: this one is shown
        _record(T0 + 120, "2", 13.0),
        _record(T0 + 180, "2", 14.0),  # its target lies past the newest bar: still on the axis
        _record(T0 - 600, "1", 9.0),  # before the first close shown: left out
    ]
    s = symbol_series(closes, served)
    assert s["x"] == [T0 + 60 * i for i in range(5)]
    assert s["close"] == [10.0, 11.0, 12.0, 13.0, None]
    assert s["forecast"] == [None, 11.0, 12.5, 13.0, 14.0]
    assert s["low"] == [None, None, 11.5, 12.0, 13.0] and s["high"] == [None, None, 13.5, 14.0, 15.0]
    assert s["changes"] == [{"ts": T0 + 180, "from": "1", "to": "2"}]
    assert (s["last_ts"], s["last_close"], s["forecasts"]) == (T0 + 180, 13.0, 4)


def test_series_show_only_the_last_minutes():
    """Only the newest ``minutes`` bars are on the axis."""
    s = symbol_series({T0 + 60 * i: 1.0 for i in range(10)}, [], minutes=3)
    assert s["x"] == [T0 + 60 * i for i in range(7, 10)] and s["changes"] == []


def test_versions_table_joins_the_registry_the_live_figures_and_the_ledger_newest_first():
    """Decision and decision-slice skill from the tags, live figures from skill.json, serving from the ledger."""
    tags = {"decision": "promoted", "decision_rmse": "0.9", "persistence_rmse": "1.0"}
    snapshot = ModelSnapshot(ModelVersion("2", tags), ModelVersion("3", {"decision": "retained"}))
    live = {"2": {"kind": "lstm_attention", "ratio_to_persistence": 0.95, "p_value": 0.1, "n": 40, "coverage": 0.88}}
    rows = version_rows(live, snapshot, {"AAPL": "2", "MSFT": "2"}, {"1": "persistence", "2": "lstm_attention"})
    assert [r["version"] for r in rows] == ["3", "2", "1"]
    three, two, one = rows
    assert three["decision"] == "retained" and three["decision_ratio"] is None and not three["champion"]
    assert two["champion"] and two["decision"] == "promoted" and abs(two["decision_ratio"] - 0.9) < 1e-12
    assert (two["live_ratio"], two["coverage"], two["serving"]) == (0.95, 0.88, ["AAPL", "MSFT"])
    assert one["kind"] == "persistence" and one["live_ratio"] is None and one["serving"] == []
    assert version_rows({}, None, {}, {}) == []


def test_served_partitions_are_the_current_hour_and_those_before():
    """Across midnight the partitions name the previous day."""
    assert served_prefixes(T0 - 14 * 3600 - 30 * 60, 2) == [
        "ledger/served/date=2026-11-02/hour=00/",
        "ledger/served/date=2026-11-01/hour=23/",
    ]


def test_the_page_inlines_its_assets_and_the_vendored_chart_library_is_the_pinned_one():
    """No asset is fetched at run time, and the committed uPlot is the one package-lock.json pins."""
    html = page_html().decode()
    assert "<!--" not in html and "uPlot" in html and "http" not in html.split("<script>")[0]
    for name in INLINED:
        assert (STATIC / name).read_text(encoding="utf-8") in html
    assert "MIT" in (STATIC / "uPlot.LICENSE").read_text(encoding="utf-8")
    installed = ROOT / "node_modules" / "uplot" / "dist" / "uPlot.iife.min.js"
    if installed.exists():  # `npm run vendor` copies it: the two must not drift
        assert installed.read_bytes() == (STATIC / "uPlot.iife.min.js").read_bytes()
    ignored = (ROOT / ".funcignore").read_text().split()
    assert not any(line.startswith("functions/page") for line in ignored)
