"""README.md and docs/ describe the system as it is: a generated benchmark table, an operations entry per alert.

The README's benchmark table is what ``benchmarks/table.py`` makes of ``benchmarks/results/``; every
benchmark script has a results file or is a helper; every alert in ``bicep/`` is explained in
``docs/operations.md``; no doc points at a numbered stop, issue or session (git history keeps those);
and the commands, make targets and settings the docs name exist. The docs' links, the design's
contracts and ``docs/deploy.md`` have their own tests in ``tests/infra/test_docs.py`` and
``tests/infra/test_azd.py``; the response shapes in ``tests/test_examples.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
DEPLOY = ROOT / "docs" / "deploy.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
BENCHMARKS = ROOT / "benchmarks"
# benchmarks that are registered in table.py before their script lands (their row says "not run")
NOT_YET_WRITTEN = {"scale.py"}


def _load_table() -> ModuleType:
    """benchmarks/table.py as a module (benchmarks/ is not a package)."""
    if "bench_table" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_table", BENCHMARKS / "table.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_table"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["bench_table"]


table = _load_table()
PRINTS_JSON = re.compile(r"print\(\s*json\.dumps\(")


# ---- the benchmark table ----------------------------------------------------------------------------------


def test_readme_benchmark_table_is_the_generated_one():
    """README.md's section between the bench-table markers is what `make bench-table` writes."""
    text = README.read_text()
    assert table.rewrite(text) == text, "README.md's benchmark table is stale: run `make bench-table`"


def test_every_benchmark_script_has_a_row_and_results_or_is_a_helper():
    """A script that prints a result JSON has a row in table.py and a results file; a helper prints none."""
    rows = {bench.script for bench in table.BENCHMARKS}
    for script in sorted(BENCHMARKS.glob("*.py")):
        source = script.read_text()
        if script.name in table.HELPERS:
            assert not PRINTS_JSON.search(source), f"{script.name} prints a result: it is no helper"
            continue
        assert PRINTS_JSON.search(source), f"{script.name} prints no JSON result: list it in HELPERS"
        assert script.name in rows, f"{script.name} has no row in benchmarks/table.py's BENCHMARKS"
    for bench in table.BENCHMARKS:
        if not (BENCHMARKS / bench.script).exists():
            assert bench.script in NOT_YET_WRITTEN, f"{bench.name}: benchmarks/{bench.script} does not exist"
            continue
        assert (table.RESULTS / f"{bench.name}.json").exists(), (
            f"no benchmarks/results/{bench.name}.json: run `.venv/bin/python benchmarks/table.py --record {bench.name}`"
        )


def test_helpers_exist():
    """Every module table.py calls a helper is in benchmarks/ (a stale name would hide a new benchmark)."""
    assert sorted(name for name in table.HELPERS if not (BENCHMARKS / name).exists()) == []


@pytest.mark.parametrize("path", sorted((BENCHMARKS / "results").glob("*.json")), ids=lambda p: p.name)
def test_results_files_hold_the_json_the_command_and_the_machine(path):
    """Each results file names its benchmark, the command, the machine (cores, memory, CPU) and a result."""
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == path.stem
    assert path.stem in {bench.name for bench in table.BENCHMARKS}
    assert isinstance(doc["command"], str) and doc["command"]
    assert {"cores", "memory_gib", "cpu"} <= set(doc["machine"])
    assert isinstance(doc["result"], dict) and doc["result"]


def test_every_figure_and_target_of_a_recorded_benchmark_is_in_its_result():
    """The table shows no n/a and no "no figure" for what is recorded: the templates read real keys."""
    for bench in table.BENCHMARKS:
        stored = table.load(bench.name)
        if stored is None:
            continue
        line = table.row(bench, stored)
        assert "n/a" not in line and "no figure" not in line, line


def test_a_benchmark_without_results_says_not_run(tmp_path):
    """With no results files every row says "not run", keeps its targets and names no machine."""
    rows = table.table(tmp_path).splitlines()[2:]
    assert len(rows) == len(table.BENCHMARKS)
    for bench, line in zip(table.BENCHMARKS, rows, strict=True):
        assert "| not run |" in line
        assert all(target.label in line for target in bench.targets)


def test_scale_targets():
    """scale.py's targets: history_growth <= 1.2 and per_symbol_growth <= 1.0, checked on its result."""
    scale = next(bench for bench in table.BENCHMARKS if bench.name == "scale")
    assert [t.check({"history_growth": 1.2, "per_symbol_growth": 1.0}) for t in scale.targets] == [True, True]
    assert [t.check({"history_growth": 1.21, "per_symbol_growth": 1.01}) for t in scale.targets] == [False, False]
    assert [t.check({}) for t in scale.targets] == [None, None]
    line = table.row(scale, {"result": {"history_growth": 1.3, "per_symbol_growth": 0.5}, "machine": {"cores": 4}})
    assert "≤ 1.2: **not met**" in line and "≤ 1.0: met" in line and "| 4 cores |" in line


