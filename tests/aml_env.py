"""The Azure ML environment rebuilt here, from ``training_job/environment/conda.yaml`` and nothing else.

Azure ML builds the image of the training job and of the online deployments with conda on
``mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04``: Python 3.11, then pip resolving the file's pip
list afresh. :func:`resolve` asks pip the same question (``pip install --dry-run --report`` for
CPython 3.11 on Linux x86_64 wheels, nothing installed counted) and :func:`build_venv` installs exactly
that resolution into a virtual environment, where the tests run the job and ``score.py``.

Both are cached outside the clone (CI works on a fresh clone each time), under
``${XDG_CACHE_HOME:-~/.cache}/stockcast/aml-env/``: the resolution keyed by conda.yaml's hash, the
venv by the hash of the resolution it holds, so an unchanged file costs nothing on a rerun.
``make aml-env`` builds both; ``tests/training_job/test_environment.py`` uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_FILE = ROOT / "training_job" / "environment" / "conda.yaml"
# Azure ML resolves the transitive packages again at every image build, so they float there too: a
# resolution is trusted for a day, then asked again (a changed conda.yaml gets a new key at once)
RESOLUTION_TTL_S = 24 * 3600
# a venv nobody has used for a week is removed when another one is built
VENV_TTL_S = 7 * 24 * 3600
PYTHON_VERSION = "3.11"
# the base image is Ubuntu 22.04 (glibc 2.35) on x86_64: every wheel tag pip would accept there
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
    "any",
)
# part of the cache key: a change to how the question is asked must not reuse old answers
METHOD = f"pip-dry-run/{PYTHON_VERSION}/{','.join(PLATFORMS)}/1"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


class ResolutionError(RuntimeError):
    """pip found no set of packages satisfying the pins (the image build would fail the same way)."""


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it (``TA-Lib`` = ``ta_lib`` = ``ta-lib``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_pip_list(path: Path = CONDA_FILE) -> list[str]:
    """The pip list of conda.yaml, as Azure ML hands it to pip."""
    spec = yaml.safe_load(path.read_text())
    [pip] = [dep["pip"] for dep in spec["dependencies"] if isinstance(dep, dict) and "pip" in dep]
    return [str(line) for line in pip]


def conda_pins(path: Path = CONDA_FILE) -> dict[str, str]:
    """Canonical name -> version of every ``name==version`` in conda.yaml's pip list (ValueError otherwise)."""
    pins = {}
    for line in conda_pip_list(path):
        match = _PIN.match(line.strip())
        if match is None:
            raise ValueError(f"{path.name}: {line!r} is not pinned as name==version")
        pins[canonical(match[1])] = match[2]
    return pins


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/stockcast/aml-env``: outside the clone, kept between CI runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stockcast" / "aml-env"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def conda_key(path: Path = CONDA_FILE) -> str:
    """The resolution's cache key: conda.yaml's bytes and how the question is asked."""
    return _digest(METHOD + "\n" + path.read_text())


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An flock on ``cache_root()/name.lock``: one resolver or builder at a time (the kernel frees it on a crash)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Resolution:
    """What pip would install in the image: canonical name -> version, the report's path and its cost."""

    packages: dict[str, str]
    report: Path
    seconds: float
    cached: bool

    def requirements(self) -> str:
        """The resolution as a requirements file: every package pinned, sorted."""
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.packages.items()))


def _pip_environment() -> dict[str, str]:
    """The environment, less what Azure ML's pip would not see: pip config files, constraints, local wheels.

    The index (``PIP_INDEX_URL``, else PyPI), certificates and proxies stay.
    """
    env = {k: v for k, v in os.environ.items() if k not in {"PIP_CONSTRAINT", "PIP_FIND_LINKS", "PIP_NO_INDEX"}}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    return env


def _packages(report: Path) -> dict[str, str]:
    data = json.loads(report.read_text())
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in data["install"]}


