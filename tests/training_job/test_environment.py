"""The Azure ML environment (training_job/environment/conda.yaml): it resolves, it trains and serves, and .venv agrees.

Nothing local installs conda.yaml's pip list, so a pin pip cannot satisfy would only show when Azure ML
builds the image. Here the list is resolved as that build resolves it, a venv of exactly that
resolution runs the training job and ``score.py`` (as subprocesses, so the venv holds nothing but the
pins), and .venv is held to the same versions of every package both pin. The resolution and the venv
are cached outside the clone (tests/aml_env.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from devhost.shared.processes import free_port, stop_group
from functions.train_trigger.aml_jobs import CONDA_FILE, TRAIN_COMMAND
from functions.train_trigger.aml_rollout import scoring_worker_environment
from tests import aml_env
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-dev.lock"
MODEL = "stockcast-lstm-attention"

# conda.yaml's packages that .venv does not hold, and why
AML_ONLY = {
    "azureml-mlflow": "Azure ML's MLflow tracking and registry plugin; locally MLflow runs on SQLite",
}
# packages both environments hold at different versions, and why that is safe. Every package conda.yaml
# pins has one version in both; of what the pins pull in, Azure ML may run newer releases than the lock
# (it resolves again at each build), never older ones unless listed here.
ALLOWED_DIFFERENCES = {
    # the Function App (requirements.txt) needs >= 12.31 for its storage client; azureml-mlflow 1.62 caps it
    # at 12.27.1; the two never share a process (the app never imports the training job, nor the job the app)
    "azure-storage-blob": "Function App >= 12.31, azureml-mlflow <= 12.27.1",
    # azureml-mlflow caps it at 2025.2; pandas may read time zones through it, and the zones the bars and
    # sessions use (UTC, America/New_York) have byte-identical zone files in both releases
    "pytz": "azureml-mlflow <= 2025.2",
    # 1.3 declares Requires-Python < 3.11, which pip honours; on 3.11 ai-edge-litert imports the standard
    # library's StrEnum and never this backport
    "backports-strenum": "1.3 is for Python < 3.11",
}
# what the pins pull in that goes into a saved model or serves it: one version in both, floating or not,
# so a model trained and served locally is one Azure ML would train and serve
IN_STEP = ("keras", "ml-dtypes", "h5py", "protobuf", "flatbuffers", "cloudpickle", "werkzeug", "flask")


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[aml_env.canonical(name)] = version
    return pins


def test_the_job_and_the_deployments_use_the_conda_file_these_checks_read():
    """The timer's job and deployments, job.yml and these checks all name the one conda.yaml."""
    import yaml

    job = yaml.safe_load((ROOT / "training_job" / "job.yml").read_text())
    assert CONDA_FILE == aml_env.CONDA_FILE
    assert (ROOT / "training_job" / job["environment"]["conda_file"]).resolve() == aml_env.CONDA_FILE
    assert job["environment"]["image"].startswith("mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04")
    assert "python=3.11" in yaml.safe_load(aml_env.CONDA_FILE.read_text())["dependencies"]


def test_every_aml_pin_is_exact_and_held_by_the_local_venv_at_the_same_version():
    """conda.yaml pins name==version; .venv's lock and installs hold each of those versions (or say why not)."""
    pins = aml_env.conda_pins()
    lock = _lock()
    assert pins["mlflow"] == "3.15.0"  # azureml-mlflow 1.62.0.post6 caps mlflow-skinny at 3.15.0
    mismatches = {}
    for name, version in pins.items():
        if name in AML_ONLY:
            assert name not in lock, f"{name} is in .venv now: take it off AML_ONLY"
            continue
        installed = importlib.metadata.version(name)
        if (lock.get(name), installed) != (version, version) and name not in ALLOWED_DIFFERENCES:
            mismatches[name] = {"conda.yaml": version, "requirements-dev.lock": lock.get(name), ".venv": installed}
    assert mismatches == {}
    # mlflow's own parts move with it
    assert lock["mlflow-skinny"] == lock["mlflow-tracing"] == pins["mlflow"]


@pytest.fixture(scope="module")
def resolution() -> aml_env.Resolution:
    """conda.yaml's pip list as the image build resolves it (cached a day); pip's explanation where it cannot."""
    try:
        return aml_env.resolve()
    except aml_env.ResolutionError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.integration
