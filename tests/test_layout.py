"""Project rules: the Function App stays light and reads the environment in one place only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCTION_APP_FILES = sorted([*ROOT.joinpath("functions").rglob("*.py"), ROOT / "function_app.py"])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", FUNCTION_APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_function_app_never_imports_tensorflow_or_the_training_job(path):
    """No module of the Function App imports TensorFlow, Keras or training_job."""
    assert _imports(path).isdisjoint({"tensorflow", "keras", "training_job"})


def test_only_settings_reads_the_environment():
    """os.getenv / os.environ appear only in functions/settings.py."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in FUNCTION_APP_FILES
        if p.name != "settings.py" and ("os.getenv" in p.read_text() or "os.environ" in p.read_text())
    ]
    assert offenders == []


def test_runtime_requirements_are_pinned_and_light():
    """Every runtime requirement is pinned with == and none of them is TensorFlow."""
    lines = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all("==" in ln for ln in lines)
    assert not any(ln.lower().startswith(("tensorflow", "keras")) for ln in lines)