def resolve(path: Path = CONDA_FILE, max_age_s: float = RESOLUTION_TTL_S) -> Resolution:
    """Resolve conda.yaml's pip list as the image build does, or reuse a resolution younger than ``max_age_s``.

    Only wheels are considered (``--platform`` requires it): a package that ships only a source
    distribution would fail here although Azure ML could build it. Raises :class:`ResolutionError`
    with pip's explanation when nothing satisfies the pins.
    """
    key = conda_key(path)
    folder = cache_root() / "resolutions" / key
    report = folder / "report.json"
    with _locked(f"resolve-{key}"):
        if report.exists() and time.time() - report.stat().st_mtime < max_age_s:
            return Resolution(_packages(report), report, 0.0, cached=True)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="aml-resolve-") as tmp:
            pins = Path(tmp) / "pins.txt"
            pins.write_text("\n".join(conda_pip_list(path)) + "\n")
            flags = "--dry-run --ignore-installed --quiet --disable-pip-version-check --only-binary=:all:"
            command = [
                *(sys.executable, "-m", "pip", "install", *flags.split()),
                *("--python-version", PYTHON_VERSION, "--implementation", "cp"),
                *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
                *("--target", str(Path(tmp) / "target"), "--report", str(Path(tmp) / "r.json"), "-r", str(pins)),
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=_pip_environment(), timeout=900)
            if done.returncode != 0:
                raise ResolutionError(f"pip could not resolve {path.name}:\n{(done.stdout + done.stderr)[-4000:]}")
            shutil.move(Path(tmp) / "r.json", report.with_suffix(".tmp"))
            report.with_suffix(".tmp").replace(report)  # atomic: a reader sees the old report or the new one
        return Resolution(_packages(report), report, time.monotonic() - start, cached=False)


@dataclass(frozen=True)
class Venv:
    """A virtual environment holding exactly one resolution."""

    path: Path
    seconds: float
    cached: bool

    @property
    def python(self) -> Path:
        """Its interpreter."""
        return self.path / "bin" / "python"

    @property
    def bin(self) -> Path:
        """Its scripts (``python``, ``azmlinfsrv``)."""
        return self.path / "bin"


def _uv() -> str:
    """The uv that `make setup` installs into .venv, else one on PATH."""
    here = Path(sys.executable).with_name("uv")
    return str(here) if here.exists() else shutil.which("uv") or "uv"


def build_venv(resolution: Resolution) -> Venv:
    """A venv of exactly ``resolution`` (CPython 3.11 + uv), built once per resolution and reused.

    The interpreter is this one's base (pyproject asks for 3.11, as conda.yaml does); uv installs
    the packages from its cache when it has them and compiles their bytecode once, here.
    """
    requirements = resolution.requirements()
    key = _digest(requirements)
    root = cache_root()
    path = root / f"venv-{key}"
    stamp = path / ".complete"
    with _locked(f"venv-{key}"):
        if stamp.exists():
            stamp.touch()  # its last use, for the clean-up below
            return Venv(path, 0.0, cached=True)
        start = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)  # a build that died half way
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
        (path / "requirements.txt").write_text(requirements)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PYTHON"))}
        for args in (
            ["install", "--quiet", "--compile-bytecode", "--only-binary=:all:", "-r", str(path / "requirements.txt")],
            ["check"],
        ):
            done = subprocess.run(
                [_uv(), "pip", *args, "--python", str(path / "bin" / "python")],
                capture_output=True,
                text=True,
                env=env,
                timeout=1800,
            )
            if done.returncode != 0:
                raise RuntimeError(f"uv pip {args[0]} failed for {path}:\n{(done.stdout + done.stderr)[-4000:]}")
        stamp.write_text(json.dumps({"report": str(resolution.report)}))
    _remove_unused_venvs(keep=path)
    return Venv(path, time.monotonic() - start, cached=False)


def _remove_unused_venvs(keep: Path) -> None:
    """Delete the venvs of older resolutions that nothing has used for a week (their lock held while deleting)."""

    def unused(venv: Path) -> bool:
        stamp = venv / ".complete"
        return not stamp.exists() or time.time() - stamp.stat().st_mtime > VENV_TTL_S

    for other in cache_root().glob("venv-*"):
        if other == keep or not other.is_dir() or not unused(other):
            continue
        with _locked(other.name):
            if unused(other):  # asked again under the lock: a build may just have finished it
                shutil.rmtree(other, ignore_errors=True)


def main() -> int:
    """``make aml-env``: resolve, build, and say where the venv is."""
    resolution = resolve()
    took = "cached" if resolution.cached else f"{resolution.seconds:.0f} s"
    sys.stdout.write(f"resolution: {len(resolution.packages)} packages, {took} ({resolution.report})\n")
    venv = build_venv(resolution)
    sys.stdout.write(f"venv: {venv.path} ({'cached' if venv.cached else f'{venv.seconds:.0f} s'})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
