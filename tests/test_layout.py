"""Project rules: the Function App stays light and reads the environment in one place only."""

from __future__ import annotations

import ast
import os
import subprocess
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


FIRST_PARTY = ("functions", "devhost", "training_job", "function_app")
FUNCTION_PACKAGES = ("ingest", "predict", "train_trigger", "compact")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports, at any depth of the file (lazy imports too)."""
    paths = [p for top in FIRST_PARTY[:-1] for p in ROOT.joinpath(top).rglob("*.py")] + [ROOT / "function_app.py"]
    modules = {_module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports the module pkg.mod where there is one
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    """No first-party module imports itself through others, lazily or not."""
    assert _cycles(_module_graph()) == []


# devhost's top level is its command line: the CLI, its console views and the commands' stories
DEVHOST_CLI = {
    "devhost",
    "devhost.__main__",
    "devhost.demo",
    "devhost.narrate",
    "devhost.services",
    "devhost.up",
    "devhost.views",
}


def _devhost_subpackage(module: str) -> str | None:
    """The devhost subpackage ``module`` belongs to (``kafka`` for devhost.kafka.broker); None for the top level."""
    parts = module.split(".")
    if parts[0] != "devhost" or len(parts) < 2 or not ROOT.joinpath("devhost", parts[1]).is_dir():
        return None
    return parts[1]


def test_devhost_subpackages_never_import_the_command_line():
    """Only the CLI sits at devhost's top level, and no module of a subpackage imports it (no upward imports)."""
    graph = _module_graph()
    top = {m for m in graph if m.split(".")[0] == "devhost" and _devhost_subpackage(m) is None}
    assert top == DEVHOST_CLI
    offenders = [f"{m} -> {t}" for m, imports in graph.items() if _devhost_subpackage(m) for t in imports if t in top]
    assert offenders == []


def test_devhost_subpackages_import_one_another_without_cycles():
    """The devhost subpackages form a layered graph: none imports itself through the others, lazily or not."""
    packages: dict[str, set[str]] = {}
    for module, imports in _module_graph().items():
        if part := _devhost_subpackage(module):
            targets = {_devhost_subpackage(t) for t in imports} - {None, part}
            packages.setdefault(part, set()).update(t for t in targets if t)
    assert len(packages) > 1 and _cycles(packages) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder_finds_cycles(graph, expected):
    """The cycle check itself reports a loop of imports and nothing else."""
    assert _cycles(graph) == expected


def test_function_packages_import_no_other_package_internals():
    """The function packages (forecast aside) import only their own modules, shared ones, settings and telemetry."""
    allowed_common = ("functions.shared", "functions.settings", "functions.telemetry")
    offenders = []
    for module, imports in _module_graph().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[0] != "functions" or parts[1] not in FUNCTION_PACKAGES:
            continue
        own = f"functions.{parts[1]}"
        for target in imports:
            if not (target == own or target.startswith(own + ".") or target.startswith(allowed_common)):
                offenders.append(f"{module} -> {target}")
    assert offenders == []


def test_app_package_holds_no_local_only_code():
    """Nothing under functions/ imports devhost, and the Function App package leaves devhost out."""
    graph = _module_graph()
    offenders = [
        f"{m} -> {t}"
        for m, imports in graph.items()
        if m.startswith("functions")
        for t in imports
        if t.startswith("devhost")
    ]
    assert offenders == []
    ignored = (ROOT / ".funcignore").read_text().split()
    assert {"devhost/", "tests/", "benchmarks/"} <= set(ignored)


def test_shared_contracts_are_shared():
    """Ingest and predict both import the shared bars and latest/ contracts."""
    graph = _module_graph()
    users = {
        t: {m.split(".")[1] for m, imports in graph.items() if t in imports and m.startswith("functions.")}
        for t in ("functions.shared.bars", "functions.shared.latest")
    }
    assert {"ingest", "predict"} <= users["functions.shared.bars"] | users["functions.shared.latest"]
    assert {"ingest", "predict"} <= users["functions.shared.latest"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_lock_holds_every_pin_of_the_requirements():
    """requirements-dev.lock (what make setup installs) has each pinned requirement at its pinned version."""
    lock = _pins(ROOT / "requirements-dev.lock")
    wanted = {**_pins(ROOT / "requirements.txt"), **_pins(ROOT / "requirements-dev.txt")}
    assert {name: lock.get(name) for name in wanted} == wanted


def test_make_setup_says_nothing_when_everything_is_installed() -> None:
    """With every stamp up to date, `make setup` (run before each target) prints no make[1] line at all."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # as a user runs it
    stamps = [".venv/.installed", ".venv-infra/.installed", "node_modules/.installed"]
    if subprocess.run(["make", "-q", *stamps], cwd=ROOT, env=env, capture_output=True).returncode != 0:
        pytest.skip("a stamp is out of date here: make setup would install, and say so")
    done = subprocess.run(["make", "setup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def _python_files() -> list[Path]:
    """Every first-party Python file: the app, devhost, the training job, benchmarks and tests."""
    folders = ("functions", "devhost", "training_job", "benchmarks", "tests")
    return sorted([ROOT / "function_app.py", *(p for f in folders for p in ROOT.joinpath(f).rglob("*.py"))])


def test_every_module_says_what_it_is_for():
    """Each module opens with a docstring whose first line says what it is for."""
    missing = [
        str(p.relative_to(ROOT))
        for p in _python_files()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip().splitlines()[:1]
    ]
    assert missing == []
