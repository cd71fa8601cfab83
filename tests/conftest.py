"""Session fixtures: a real Azurite started once, and app settings pointing at it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pytest
import stamina
from azure.storage.blob import ContainerClient

from devhost.app.runtime import Runtime, prepare
from devhost.market.feed import FeedConfig, write_bars
from devhost.serving import local_rollout
from devhost.shared.home import home_lock
from devhost.shared.processes import alive, free_port, stop_group
from devhost.storage import azurite
from functions.settings import get_settings
from functions.shared.storage import bars_container
from training_job.config import TrainConfig

# the order files are handed to xdist workers: whole-pipeline runs first, unit tests last, so the
# run ends on short files instead of one worker running a minute-long scenario while the other idles
# (xdist's own reorder, by test count, put the one-test scenarios last: see `make test`)
_HEAVIEST_FIRST = ("e2e", "slow", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sort files by their heaviest marker (e2e, slow, integration, the rest); tests keep their order in a file."""
    rank: dict[Path, int] = {}
    for item in items:
        marks = [i for i, name in enumerate(_HEAVIEST_FIRST) if item.get_closest_marker(name)]
        mine = marks[0] if marks else len(_HEAVIEST_FIRST)
        rank[item.path] = min(rank.get(item.path, mine), mine)
    items.sort(key=lambda item: rank[item.path])  # stable: the collection order within a rank and a file


@pytest.fixture(scope="session", autouse=True)
def _retries_without_waiting() -> Iterator[None]:
    """Stamina's test mode: retries keep their attempt caps but never sleep."""
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """Azurite in a private $STOCKCAST_HOME on a free port, with the app settings exported."""
    saved = dict(os.environ)
    os.environ["STOCKCAST_HOME"] = str(tmp_path_factory.mktemp("stockcast-home"))
    os.environ["STOCKCAST_AZURITE_PORT"] = "0"  # any free port, never the developer's own Azurite
    os.environ["SCORING_PORT"] = str(free_port())  # nor the developer's scoring server
    os.environ["SCORING_WORKERS"] = "1"  # one TensorFlow process per scoring server keeps parallel tests light
    os.environ.pop("BarsStorage", None)
    get_settings.cache_clear()
    bars_container.cache_clear()
    rt = prepare()
    yield rt
    azurite.stop(rt.home)
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()
    bars_container.cache_clear()


@pytest.fixture
def container(runtime: Runtime) -> ContainerClient:
    """The bars container, emptied before the test."""
    for blob in runtime.container.list_blobs():
        runtime.container.delete_blob(blob.name)
    return runtime.container


@contextmanager
def mlflow_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a while; set_tracking_uri also rewrites the env var."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(previous)
            os.environ["MLFLOW_TRACKING_URI"] = previous


@contextmanager
def mlflow_registry(uri: str) -> Iterator[None]:
    """Send MLflow's registry calls to ``uri`` for a while (the tracking URI stays); then back to the default."""
    previous = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_registry_uri(previous or "")  # empty: the registry follows the tracking URI again
        if previous is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


TINY = dict(epochs=2, units=8, window=20, batch_size=128, min_windows_per_symbol=100, patience=2, seeds=1)


@dataclass
class Trained:
    """Two runs against one registry: a normal one (after persistence, v1) and a deliberately crippled one."""

    home: Path
    tracking_uri: str
    config: TrainConfig
    first: dict
    second: dict


