"""Single-flight of the local training job: the lock appears with its record, breaks only when its holder is gone."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devhost.jobs import local_jobs
from devhost.jobs.local_jobs import GARBAGE_STALE_SECONDS, LocalSubmitter, acquire, running_job
from devhost.shared.processes import alive, started
from functions.settings import Settings
from functions.train_trigger.ports import Submission

NOW = dt.datetime(2026, 11, 4, 20, 0, tzinfo=dt.UTC)


class Bars:
    """A bars container with no raw blobs whose listing takes ``delay`` seconds and calls ``during``."""

    def __init__(self, delay: float = 0.0, during: Callable[[], None] | None = None) -> None:
        self.delay = delay
        self.during = during

    def list_blobs(self, name_starts_with: str) -> list[Any]:
        """No blobs, after the listing's delay."""
        if self.during:
            self.during()
        time.sleep(self.delay)
        return []


class SleepingJobs(LocalSubmitter):
    """The local submitter with a sleeping process for a job."""

    def __init__(self, home: Path, bars: Bars, started_jobs: list[subprocess.Popen]) -> None:
        settings = Settings("bars", "bars", "$Default", "0 */5 * * * *", stockcast_home=str(home))
        super().__init__(settings, bars)  # type: ignore[arg-type]
        self.started_jobs = started_jobs

    def _start(self, name: str, inputs: Path, mode: str) -> subprocess.Popen:
        self.modes = [*getattr(self, "modes", []), mode]
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        local_jobs._children[proc.pid] = proc
        self.started_jobs.append(proc)
        return proc


@pytest.fixture
def jobs() -> Iterator[list[subprocess.Popen]]:
    """Processes the tests start (jobs and lock holders), killed afterwards."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _write_lock(home: Path, content: bytes, age: float = 0.0) -> Path:
    lock = home / "jobs" / "train.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(content)
    if age:
        os.utime(lock, (time.time() - age, time.time() - age))
    return lock


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_ticks_during_a_bar_sync_start_no_second_job(tmp_path, jobs):
    """Ticks that arrive while the first one syncs bars all find the lock held: exactly one job starts."""
    syncing = threading.Event()
    first = SleepingJobs(tmp_path, Bars(delay=0.5, during=syncing.set), jobs)
    results: list[Submission] = []
    tick = threading.Thread(target=lambda: results.append(first.submit_unless_active("tick-0000", NOW)))
    tick.start()
    assert syncing.wait(10)
    gate = threading.Barrier(8)

    def late(i: int) -> None:
        submitter = SleepingJobs(tmp_path, Bars(delay=0.5), jobs)
        gate.wait()
        results.append(submitter.submit_unless_active(f"tick-{i:04d}", NOW))

    threads = [threading.Thread(target=late, args=(i,)) for i in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in [tick, *threads]:
        thread.join(30)
    assert len(results) == 9
    assert sum(r.submitted for r in results) == 1
    assert len(jobs) == 1
    winner = next(r for r in results if r.submitted)
    assert winner.job_name == "train-20261104T200000Z-0000"
    assert {r.job_name for r in results} == {winner.job_name}  # the losers name the job that holds the lock


def _race(lock: Path, gate: Any, results: Any, i: int) -> None:
    gate.wait()
    won, _ = acquire(lock, {"pid": os.getpid(), "name": f"p{i}"})
    results.put((i, won))
    gate.wait()  # the winner lives until everyone has tried: a lock of an exited process is stale


@pytest.mark.parametrize("stale", [False, True], ids=["no-lock", "stale-lock"])
def test_processes_racing_for_the_lock_have_one_winner(tmp_path, stale):
    """Eight processes acquire at once, on no lock or on a dead pid's lock: exactly one wins and the lock names it."""
    lock = tmp_path / "jobs" / "train.lock"
    if stale:
        _write_lock(tmp_path, orjson.dumps({"pid": _dead_pid(), "name": "old"}))
    ctx = multiprocessing.get_context("fork")
    gate, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(lock, gate, results, i)) for i in range(8)]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=30) for _ in procs)
    for proc in procs:
        proc.join(10)
    winners = [i for i, won in outcomes.items() if won]
    assert len(winners) == 1
    assert orjson.loads(lock.read_bytes())["name"] == f"p{winners[0]}"
    assert [p.name for p in lock.parent.iterdir() if p.name.endswith(".tmp")] == []  # temp files removed