@pytest.mark.slow
def test_the_pip_list_resolves_as_the_image_build_resolves_it_and_keeps_every_pin(resolution):
    """Pip finds a Python 3.11 / Linux x86_64 set for conda.yaml, with every pinned version as pinned."""
    pins = aml_env.conda_pins()
    assert {name: resolution.packages.get(name) for name in pins} == pins
    assert len(resolution.packages) > 2 * len(pins)  # the transitive packages came too
    assert resolution.packages["mlflow-skinny"] == pins["mlflow"]
    assert resolution.report.is_relative_to(aml_env.cache_root()) and not resolution.report.is_relative_to(ROOT)


@pytest.mark.integration
@pytest.mark.slow
def test_the_local_venv_holds_the_resolutions_versions_of_what_both_hold(resolution):
    """What .venv shares with the Azure ML resolution: the same version, or newer in Azure, or a listed difference."""
    from packaging.version import Version

    lock, aml = _lock(), resolution.packages
    shared = sorted(set(lock) & set(aml))
    differ = {name: {"azure ml": aml[name], ".venv": lock[name]} for name in shared if aml[name] != lock[name]}
    out_of_step = {
        name: versions
        for name, versions in differ.items()
        if name not in ALLOWED_DIFFERENCES and (name in IN_STEP or Version(aml[name]) < Version(lock[name]))
    }
    assert out_of_step == {}, "update requirements-dev.lock, or list the difference in ALLOWED_DIFFERENCES"
    assert set(ALLOWED_DIFFERENCES) <= set(differ), "a listed difference is gone: take it off ALLOWED_DIFFERENCES"
    assert set(IN_STEP) <= set(shared) and len(shared) > 100


@pytest.fixture(scope="module")
def aml_venv(resolution) -> aml_env.Venv:
    """A venv of exactly the resolution (cached by the resolution's hash)."""
    return aml_env.build_venv(resolution)