@pytest.fixture(scope="session")
def bars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four trading days of bars for three symbols, written by the ingest code."""
    folder = tmp_path_factory.mktemp("bars")
    write_bars(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=4, seed=3), folder)
    return folder


def _train_twice(home: Path, bars: Path) -> tuple[TrainConfig, dict, dict]:
    from tests.training_job.azureml_mlflow import registry_uri
    from training_job.train import run

    uri = f"sqlite:///{home}/mlflow.db"
    cwd = Path.cwd()
    os.chdir(home)  # MLflow's default artifact root is relative to the working directory
    try:
        # every registry call the job makes goes through the stand-in that refuses what Azure ML's
        # MLflow registry does not support (its aliases let test_train read the roles as aliases)
        with mlflow_store(uri), mlflow_registry(registry_uri(home / "mlflow.db", aliases=True)):
            cfg = TrainConfig(bars=bars, experiment="tests", summary_out=home / "first.json", **TINY)
            first = run(cfg)
            # one more day: a decision needs windows after the last one's watermark, else the job skips
            more = home / "bars-more"
            write_bars(FeedConfig(symbols=("AAA", "BBB", "CCC"), days=5, seed=3), more)
            crippled = replace(cfg, bars=more, learning_rate=5.0, units=2, epochs=1, summary_out=home / "second.json")
            second = run(crippled)
    finally:
        os.chdir(cwd)
    return cfg, first, second


@pytest.fixture(scope="session")
def trained(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory, bars_dir: Path) -> Iterator[Trained]:
    """Train twice against a private MLflow store: v1 is persistence, v2 promotes, crippled v3 is retained.

    Under pytest-xdist the first worker that needs it trains into the run's shared temp folder and
    the others read the same store (tests only read it), so the session trains once.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        home = tmp_path_factory.mktemp("mlflow")
        cfg, first, second = _train_twice(home, bars_dir)
        yield Trained(home, f"sqlite:///{home}/mlflow.db", cfg, first, second)
        return
    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, shared by its workers
    home = shared / "trained"
    with home_lock(shared, "trained"):  # an flock: one worker trains, the others wait and read
        if not (home / "trained.json").exists():
            home.mkdir(exist_ok=True)
            cfg, first, second = _train_twice(home, bars_dir)
            (home / "trained.json").write_text(json.dumps({"bars": str(bars_dir), "first": first, "second": second}))
        done = json.loads((home / "trained.json").read_text())
    cfg = TrainConfig(bars=Path(done["bars"]), experiment="tests", summary_out=home / "first.json", **TINY)
    yield Trained(home, f"sqlite:///{home}/mlflow.db", cfg, done["first"], done["second"])


@dataclass
class Served:
    """The champion of ``trained`` behind azmlinfsrv, as the endpoint would serve it."""

    url: str
    port: int
    info: dict
    pid: int  # azmlinfsrv's, which leads the process group of its workers


def _start_champion_server(trained: Trained, folder: Path, port: int) -> tuple[int, dict]:
    """Azmlinfsrv on ``port`` serving the trained champion from a copy under ``folder``: (pid, its info)."""
    with mlflow_store(trained.tracking_uri):  # models:/ URIs resolve through the global registry URI
        model_dir = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{trained.config.model_name}@champion", dst_path=str(folder / "model")
            )
        )
    version = trained.first["champion_after"]["version"]
    log = folder / "score.log"
    proc = local_rollout.start_scoring_server(model_dir, port, trained.config.model_name, version, log)
    try:
        return proc.pid, local_rollout.wait_healthy(port, proc)
    except BaseException:
        stop_group(proc.pid)
        raise


@pytest.fixture(scope="session")
def champion_server(runtime: Runtime, trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Azmlinfsrv serving the trained champion (v2); SCORING_PORT points at it.

    Under pytest-xdist the workers share one server (a start costs ~3 s of CPU; ~11 s while it
    imported TensorFlow): a worker starts it unless one answers, and the last worker to finish
    stops it. Tests only read from it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    shared = tmp_path_factory.getbasetemp()
    if worker != "main":
        shared = shared.parent  # one folder per run, shared by its workers
    folder, users = shared / "champion-server", shared / "champion-server" / "users"
    with home_lock(shared, "champion-server"):
        users.mkdir(parents=True, exist_ok=True)
        record = folder / "server.json"
        state = json.loads(record.read_text()) if record.exists() else None
        if state is None or not alive(state["pid"]) or local_rollout.scoring_info(state["port"]) is None:
            port = free_port()
            pid, info = _start_champion_server(trained, Path(tempfile.mkdtemp(dir=folder)), port)
            state = {"pid": pid, "port": port, "info": info}
            record.write_text(json.dumps(state))
        (users / worker).touch()
    os.environ["SCORING_PORT"] = str(state["port"])
    get_settings.cache_clear()
    try:
        yield Served(f"http://127.0.0.1:{state['port']}/score", state["port"], state["info"], state["pid"])
    finally:
        with home_lock(shared, "champion-server"):
            (users / worker).unlink(missing_ok=True)
            if not any(users.iterdir()):
                stop_group(state["pid"])
                record.unlink(missing_ok=True)