def test_threads_that_all_read_the_same_stale_lock_break_it_once(tmp_path, monkeypatch):
    """Slow readers of one stale lock: only one breaks it, so no one removes the lock the winner just made."""
    lock = _write_lock(tmp_path, orjson.dumps({"pid": _dead_pid(), "name": "old"}))
    read = local_jobs._read

    def slow_read(path: Path) -> tuple[bool, dict[str, Any] | None, float]:
        found = read(path)
        time.sleep(0.05)  # between reading a stale lock and removing it, others read it too
        return found

    monkeypatch.setattr(local_jobs, "_read", slow_read)
    gate, won = threading.Barrier(6), []

    def take(i: int) -> None:
        gate.wait()
        if acquire(lock, {"pid": os.getpid(), "name": f"t{i}"})[0]:
            won.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1
    assert orjson.loads(lock.read_bytes())["name"] == f"t{won[0]}"


def test_lock_names_the_submitter_while_syncing_then_the_job(tmp_path, jobs):
    """During the bar sync the lock already holds the submitter's pid; once the job starts, the job's."""
    seen: list[tuple[dict, dict | None]] = []
    lock = tmp_path / "jobs" / "train.lock"
    submitter = SleepingJobs(
        tmp_path, Bars(during=lambda: seen.append((orjson.loads(lock.read_bytes()), running_job(tmp_path)))), jobs
    )
    submission = submitter.submit_unless_active("tick-abcd", NOW)
    assert submission == Submission(True, "train-20261104T200000Z-abcd", "submitted (full: no full retrain recorded)")
    during, job_while_syncing = seen[0]
    assert during == {
        "pid": os.getpid(),
        "pid_started": started(os.getpid()),
        "name": "train-20261104T200000Z-abcd",
        "started": NOW.isoformat(),
        "phase": "syncing",
    }
    assert job_while_syncing is None  # no job to stop yet: devhost stop must not signal the host
    after = orjson.loads(lock.read_bytes())
    assert (after["pid"], after["phase"], after["name"]) == (jobs[0].pid, "running", submission.job_name)
    assert running_job(tmp_path) == after == submitter.active()


def test_a_live_holder_keeps_its_lock_however_old(tmp_path, jobs):
    """A lock whose process runs stays, whatever its age; the tick reports that job."""
    holder = subprocess.Popen(["sleep", "60"], start_new_session=True)
    jobs.append(holder)
    content = orjson.dumps({"pid": holder.pid, "name": "train-old", "started": "2000-01-01T00:00:00+00:00"})
    lock = _write_lock(tmp_path, content, age=10 * GARBAGE_STALE_SECONDS)
    submission = SleepingJobs(tmp_path, Bars(), jobs).submit_unless_active("tick-abcd", NOW)
    assert submission == Submission(False, "train-old", "local job train-old is still running")
    assert lock.read_bytes() == content
    assert len(jobs) == 1  # only the holder: no job was started


def test_an_empty_lock_is_left_alone_until_it_is_old(tmp_path, jobs):
    """An empty (or garbage) lock is no proof of a dead holder: left while recent, replaced once old."""
    lock = _write_lock(tmp_path, b"")
    submitter = SleepingJobs(tmp_path, Bars(), jobs)
    first = submitter.submit_unless_active("tick-aaaa", NOW)
    assert (first.submitted, lock.read_bytes(), jobs) == (False, b"", [])
    _write_lock(tmp_path, b"{garbage", age=GARBAGE_STALE_SECONDS + 60)
    second = submitter.submit_unless_active("tick-bbbb", NOW)
    assert second.submitted
    assert orjson.loads(lock.read_bytes())["pid"] == jobs[0].pid