def _readme(tmp_path: Path) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{table.START}\nold\n{table.END}\nrest\n")
    return readme


def test_record_keeps_the_last_line_json_with_the_command_and_the_machine(tmp_path, capsys):
    """--record NAME -- CMD runs CMD, keeps its last line's JSON object and rewrites the table."""
    readme, results = _readme(tmp_path), tmp_path / "results"
    code = "import json; print('figures'); print(json.dumps({'missing': 0, 'duplicates': 1}))"
    args = ["--readme", str(readme), "--results", str(results), "--record", "stream", "--", sys.executable, "-c"]
    assert table.main([*args, code]) == 0
    doc = json.loads((results / "stream.json").read_text())
    assert doc["result"] == {"missing": 0, "duplicates": 1}
    assert doc["command"].endswith(code) or "-c" in doc["command"]
    assert doc["machine"]["cores"] >= 1 and doc["recorded_at"]
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert "none missing: met; no duplicates: **not met**" in text
    assert "figures" in capsys.readouterr().out  # the benchmark's own output passes through
    assert table.main(["--readme", str(readme), "--results", str(results), "--check"]) == 0


@pytest.mark.parametrize(
    "code",
    ["import sys; print('{}'); sys.exit(3)", "print('{\"a\": 1}'); print('done')", "print('[1, 2]')", "pass"],
    ids=["fails", "last-line-not-json", "not-an-object", "prints-nothing"],
)
def test_record_writes_nothing_when_the_run_gives_no_result(tmp_path, code):
    """A failing command, or a last line that is not a JSON object, leaves the results and README alone."""
    readme, results = _readme(tmp_path), tmp_path / "results"
    before = readme.read_text()
    args = ["--readme", str(readme), "--results", str(results), "--record", "kafka", "--", sys.executable, "-c"]
    assert table.main([*args, code]) == 1
    assert not (results / "kafka.json").exists() and readme.read_text() == before


def test_check_fails_on_a_stale_table(tmp_path):
    """--check exits 1 while the README's table differs from the generated one, 0 once rewritten."""
    readme = _readme(tmp_path)
    assert table.main(["--readme", str(readme), "--check"]) == 1
    assert table.main(["--readme", str(readme)]) == 0
    assert table.main(["--readme", str(readme), "--check"]) == 0


def test_make_bench_table_runs_the_script():
    """`make bench-table` is a phony target that runs benchmarks/table.py."""
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony and "bench-table" in phony.group(1).split()
    recipe = re.search(r"^bench-table:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "benchmarks/table.py" in recipe.group(1)


# ---- no numbered stops, issues or sessions ----------------------------------------------------------------

NUMBERED = re.compile(r"\b(?:stop|issue|session)s?\s*#?\s*\d+", re.IGNORECASE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_points_at_a_numbered_stop_issue_or_session(doc):
    """The docs say what holds now; which stop, issue or session changed it is git history's."""
    text = " ".join(doc.read_text().split())  # a number wrapped onto the next line still counts
    assert NUMBERED.findall(text) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("measured at Stop 21, then", True),
        ("issue 14's targets", True),
        ("in session 3 we", True),
        ("Issues #12 and", True),
        ("stop\n22", True),
        ("`make stop` stops them", False),
        ("a session's last minute", False),
        ("python-worker/issues/654", False),
        ("45 minutes into the next session", False),
    ],
)
def test_the_numbered_reference_pattern(text, found):
    """The pattern catches numbered references in any case and spacing, and not the words alone."""
    assert bool(NUMBERED.search(" ".join(text.split()))) is found


# ---- docs/operations.md: one entry per alert ---------------------------------------------------------------


def _alerts() -> list[tuple[str, str]]:
    """(rule name, display name) of every alert rule declared in bicep/."""
    found = []
    for path in sorted((ROOT / "bicep").rglob("*.bicep")):
        for block in re.split(r"^resource ", path.read_text(), flags=re.M)[1:]:
            if not re.match(r"\w+ '(Microsoft\.Insights/(scheduledQueryRules|metricAlerts|activityLogAlerts))@", block):
                continue
            name = re.search(r"^  name: '([^']+)'", block, re.M)
            display = re.search(r"displayName: '([^']+)'", block)
            assert name and display, block[:200]
            found.append((name.group(1), display.group(1)))
    return found


def test_bicep_declares_the_alerts_this_test_expects():
    """The alert parser finds the rules (a parser that finds none would make the next test vacuous)."""
    names = {name for name, _ in _alerts()}
    assert {"stockcast-training-failed", "stockcast-rollout-failed", "stockcast-champion-worse-live"} <= names
    assert len(names) >= 7


