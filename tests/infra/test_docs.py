"""The docs stand on their own and say what the code does: links, the design's contracts, deploy facts, .funcignore."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import PurePosixPath

import pytest

from tests.infra.bicep_model import ROOT, one, param_default

DESIGN = ROOT / "docs" / "design.md"
DEPLOY = ROOT / "docs" / "deploy.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_point_inside_the_repository(doc):
    """No doc sends the reader to ../shared or to DESIGN.md outside the repository."""
    text = doc.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text


def test_no_source_names_the_outside_design_file():
    """Code comments and docstrings name docs/design.md, not a file outside the repository."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("functions", "training_job", "bicep", "tests")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".bicep", ".sh", ".ps1", ".md"}
        and path.is_file()
        and re.search(r"\bDESIGN\.md|\.\./shared/", path.read_text(errors="ignore"))
        and path.name != "test_docs.py"
    ]
    assert offenders == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_paths_resolve(doc):
    """Markdown links and backticked repository paths in the docs name files that exist."""
    text = doc.read_text()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)\)", text) if not re.match(r"[a-z]+://", t)]
    paths = re.findall(r"`((?:docs|bicep|training_job|functions|tests)/[\w./-]*\w)`", text)
    missing = [
        target
        for target in [*links, *paths]
        if not (doc.parent / target).exists() and not (ROOT / target).exists() and "*" not in target
    ]
    assert missing == []


def test_readme_and_architecture_link_the_design_page():
    """README.md and docs/architecture.md send readers to docs/design.md for the contracts."""
    assert "`docs/design.md` for the contracts" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "architecture.md").read_text().startswith("# Architecture decisions\n\n`docs/design.md`")


def _dict_keys(name: str = "summary") -> set[str]:
    """The keys of the ``name = {...}`` dict in training_job/train.py (``summary``: what --summary-out writes)."""
    tree = ast.parse((ROOT / "training_job" / "train.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            assert isinstance(node.value, ast.Dict)
            return {key.value for key in node.value.keys if isinstance(key, ast.Constant)}
    raise AssertionError(f"no {name} dict in training_job/train.py")


def _summary_contract() -> str:
    """The design's --summary-out contract: from its sentence to the next bold paragraph."""
    return DESIGN.read_text().split("`--summary-out` writes", 1)[1].split("\n\n**", 1)[0]


def test_design_states_the_current_training_contract():
    """Persistence is version 1, the Diebold–Mariano gate decides, and --summary-out's keys are the job's."""
    text = DESIGN.read_text()
    assert "**Persistence is version 1**" in text
    assert "Diebold–Mariano" in text and "demoted to the persistence version" in text
    quoted = set(re.findall(r'"(\w+)"', _summary_contract()))
    assert _dict_keys() <= quoted
    assert "tolerance" in text.split("**Training and promotion**", 1)[1].split("\n\n", 1)[0]


def test_design_states_the_interval_figures_the_summary_holds():
    """The summary's interval keys and each per-tercile row's keys are the ones the design quotes."""
    import numpy as np

    from training_job.intervals import TERCILES, by_volatility

    interval = _summary_contract().split('"interval": {', 1)[1].split(', "shrinkage"', 1)[0]
    quoted = set(re.findall(r'"(\w+)"', interval))
    rows = by_volatility(np.ones(3), np.zeros(3), 0.9, (np.zeros(3), np.ones(3)), (np.zeros(3), np.ones(3)))
    assert _dict_keys("interval") | set(rows[0]) | set(TERCILES) == quoted
    assert "Mondrian" in DESIGN.read_text() and "Lei et al." in DESIGN.read_text()


def test_design_lists_the_forecast_fields_the_api_returns():
    """The Predict API contract names every required field of the Forecast schema in openapi.yaml."""
    import yaml

    spec = yaml.safe_load((ROOT / "functions" / "predict" / "openapi.yaml").read_text())
    required = spec["components"]["schemas"]["Forecast"]["required"]
    api = DESIGN.read_text().split("**Predict API**", 1)[1]
    assert [field for field in required if f'"{field}"' not in api] == []


# ---- docs/deploy.md names what Bicep deploys ----


def test_deploy_doc_names_the_real_named_value(module):
    """The secret named value is stockcast-function-key (apim.bicep's variable), nowhere plain function-key."""
    name = module("apim")["variables"]["functionKeyNamedValue"]["value"]
    text = DEPLOY.read_text()
    assert f"`{name}`" in text
    assert not re.search(r"(?<![\w-])`function-key`", text)


def test_deploy_doc_names_the_real_storage_and_node_skus(main, module):
    """The cost table's storage redundancy and AKS node size are the ones Bicep deploys by default."""
    text = DEPLOY.read_text()
    sku = one(module("storage"), "Microsoft.Storage/storageAccounts").config["sku"]["name"]
    assert sku == "Standard_GRS"
    assert "| Storage account | Standard GRS" in text and "Standard LRS" not in text
    node = param_default(main, "aksNodeVmSize")
    assert f"| AKS node | 1 × {node}," in text and f"{node} × 1 (`AKS_NODE_VM_SIZE`)" in text
    assert "Standard_D4ds_v5" not in text


def test_deploy_doc_walks_through_the_postdeploy_hook():
    """The walkthrough explains the hook that stores the function key, and how to re-run it."""
    text = DEPLOY.read_text()
    assert "**postdeploy hook**" in text and "azd hooks run postdeploy" in text
    assert "registers the training environment" not in text


# ---- .funcignore ----


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore-style matching for the patterns .funcignore uses (names, globs, dir/ and a/b/ paths)."""
    parts = PurePosixPath(path).parts
    for pattern in patterns:
        directory = pattern.endswith("/")
        body = pattern.rstrip("/")
        candidates = parts[:-1] if directory else parts
        if "/" in body:  # anchored to the root
            if any(fnmatch.fnmatch("/".join(parts[: i + 1]), body) for i in range(len(candidates))):
                return True
        elif any(fnmatch.fnmatch(part, body) for part in candidates):
            return True
    return False


FUNCIGNORE = [
    line.strip()
    for line in (ROOT / ".funcignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.mark.parametrize(
    ("path", "shipped"),
    [
        ("function_app.py", True),
        ("functions/predict/openapi.yaml", True),
        ("training_job/train.py", True),
        ("training_job/environment/conda.yaml", True),
        ("mlruns/0/meta.yaml", False),
        ("mlruns/1/abc/artifacts/model/model.keras", False),
        ("training_job/mlruns/0/meta.yaml", False),
        (".local/mlflow/mlflow.db", False),
        ("bicep/hooks/instancetype.yaml", False),
        ("docs/design.md", False),
        ("tests/infra/schemas/index.json", False),
    ],
)
def test_the_function_package_leaves_out_local_state(path, shipped):
    """.funcignore keeps MLflow's local store (mlruns/, wherever a run made it) out of the package."""
    assert _ignored(path, FUNCIGNORE) is (not shipped)


def test_funcignore_matcher_reads_the_patterns_as_gitignore_does():
    """The matcher the test above relies on: dir/ at any depth, anchored a/b/, globs."""
    assert _ignored("x/mlruns/y", ["mlruns/"]) and not _ignored("mlruns", ["mlruns/"])
    assert _ignored("training_job/__pycache__/a.pyc", ["training_job/__pycache__/"])
    assert not _ignored("other/__pycache__/a.pyc", ["training_job/__pycache__/"])
    assert _ignored(".github/workflows/x.yml", [".git*"]) and _ignored("Makefile", ["Makefile"])
