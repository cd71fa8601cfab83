"""`make predict` as a user runs it: an error answer is printed as such, with no empty table and no make error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import ROOT, devhost, private_env

pytestmark = [pytest.mark.e2e]


def test_make_predict_on_an_empty_home_prints_the_error_alone(tmp_path: Path) -> None:
    """Nothing stored, nothing served: one line with the status, code and message; no table, no make error."""
    env = private_env(tmp_path / "home")
    env = {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "predict", "SYMBOL=ZZZZ"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        devhost(env, "stop", timeout=60)
    out = done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("ZZZZ: ")]
    assert (done.returncode, len(errors)) == (0, 1), out[-3000:]
    assert errors[0].split()[1] in ("404", "503"), errors
    assert "forecasts via GET" not in out and "*** " not in out and "Traceback" not in out
    assert os.path.isdir(tmp_path / "home")
