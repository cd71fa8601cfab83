"""The local rollout's faults, through real processes.

Loopback and the least environment, one reconcile at a time, unrecorded servers adopted or stopped,
half-made model folders fetched again, a damaged MLflow store named with what to do.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient

from devhost.jobs.local_jobs import LocalSubmitter
from devhost.services import status
from devhost.serving.local_rollout import (
    DOWNLOADED,
    HOME_VARIABLE,
    SCORING_PASSTHROUGH,
    LocalRollout,
    scoring_info,
    serving_state,
    stop_serving,
)
from devhost.serving.mlflow_store import StoreDamagedError, check_store, damage
from devhost.shared.processes import (
    alive,
    environment_of,
    free_port,
    group_leaders_with,
    listening,
    started,
    stop_group,
)
from functions.settings import Settings
from tests.conftest import Trained, mlflow_store

ROOT = Path(__file__).resolve().parents[3]
SECRETS = {
    "BarsStorage": "DefaultEndpointsProtocol=http;AccountName=devstore;AccountKey=c2VjcmV0LWtleQ==;",
    "AZURE_STORAGE_KEY": "c2VjcmV0LWtleQ==",
    "AZURE_CLIENT_SECRET": "client-secret",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
}
# what the scoring server sets for itself, beside what it may take from its parent (SCORING_PASSTHROUGH)
OWN = {
    "AZUREML_MODEL_DIR",
    "STOCKCAST_MODEL_NAME",
    "STOCKCAST_MODEL_VERSION",
    "TF_CPP_MIN_LOG_LEVEL",
    "PYTHONPATH",
    "WORKER_COUNT",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    HOME_VARIABLE,
}


def _settings(home: Path, trained: Trained, port: int) -> Settings:
    """Local-backend settings: ``home``, the trained registry, ``port``, one scoring worker."""
    return Settings(
        "bars",
        "bars",
        "$Default",
        "0 */5 * * * *",
        model_name=trained.config.model_name,
        stockcast_home=str(home),
        mlflow_tracking_uri=trained.tracking_uri,
        scoring_port=port,
        scoring_workers=1,
    )


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...); empty if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _pids() -> list[int]:
    """Every pid in /proc."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _servers_on(port: int) -> list[int]:
    """The process groups (by leader) holding a socket that listens on TCP ``port``: the scoring servers of that port.

    Found by the socket's inode, so a process that renamed itself (gunicorn's ``setproctitle``) is found too.
    """
    inodes = {f"socket:[{inode}]" for _, inode in _listeners(port)}
    groups = set()
    for pid in _pids():
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:  # gone, or another user's
            continue
        if links & inodes and (stat := _stat(pid)) and stat[0] != "Z":
            groups.add(int(stat[2]))
    return sorted(groups)


def _group(leader: int) -> list[int]:
    """The live processes of ``leader``'s group: the server and its gunicorn workers."""
    return [pid for pid in _pids() if (stat := _stat(pid)) and stat[0] != "Z" and int(stat[2]) == leader]


def _listeners(port: int) -> list[tuple[str, str]]:
    """(local address, socket inode) of each socket listening on TCP ``port``, IPv4 and IPv6, from /proc/net."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
        for row in rows:
            address, hex_port = row[1].split(":")
            if int(hex_port, 16) == port and row[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)  # each 32-bit word in host (little-endian) order
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, packed), row[9]))
    return sorted(found)


def _reconcile_process(home: Path, trained: Trained, port: int, tick: str) -> subprocess.Popen:
    """``tests.devhost.serving.rollout_worker``: one reconcile in a process of its own."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.devhost.serving.rollout_worker",
            str(home),
            trained.tracking_uri,
            trained.config.model_name,
            str(port),
            tick,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": trained.tracking_uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.fixture
def port(trained: Trained) -> Iterator[int]:
    """A free scoring port, with MLflow pointed at the trained store as devhost points it at its own.

    Every server left on the port is stopped afterwards.
    """
    chosen = free_port()
    with mlflow_store(trained.tracking_uri):
        yield chosen
    for pid in _servers_on(chosen):
        stop_group(pid)


