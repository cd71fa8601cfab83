"""Session fixtures: every Bicep file parsed once by pycep (infra venv), and one checkov run."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.infra.bicep_model import BICEP_FILES, INFRA_CHECKOV, ROOT, rel, require_infra_venv, run_infra_tool


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/infra is an infra test (Bicep, azd hooks, checkov): `-m "not infra"` skips them."""
    for item in items:
        if "tests/infra/" in item.nodeid:
            item.add_marker(pytest.mark.infra)


PARSE_SECONDS = 30  # per file; a healthy parse takes well under a second
CHECKOV_SECONDS = 300


@pytest.fixture(scope="session")
def parsed() -> dict[str, dict[str, Any]]:
    """The pycep result for every .bicep file: {path: {ok, error, seconds, template}}."""
    files = [rel(path) for path in BICEP_FILES]
    return run_infra_tool(["parse", str(PARSE_SECONDS), *files], timeout=PARSE_SECONDS * len(files) + 60)


@pytest.fixture(scope="session")
def templates(parsed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The parsed templates by path (bicep/main.bicep, bicep/modules/ml.bicep, ...)."""
    failed = {name: entry["error"] for name, entry in parsed.items() if not entry["ok"]}
    assert not failed, f"pycep could not parse: {failed}"
    return {name: entry["template"] for name, entry in parsed.items()}


@pytest.fixture(scope="session")
def main(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """bicep/main.bicep."""
    return templates["bicep/main.bicep"]


@pytest.fixture(scope="session")
def module(templates: dict[str, dict[str, Any]]) -> Any:
    """A function returning bicep/modules/<name>.bicep."""
    return lambda name: templates[f"bicep/modules/{name}.bicep"]


@pytest.fixture(scope="session")
def checkov_report() -> dict[str, Any]:
    """The checkov JSON report on bicep/ (framework bicep, bicep/.checkov.yaml)."""
    require_infra_venv()
    done = subprocess.run(
        [str(INFRA_CHECKOV), "--config-file", "bicep/.checkov.yaml", "--output", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHECKOV_SECONDS,
        check=False,
    )
    assert done.returncode in (0, 1), f"checkov crashed ({done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert len(bicep) == 1, f"expected one bicep report, got {[r.get('check_type') for r in reports]}"
    return bicep[0]
