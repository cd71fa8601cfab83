"""checkov on bicep/: no parse error, no failed check, and every skip is an inline comment with its reason."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from tests.infra.bicep_model import BICEP, BICEP_FILES, ROOT, rel

SKIP = re.compile(r"^\s*//\s*checkov:skip=(CKV2?_[A-Z]+_\d+):(.*)$")
CHECKED_MODULES = {"aks", "apim", "eventhubs", "functionapp", "ml", "storage"}


def _inline_skips() -> list[tuple[str, str, str]]:
    """(file, check id, reason) of every `// checkov:skip=` line under bicep/."""
    return [
        (rel(path), found.group(1), found.group(2).strip())
        for path in BICEP_FILES
        for line in path.read_text().splitlines()
        if (found := SKIP.match(line))
    ]


def _report_path(check: dict) -> str:
    return "bicep" + check["file_path"]


@pytest.mark.slow
def test_checkov_parses_everything_and_fails_nothing(checkov_report):
    """Zero parsing errors and zero failed checks; some checks did run and pass."""
    summary = checkov_report["summary"]
    results = checkov_report["results"]
    assert results["parsing_errors"] == []
    assert summary["parsing_errors"] == 0
    assert [(c["check_id"], c["resource"]) for c in results["failed_checks"]] == []
    assert summary["failed"] == 0
    assert summary["passed"] >= 30


@pytest.mark.slow
def test_checkov_scanned_the_modules(checkov_report):
    """Checks ran on every module that declares scannable resources."""
    results = checkov_report["results"]
    scanned = {_report_path(c) for c in results["passed_checks"] + results["skipped_checks"]}
    assert {f"bicep/modules/{m}.bicep" for m in CHECKED_MODULES} <= scanned


@pytest.mark.slow
def test_every_skip_is_an_inline_comment_that_checkov_honoured(checkov_report):
    """The skipped checks in the report are exactly the inline skip comments, each with its reason."""
    skipped = Counter(
        (_report_path(c), c["check_id"], c["check_result"]["suppress_comment"])
        for c in checkov_report["results"]["skipped_checks"]
    )
    comments = Counter(_inline_skips())
    assert skipped == comments
    assert checkov_report["summary"]["skipped"] == len(_inline_skips())


def test_every_skip_has_a_real_reason():
    """Each inline skip names one check and explains itself in a sentence."""
    skips = _inline_skips()
    assert skips
    short = [(path, check) for path, check, reason in skips if len(reason) < 40 or not reason[0].isupper()]
    assert short == []
    assert len({(path, check) for path, check, _ in skips}) == len(skips)


def test_checkov_config_skips_nothing_and_stays_offline():
    """bicep/.checkov.yaml scans bicep/ as Bicep, downloads nothing and holds no skip list."""
    config = yaml.safe_load((BICEP / ".checkov.yaml").read_text())
    assert config == {"directory": ["bicep"], "framework": ["bicep"], "skip-download": True}


def test_skipped_checks_are_listed_in_the_architecture_notes():
    """docs/architecture.md's Azure deployment section names every skipped check."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Azure deployment (bicep/)", 1)
    assert len(section) == 2
    missing = sorted({check for _, check, _ in _inline_skips()} - set(re.findall(r"CKV2?_[A-Z]+_\d+", section[1])))
    assert missing == []


def test_infra_requirements_are_fully_pinned():
    """requirements-infra.txt pins every package (==), checkov 3.3.30 with the pycep-parser it needs."""
    lines = [ln for ln in (ROOT / "requirements-infra.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", ln) for ln in lines)
    pins = dict(ln.lower().split("==") for ln in lines)
    assert pins["checkov"] == "3.3.30"
    assert pins["pycep-parser"] == "0.5.1"
    assert "openapi-spec-validator" in pins


def test_make_setup_builds_the_infra_venv():
    """`make setup` depends on the infra venv's stamp, rebuilt when requirements-infra.txt changes."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^setup:\n\t@?\$\(MAKE\) .* installed$", makefile, re.M)
    assert re.search(r"^installed: \$\(STAMP\) \$\(INFRA_STAMP\) node_modules/\.installed$", makefile, re.M)
    assert re.search(r"^\$\(INFRA_STAMP\): requirements-infra\.txt$", makefile, re.MULTILINE)
    assert ".venv-infra/" in (ROOT / ".gitignore").read_text()
    assert ".venv-infra/" in (ROOT / ".funcignore").read_text()