@pytest.mark.parametrize(("name", "display"), _alerts(), ids=lambda v: v if v.startswith("stockcast-") else "")
def test_operations_doc_explains_every_alert(name, display):
    """Each alert has its section in docs/operations.md: what it means, where to look, what to do."""
    text = OPERATIONS.read_text()
    assert f"`{name}`" in text and f"*{display}*" in text
    title = display.removeprefix("Stockcast: ")
    heading = f"### {title[0].upper()}{title[1:]}\n"
    assert heading in text, heading
    section = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for part in ("**What it means.**", "**Where to look.**", "**What to do.**"):
        assert part in section, f"{title}: no {part}"


def test_operations_doc_names_only_metrics_the_app_emits():
    """Every stockcast.* metric docs/operations.md names is defined in functions/telemetry.py."""
    emitted = set(re.findall(r"\"(stockcast\.[a-z_.]+)\"", (ROOT / "functions" / "telemetry.py").read_text()))
    named = set(re.findall(r"[`\"](stockcast\.[a-z_]+(?:\.[a-z_]+)*)[`\"]", OPERATIONS.read_text()))
    assert named and sorted(named - emitted) == []


def test_readme_and_deploy_link_the_operations_page():
    """README.md and docs/deploy.md send readers to docs/operations.md for running it."""
    assert "docs/operations.md" in README.read_text()
    assert "docs/operations.md" in DEPLOY.read_text()


def test_architecture_is_a_description_not_a_log():
    """docs/architecture.md stays a short description: the picture, the decisions, no measurement logs."""
    text = ARCHITECTURE.read_text()
    assert len(text.splitlines()) < 450
    assert "## The picture" in text and "```" in text.split("## The picture", 1)[1]
    assert not re.search(r"\b20[2-9]\d-\d\d-\d\d\b", text), "a dated entry"


# ---- the commands and names the docs give exist -----------------------------------------------------------


def _code(text: str) -> str:
    """The fenced blocks and inline code spans of a Markdown text, one per line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return "\n".join([*fenced, *re.findall(r"`([^`\n]+)`", prose)])


def _devhost_commands() -> set[str]:
    text = "".join(path.read_text() for path in (ROOT / "devhost").rglob("*.py"))
    return set(re.findall(r"add_parser\(\s*\"([a-z-]+)\"", text))


CHECKED = [README, OPERATIONS, ARCHITECTURE]


@pytest.mark.parametrize("doc", CHECKED, ids=lambda p: p.name)
def test_docs_use_only_make_targets_and_devhost_commands_that_exist(doc):
    """`make X` names a Makefile target and `-m devhost X` a devhost subcommand."""
    code = _code(doc.read_text())
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    assert sorted(set(re.findall(r"\bmake ([a-z][a-z-]*)", code)) - targets) == []
    assert sorted(set(re.findall(r"-m devhost ([a-z][a-z-]*)", code)) - _devhost_commands()) == []


@pytest.mark.parametrize("doc", CHECKED, ids=lambda p: p.name)
def test_docs_name_only_files_that_exist(doc):
    """Repository paths the docs give (benchmarks/, bicep/, functions/, training_job/, tests/, docs/) exist."""
    text = doc.read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:benchmarks|bicep|functions|training_job|tests|docs)/[\w./-]*\w)", text))
    missing = sorted(p for p in paths if not (ROOT / p).exists() and "*" not in p)
    assert missing == []


def test_readme_settings_table_names_real_settings():
    """Every setting the README's Settings table names is read by the app, devhost or set by Bicep."""
    text = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = {name for row in rows for name in re.findall(r"`([A-Za-z][A-Za-z0-9_]*)`", row.split("|")[1])}
    sources = "".join(
        path.read_text()
        for path in [
            ROOT / "functions" / "settings.py",
            ROOT / "local.settings.sample.json",
            *(ROOT / "devhost").rglob("*.py"),
            *(ROOT / "bicep").rglob("*.bicep"),
        ]
    )
    assert rows and sorted(name for name in names if name not in sources) == []


def test_operations_doc_uses_standard_az_and_azd_commands():
    """The az command groups and azd verbs docs/operations.md gives are ones those tools have."""
    code = _code(OPERATIONS.read_text())
    groups = set(re.findall(r"(?:^|[\s($])az ([a-z][a-z0-9-]*)", code, re.M))
    assert groups and sorted(groups - {"ml", "aks", "storage", "monitor", "eventhubs", "apim"}) == []
    verbs = set(re.findall(r"(?:^|[\s($])azd ([a-z]+)", code, re.M))
    assert sorted(verbs - {"up", "down", "provision", "deploy", "env", "hooks", "show"}) == []