@pytest.mark.parametrize("holder", ["dead", "zombie", "reused-pid"])
def test_a_lock_whose_process_is_gone_is_replaced(tmp_path, jobs, holder):
    """A lock naming an exited process, a zombie or a pid now used by another process is replaced."""
    zombie = None
    if holder == "dead":
        record = {"pid": _dead_pid(), "name": "train-old"}
    elif holder == "zombie":
        zombie = subprocess.Popen(["true"])  # not waited for: a zombie until the test reaps it
        deadline = time.monotonic() + 10
        while alive(zombie.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        record = {"pid": zombie.pid, "name": "train-old"}
    else:  # this test's own pid with another start: the pid was given to a new process since
        record = {"pid": os.getpid(), "pid_started": started(os.getpid()) - 1, "name": "train-old"}
    lock = _write_lock(tmp_path, orjson.dumps(record))
    try:
        submission = SleepingJobs(tmp_path, Bars(), jobs).submit_unless_active("tick-abcd", NOW)
    finally:
        if zombie:
            zombie.wait()
    assert submission.submitted
    assert orjson.loads(lock.read_bytes())["pid"] == jobs[0].pid


def test_the_training_job_starts_with_the_least_environment(tmp_path, monkeypatch, jobs):
    """The job's process holds the basics and its own settings, never this process's storage key or other secrets."""
    key = "AccountKey=c2VjcmV0LWtleQ=="
    monkeypatch.setenv("BarsStorage", f"DefaultEndpointsProtocol=http;AccountName=dev;{key}")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-for-children")
    settings = Settings(
        "bars",
        "bars",
        "$Default",
        "0 */5 * * * *",
        stockcast_home=str(tmp_path),
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    submitter = LocalSubmitter(settings, Bars())  # type: ignore[arg-type]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    submitter.jobs.mkdir(parents=True, exist_ok=True)
    proc = submitter._start("job-env", inputs, "warm")
    jobs.append(proc)
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{proc.pid}/environ").read_text().split("\0") if "=" in item
    )
    assert environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert environ["PATH"] == os.environ["PATH"]
    assert "BarsStorage" not in environ and "AZURE_CLIENT_SECRET" not in environ
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--mode") + 1] == "warm"
    assert [name for name, value in environ.items() if key in value] == []


@pytest.mark.parametrize(
    ("record", "hours_later", "expected"),
    [
        (None, 0, "full"),
        (b"not json", 0, "full"),
        (b'{"last_full_at": "2026-11-04T20:00:00+00:00"}', 1, "warm"),
        (b'{"last_full_at": "2026-11-04T20:00:00+00:00"}', 23, "warm"),
        (b'{"last_full_at": "2026-11-04T20:00:00+00:00"}', 24, "full"),
        (b'{"last_full_at": "2026-11-05T20:00:00+00:00"}', 0, "full"),  # recorded after now
    ],
)
def test_mode_follows_the_last_full_retrain_recorded(tmp_path, jobs, record, hours_later, expected):
    """A tick trains full when none was recorded within 24 h (or the record is unreadable), else warm."""
    submitter = SleepingJobs(tmp_path, Bars(), jobs)
    path = tmp_path / "jobs" / local_jobs.MODE_NAME
    if record is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(record)
    now = NOW + dt.timedelta(hours=hours_later)
    assert submitter.mode(now)[0] == expected
    kept = orjson.loads(path.read_bytes())["last_full_at"] if path.exists() and expected == "full" else None
    assert kept in (None, now.isoformat()) and (expected != "full" or kept == now.isoformat())


def test_the_job_is_started_full_then_warm(tmp_path, jobs):
    """The first job of a home is a full retrain, the next one within the day a warm one."""
    submitter = SleepingJobs(tmp_path, Bars(), jobs)
    assert submitter.submit_unless_active("tick-0001", NOW).submitted
    jobs[-1].kill()
    jobs[-1].wait()
    assert submitter.submit_unless_active("tick-0002", NOW + dt.timedelta(minutes=15)).submitted
    assert submitter.modes == ["full", "warm"]