def _venv_environment(venv: aml_env.Venv, **extra: str) -> dict[str, str]:
    """The environment with the venv first on PATH and nothing of .venv or this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    return {**env, "PATH": f"{venv.bin}{os.pathsep}{env.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@dataclass
class AmlRun:
    """The training job run in the Azure ML venv: its MLflow store, code folder, summary and log."""

    tracking_uri: str
    code: Path
    summary: dict
    log: str
    seconds: float


@pytest.fixture(scope="module")
def aml_trained(aml_venv, bars_dir, tmp_path_factory) -> AmlRun:
    """The timer's own command (TRAIN_COMMAND) in the venv, on a copy of the code folder as Azure ML uploads it."""
    home = tmp_path_factory.mktemp("aml-job")
    code = home / "wd"  # the job's working directory: Azure ML's is not named training_job either
    shutil.copytree(ROOT / "training_job", code, ignore=shutil.ignore_patterns("__pycache__", "mlruns", "*.pyc"))
    (home / "outputs").mkdir()
    command = (
        TRAIN_COMMAND.replace("/tmp/stockcast", str(home / "pkg"))  # the job's own /tmp, private here
        .replace("${{inputs.bars}}", str(bars_dir))
        .replace("${{inputs.model_name}}", MODEL)
        .replace("${{inputs.experiment}}", "aml-env")
        .replace("${{outputs.summary}}", str(home / "outputs"))
    )
    assert "${{" not in command
    tiny = {**TINY, "epochs": 1, "patience": 1}  # one epoch: this checks the environment, not the model
    command += "".join(f" --{key.replace('_', '-')} {value}" for key, value in tiny.items())
    uri = f"sqlite:///{home}/mlflow.db"
    # artifacts outside the working directory, as Azure ML keeps them in the workspace's store
    MlflowClient(uri).create_experiment("aml-env", artifact_location=(home / "artifacts").as_uri())
    start = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=code,
        env=_venv_environment(aml_venv, MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((home / "outputs" / "summary.json").read_text())
    return AmlRun(uri, code, summary, done.stderr, time.monotonic() - start)


@pytest.mark.integration
@pytest.mark.slow
def test_the_training_job_trains_and_registers_in_the_aml_environment(aml_trained, aml_venv):
    """The job runs on the pins alone: persistence is v1, the trained v2 is registered with its decision."""
    summary = aml_trained.summary
    assert (summary["version"], summary["kind"], summary["champion_version"]) == ("2", "lstm_attention", "1")
    assert summary["decision"] in {"promoted", "retained"} and summary["n_decision"] > 100
    assert math.isfinite(summary["metrics"]["model"]["log_rmse"]) and summary["metrics"]["model"]["log_rmse"] > 0
    client = MlflowClient(aml_trained.tracking_uri)
    assert client.get_model_version(MODEL, "1").tags["kind"] == "persistence"
    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["kind"] == "lstm_attention" and v2.tags["decision"] == summary["decision"]
    # the model records what trained it: the venv's versions, which are conda.yaml's pins
    requirements = Path(client.download_artifacts(v2.run_id, "model/requirements.txt")).read_text().split()
    pins = aml_env.conda_pins()
    recorded = dict(line.split("==") for line in requirements if "==" in line)
    assert recorded and {aml_env.canonical(n): v for n, v in recorded.items()} == {
        aml_env.canonical(n): pins[aml_env.canonical(n)] for n in recorded
    }


def _distributions(venv: aml_env.Venv) -> dict[str, str]:
    """Canonical name -> version of what the venv holds (it has no pip: asked through importlib.metadata)."""
    code = "import importlib.metadata as m; print('\\n'.join(f'{d.name}=={d.version}' for d in m.distributions()))"
    done = subprocess.run([str(venv.python), "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return {aml_env.canonical(line.split("==")[0]): line.split("==")[1] for line in done.stdout.split()}


@pytest.mark.integration
@pytest.mark.slow
def test_the_venv_holds_exactly_the_resolution(aml_venv, resolution):
    """Every package the image build would install, at its version, and nothing else (no pytest, no pip)."""
    assert _distributions(aml_venv) == resolution.packages
    assert not aml_venv.path.is_relative_to(ROOT)


def _bars(bars_dir: Path, symbol: str, n: int) -> list[dict]:
    """The last ``n`` bars of AAA's last day, renamed ``symbol``: a real request body's bars."""
    table = pq.read_table(sorted(bars_dir.glob("*.parquet"))[-1]).to_pandas()
    rows = table[table.symbol == "AAA"].tail(n)
    return [
        {"symbol": symbol, "ts": r.ts.isoformat(), "open": r.open, "high": r.high, "low": r.low, "close": r.close,
         "volume": int(r.volume)}
        for r in rows.itertuples()
    ]  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
def test_score_serves_the_trained_model_through_azmlinfsrv_in_the_aml_environment(aml_trained, aml_venv, bars_dir):
    """The venv's azmlinfsrv runs score.py's init() and run(): a finite forecast from v2, named and typed."""
    client = MlflowClient(aml_trained.tracking_uri)
    served = aml_trained.code.parent / "served"  # AZUREML_MODEL_DIR: the registered version's files
    model_dir = Path(client.download_artifacts(client.get_model_version(MODEL, "2").run_id, "model", str(served)))
    port = free_port()
    env = _venv_environment(
        aml_venv,
        AZUREML_MODEL_DIR=str(model_dir),
        STOCKCAST_MODEL_NAME=MODEL,
        STOCKCAST_MODEL_VERSION="2",
        **scoring_worker_environment(1),
    )
    entry = aml_trained.code / "score.py"  # the deployment's code folder, scoring_script="score.py"
    command = [str(aml_venv.bin / "azmlinfsrv"), "--entry_script", str(entry), "--port", str(port)]
    log = aml_trained.code.parent / "score.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=aml_trained.code, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        info, deadline = None, time.monotonic() + 120
        while info is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/score", timeout=2)
                info = response.json() if response.status_code == 200 else None
            except httpx.TransportError:
                time.sleep(0.5)
        assert info is not None, log.read_text()[-4000:]
        bars = _bars(bars_dir, "NEWCO", info["bars_needed"] + 30)[:-30]  # 15:29 New York: mid-session
        response = httpx.post(f"http://127.0.0.1:{port}/score", json={"bars": bars}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
    finally:
        stop_group(proc.pid)
    assert body["model"] == {"name": MODEL, "version": "2", "kind": "lstm_attention"}
    [row] = body["forecasts"]
    assert row["symbol"] == "NEWCO" and row["as_of"] == bars[-1]["ts"].replace("+00:00", "Z")
    assert math.isfinite(row["predicted_close"]) and abs(row["predicted_close"] / bars[-1]["close"] - 1) < 0.05
    assert row["interval"]["low"] < row["predicted_close"] < row["interval"]["high"]
    assert row["session_closed"] is False
    assert set(body["skill"]) == {"ratio_to_persistence", "p_value", "n", "evaluated_at"}