@pytest.mark.integration
@pytest.mark.slow
def test_the_scoring_server_listens_on_loopback_only_with_the_least_environment(trained, tmp_path, port, monkeypatch):
    """The server binds 127.0.0.1 only; neither it nor its worker holds a storage key, Azure setting or secret."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    assert LocalRollout(_settings(home, trained, port)).reconcile("tick-env0") == "rolled out v2"
    leader = serving_state(home)["pid"]
    group = _group(leader)
    assert [address for address, _ in _listeners(port)] == ["127.0.0.1"]
    assert len(group) == 2  # azmlinfsrv (gunicorn's master) and its one worker
    expected = {name for name in SCORING_PASSTHROUGH if name in os.environ} | OWN
    for pid in group:
        env = environment_of(pid)
        assert set(env) == expected
        assert [name for name, value in env.items() if any(secret in value for secret in SECRETS.values())] == []
        assert (env[HOME_VARIABLE], env["STOCKCAST_MODEL_VERSION"], env["PYTHONPATH"]) == (
            str(home.resolve()),
            "2",
            str(ROOT),
        )
    assert stop_serving(home) is True
    assert (_servers_on(port), listening(port)) == ([], False)


@pytest.mark.integration
@pytest.mark.slow
def test_three_concurrent_reconciles_leave_one_recorded_server_and_stop_leaves_none(trained, tmp_path, port):
    """Three reconciles at once, each a process: all succeed, one server runs, recorded; `devhost stop` ends it."""
    home = tmp_path / "home"
    racers = [_reconcile_process(home, trained, port, f"tick-race{i}") for i in range(3)]
    outcomes = [racer.communicate(timeout=300)[0].strip() for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], outcomes
    assert sorted(outcomes) == ["rolled out v2", "serving v2", "serving v2"]
    servers = _servers_on(port)
    assert len(servers) == 1
    assert group_leaders_with(HOME_VARIABLE, str(home.resolve())) == servers  # no other server of this home runs
    recorded = serving_state(home)
    assert (recorded["pid"], recorded["port"], recorded["version"], "recorded" in recorded) == (
        servers[0],
        port,
        "2",
        False,
    )
    assert LocalRollout(_settings(home, trained, port)).reconcile("tick-next") == "serving v2"
    assert _servers_on(port) == servers  # nothing restarted

    stop = subprocess.run(
        [sys.executable, "-m", "devhost", "stop"],
        cwd=ROOT,
        env={**os.environ, "STOCKCAST_HOME": str(home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stderr[-2000:]
    assert f"stopped: scoring server ({home.resolve()})" in stop.stdout
    assert (_servers_on(port), listening(port), serving_state(home)) == ([], False, None)
    assert not (home / "serving" / "current.json").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_a_reconcile_killed_while_its_server_starts_leaves_a_server_the_next_one_adopts(trained, tmp_path, port):
    """A reconcile killed (-9) between starting its server and recording it: the next one adopts the server."""
    home = tmp_path / "home"
    racer = _reconcile_process(home, trained, port, "tick-kill")
    deadline = time.monotonic() + 120
    while not (strays := group_leaders_with(HOME_VARIABLE, str(home.resolve()))) and time.monotonic() < deadline:
        assert racer.poll() is None, racer.communicate()[0]
        time.sleep(0.02)
    os.kill(racer.pid, signal.SIGKILL)
    racer.wait(10)
    assert len(strays) == 1
    assert not (home / "serving" / "current.json").exists()  # recorded only once it answers
    unrecorded = serving_state(home)
    assert unrecorded == {
        "pid": strays[0],
        "pid_started": started(strays[0]),
        "port": port,
        "version": "2",
        "model": (home / "serving" / "2" / DOWNLOADED).read_text(),
        "recorded": False,
    }
    row = next(service for service in status(home) if service.name == "scoring server")
    assert (row.pid, row.detail) == (
        strays[0],
        f"azmlinfsrv http://127.0.0.1:{port}/score, model v2 (unrecorded: the next reconcile adopts or stops it)",
    )
    assert LocalRollout(_settings(home, trained, port)).reconcile("tick-heal") == "adopted v2"
    recorded = serving_state(home)
    assert (recorded["pid"], "recorded" in recorded, scoring_info(port)["model"]["version"]) == (strays[0], False, "2")
    assert LocalRollout(_settings(home, trained, port)).reconcile("tick-after") == "serving v2"
    assert stop_serving(home) is True
    assert (_servers_on(port), group_leaders_with(HOME_VARIABLE, str(home.resolve()))) == ([], [])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("heal", "outcome", "servers_after"),
    [
        (lambda rollout, home: rollout.reconcile("tick-orphan"), "rolled out v2", 1),
        (lambda rollout, home: stop_serving(home), True, 0),
    ],
    ids=["reconcile", "stop"],
)
def test_workers_a_killed_server_leaves_on_its_port_are_stopped(
    trained, tmp_path, port, heal: Callable[[LocalRollout, Path], object], outcome: object, servers_after: int
):
    """The server's leader killed (-9) alone leaves its workers on the port: the next reconcile, or stop, ends them.

    The worker is stopped (SIGSTOP) first: a gunicorn worker notices its leader gone only when a connection or a
    signal wakes it, so a stopped one stands for a sleeping one that nothing wakes, and the ending must continue it.
    """
    home = tmp_path / "home"
    rollout = LocalRollout(_settings(home, trained, port))
    assert rollout.reconcile("tick-first") == "rolled out v2"
    leader = serving_state(home)["pid"]
    workers = [pid for pid in _group(leader) if pid != leader]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    os.kill(leader, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(leader) and time.monotonic() < deadline:
        time.sleep(0.02)
    # no server, yet the port is held (read in /proc, where no connection wakes the worker)
    assert (len(workers), serving_state(home), [address for address, _ in _listeners(port)]) == (1, None, ["127.0.0.1"])
    assert heal(rollout, home) == outcome
    assert [pid for pid in workers if alive(pid)] == []
    assert len(_servers_on(port)) == servers_after


def _only_mlmodel(home: Path, trained: Trained) -> None:
    """``serving/2`` as a download that died after its first file."""
    (home / "serving" / "2").mkdir(parents=True)
    (home / "serving" / "2" / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")


def _another_registrys_v2(home: Path, trained: Trained) -> None:
    """``serving/2`` whole, but a different model: persistence (v1), as a registry started afresh would make v2."""
    registry = MlflowClient(trained.tracking_uri, registry_uri=trained.tracking_uri)
    source = registry.get_model_version_download_uri(trained.config.model_name, "1")
    mlflow.artifacts.download_artifacts(source, dst_path=str(home / "serving" / "2"), tracking_uri=trained.tracking_uri)
    (home / "serving" / "2" / DOWNLOADED).write_text("0 models:/m-another-registry")


def _a_dead_download(home: Path, trained: Trained) -> None:
    """No ``serving/2``, and the temp folder of a download whose process died."""
    (home / "serving" / ".download-2-dead").mkdir(parents=True)
    (home / "serving" / ".download-2-dead" / "MLmodel").write_text("artifact_path: model\n")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("make", [_only_mlmodel, _another_registrys_v2, _a_dead_download])
def test_a_model_folder_not_made_whole_is_fetched_again(trained, tmp_path, port, make):
    """A half-made (or another registry's) model folder is replaced by the next reconcile, which serves the champion."""
    home = tmp_path / "home"
    make(home, trained)
    rollout = LocalRollout(_settings(home, trained, port))
    try:
        assert rollout.reconcile("tick-half") == "rolled out v2"
        assert scoring_info(port)["model"] == {
            "name": trained.config.model_name,
            "version": "2",
            "kind": trained.first["champion_after"]["kind"],
        }
        assert (home / "serving" / "2" / DOWNLOADED).read_text() == rollout._identity("2")
        assert sorted(p.name for p in (home / "serving").iterdir() if p.name.startswith(".download")) == []
    finally:
        stop_serving(home)


def _valid(path: Path) -> None:
    """A SQLite database of about 2 MB (a table and an index)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [(str(i) * 50,) for i in range(5000)])
        db.execute("CREATE INDEX t_x ON t (x)")
    sqlite3.connect(path).close()


def _truncated(path: Path) -> None:
    """A valid database cut in half, as a full disk or a crash of a copy leaves it."""
    _valid(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda path: path.write_bytes(b"not a database\n" * 300), "file is not a database"),
        (_truncated, "database disk image is malformed"),
        (_valid, None),
        (lambda path: path.write_bytes(b""), None),  # SQLite's empty database: MLflow creates its tables
        (lambda path: None, None),  # no file yet: MLflow creates it
    ],
    ids=["garbage", "truncated", "valid", "empty", "missing"],
)
def test_what_is_wrong_with_a_store_file(tmp_path, make, expected):
    """Garbage and a truncated database are damaged, and say how; a valid, empty or missing file is not."""
    path = tmp_path / "mlflow.db"
    make(path)
    assert damage(path) == expected


def test_a_damaged_store_names_the_file_the_fault_and_the_command(tmp_path):
    """The message: which file, what is wrong, and the one command that moves it aside."""
    path = tmp_path / "mlflow" / "mlflow.db"
    path.parent.mkdir()
    path.write_bytes(b"not a database\n" * 300)
    check_store("file:///elsewhere")  # not a SQLite store: nothing to check
    with pytest.raises(StoreDamagedError) as raised:
        check_store(f"sqlite:///{path}")
    assert str(raised.value) == (
        f"the local MLflow store {path} is damaged (file is not a database): its registry and runs cannot be read, "
        "so devhost can neither train nor serve. devhost does not discard a registry by itself. "
        "To start a new store (the next training registers persistence as v1 again), stop what reads it "
        f"and move the file aside:\n  python -m devhost stop && mv {path} {path}.corrupt"
    )


@pytest.mark.parametrize(
    "duty",
    [
        lambda settings: LocalRollout(settings).reconcile("tick-dmg0"),
        lambda settings: LocalSubmitter(settings, None).submit_unless_active(  # type: ignore[arg-type]
            "tick-dmg0", dt.datetime(2026, 11, 4, 20, 0, tzinfo=dt.UTC)
        ),
    ],
    ids=["rollout", "training"],
)
def test_each_duty_of_a_tick_on_a_damaged_store_fails_with_what_to_do(tmp_path, duty: Callable[[Settings], object]):
    """The rollout and the training submission both refuse a damaged store with its message, having started nothing."""
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"not a database\n" * 300)
    settings = Settings(
        "bars",
        "bars",
        "$Default",
        "0 */5 * * * *",
        stockcast_home=str(tmp_path),
        mlflow_tracking_uri=f"sqlite:///{path}",
    )
    with pytest.raises(StoreDamagedError, match=r"mv .*mlflow\.db .*mlflow\.db\.corrupt$"):
        duty(settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no lock, no job, no serving folder


@pytest.mark.integration
@pytest.mark.slow
def test_devhost_train_on_a_damaged_store_says_what_to_do_without_a_traceback(tmp_path):
    """`devhost train` on a garbage mlflow.db exits 1 with the file, the fault and the command; no traceback, no job."""
    home = tmp_path / "home"
    db = home / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not a database\n" * 300)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("BarsStorage", "MLFLOW_TRACKING_URI")},
        "STOCKCAST_HOME": str(home),
        "STOCKCAST_AZURITE_PORT": "0",
        "SCORING_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "devhost", "train"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        subprocess.run([sys.executable, "-m", "devhost", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-3000:]
    assert "Traceback" not in said
    assert f"the local MLflow store {db} is damaged (file is not a database)" in said
    assert f"\n  python -m devhost stop && mv {db} {db}.corrupt\n" in said
    assert (home / "jobs" / "train.lock").exists() is False
    assert db.read_bytes() == b"not a database\n" * 300  # left for the user to move: it holds the registry
