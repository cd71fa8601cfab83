"""Local submitter: the same training command as Azure ML, as a background subprocess.

Raw bars are synced incrementally from storage (Azurite) into ``$STOCKCAST_HOME/jobs/inputs``.
``jobs/train.lock`` keeps training single-flight: it appears with its record already in it
(pid, job name, start, phase), holds the submitter's pid while bars sync and the job's pid once it
runs, and is stale only when that process is gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from devhost.serving.mlflow_store import check_store
from devhost.shared.home import REPO_ROOT
from devhost.shared.processes import alive, child_environment, started, stop_group
from functions.settings import Settings
from functions.train_trigger.job_record import FULL, training_mode
from functions.train_trigger.ports import Submission

if TYPE_CHECKING:  # `devhost status` reads job records without the storage SDK
    from azure.storage.blob import ContainerClient

log = logging.getLogger("devhost.local_jobs")
LOCK_NAME = "train.lock"
MODE_NAME = "training-mode.json"  # when the last full retrain was submitted, as Azure's job record keeps it
# A lock this code writes always holds a record, so an unreadable one comes from elsewhere: an
# older version that created the lock empty and filled it after the bar sync, a hand edit or a
# crash of the disk. It may be a lock being filled right now, so only an old one is broken; an
# hour is far longer than any bar sync.
GARBAGE_STALE_SECONDS = 3600.0
_children: dict[int, subprocess.Popen] = {}  # reaped on the next check, so no zombie lingers


def _copy(container: ContainerClient, name: str, target: Path) -> bool:
    """Copy one blob to ``target`` through a partial file; False when the blob is gone (compacted meanwhile)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        data = container.download_blob(name).readall()
    except ResourceNotFoundError:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return True


def sync_raw(container: ContainerClient, dest: Path) -> tuple[int, int]:
    """Copy new ``raw/`` blobs into ``dest`` (same relative paths); returns (copied, total).

    Raw blob names are unique per batch and never rewritten, so one of the same size is kept. An
    hour's compacted blob is rewritten when late blobs are merged, so it is copied whenever its
    ETag changed, and only after the raw blobs, from a second listing: a raw blob that vanished
    while this ran was deleted after a compacted blob covering it was written, which that listing
    finds. Local copies of deleted raw blobs may stay: readers skip what a compacted blob covers.
    """
    from functions.shared.rebuild import COMPACTED_NAME

    copied = total = 0
    for blob in container.list_blobs(name_starts_with="raw/"):
        if blob.name.rpartition("/")[2] == COMPACTED_NAME:
            continue
        total += 1
        target = dest / blob.name
        if target.exists() and target.stat().st_size == blob.size:
            continue
        copied += _copy(container, blob.name, target)
    for blob in container.list_blobs(name_starts_with="raw/"):
        if blob.name.rpartition("/")[2] != COMPACTED_NAME:
            continue
        total += 1
        target, stamp = dest / blob.name, dest / (blob.name + ".etag")
        if target.exists() and stamp.exists() and stamp.read_text() == blob.etag:
            continue
        if _copy(container, blob.name, target):
            stamp.write_text(blob.etag)
            copied += 1
    return copied, total


def _reap() -> None:
    """Collect finished jobs started by this process, so that their pids read as gone."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


def _read(lock: Path) -> tuple[bool, dict[str, Any] | None, float]:
    """Whether ``lock`` exists, its record (None if unreadable or without a pid) and its age in seconds."""
    try:
        with open(lock, "rb") as fh:
            raw = fh.read()
            age = time.time() - os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return False, None, 0.0
    except OSError:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False, None, 0.0
        except OSError:
            return True, None, 0.0  # nothing known about it: young, so it is left alone
        return True, None, age
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True, None, age
    pid = record.get("pid") if isinstance(record, dict) else None
    valid = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
    return True, record if valid else None, age


def _holder_gone(record: dict[str, Any]) -> str | None:
    """Why the process a lock record names is gone (exited, a zombie, its pid reused), else None."""
    pid = record["pid"]
    if not alive(pid):
        return f"process {pid} is gone"
    recorded, now = record.get("pid_started"), started(pid)
    if isinstance(recorded, int) and now is not None and now != recorded:
        return f"pid {pid} now names another process"
    return None


def _stale_reason(record: dict[str, Any] | None, age: float) -> str | None:
    """Why an existing lock is stale, or None while it is held (never for being young or old alone)."""
    if record is None:
        return f"unreadable and {age:.0f}s old" if age > GARBAGE_STALE_SECONDS else None
    return _holder_gone(record)


@contextlib.contextmanager
def _guarded(lock: Path) -> Iterator[None]:
    """Serialise check, break and create of ``lock`` across threads and processes.

    Breaking a stale lock is a read, then an unlink: two ticks that both read the same stale lock
    would both unlink, and the second would remove the lock the first had just created. The guard
    file is never removed, so everyone flocks the same inode (a new open per call, so threads of one
    process exclude each other too); the kernel drops the flock if its holder dies.
    """
    fd = os.open(lock.with_name(lock.name + ".guard"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check(lock: Path) -> tuple[bool, dict[str, Any] | None]:
    """Under the guard: whether ``lock`` is held, and its record; a stale lock is removed."""
    _reap()
    exists, record, age = _read(lock)
    if not exists:
        return False, None
    why = _stale_reason(record, age)
    if why is None:
        return True, record
    log.warning("removing stale lock %s (%s): %s", lock, why, record)
    lock.unlink(missing_ok=True)
    return False, None


def _temp_with(lock: Path, record: dict[str, Any]) -> Path:
    """A new file beside ``lock`` (same file system, so it can be linked) holding ``record``, synced."""
    fd, name = tempfile.mkstemp(prefix=f".{lock.name}.", suffix=".tmp", dir=lock.parent)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, orjson.dumps(record))  # a few hundred bytes: one write
        os.fsync(fd)
    except BaseException:
        os.unlink(name)
        raise
    finally:
        os.close(fd)
    return Path(name)


def acquire(lock: Path, record: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """Create ``lock`` holding ``record`` unless a live holder has it; returns (won, the holder's record).

    The record is written and synced to a temp file first, then hard-linked to the lock's name:
    ``os.link`` fails if the name exists, so the lock appears atomically and never empty. A stale
    lock (its process gone) is removed first. The holder's record is None for a young unreadable lock.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_with(lock, record)
    try:
        with _guarded(lock):
            held, holder = _check(lock)
            if held:
                return False, holder
            try:
                os.link(temp, lock)
            except FileExistsError:  # created by a writer that skips the guard (an older version)
                return False, _read(lock)[1]
            return True, None
    finally:
        temp.unlink(missing_ok=True)


def release(lock: Path, owner: dict[str, Any]) -> bool:
    """Remove ``lock`` if it still holds ``owner``'s record; a lock someone else took is left alone."""
    with _guarded(lock):
        if _read(lock)[1] != owner:
            return False
        lock.unlink(missing_ok=True)
        return True


def _rewrite(lock: Path, record: dict[str, Any]) -> None:
    """Swap the lock's record for ``record``: readers see the old one or the new one, never a part."""
    temp = _temp_with(lock, record)
    try:
        os.replace(temp, lock)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def running_job(home: Path) -> dict[str, Any] | None:
    """The lock record of the local training job under ``home``, if its process still runs.

    None while a tick still syncs bars: the lock then names the submitting host, which is no job to
    wait for or stop (``devhost stop`` signals the job's process group).
    """
    record = _read(home / "jobs" / LOCK_NAME)[1]
    if record is None or record.get("phase", "running") != "running" or _holder_gone(record):
        return None
    return record


class LocalSubmitter:
    """Runs ``python -m training_job.train`` in the background, one at a time."""

    def __init__(self, settings: Settings, container: ContainerClient) -> None:
        self.settings = settings
        self.container = container
        self.home = Path(str(settings.stockcast_home))
        self.jobs = self.home / "jobs"
        self.lock = self.jobs / LOCK_NAME

    def active(self) -> dict[str, Any] | None:
        """The lock holder's record (a running job, or a tick syncing bars), or None; a stale lock is removed."""
        if not self.jobs.is_dir():
            return None
        with _guarded(self.lock):
            return _check(self.lock)[1]

    def mode(self, now: dt.datetime) -> tuple[str, str]:
        """The mode of the job a tick at ``now`` starts, and why; a full one is recorded before it starts.

        An unreadable record counts as none: a full retrain is then due, which is never wrong, only slower.
        """
        path = self.jobs / MODE_NAME
        try:
            last: dt.datetime | None = dt.datetime.fromisoformat(orjson.loads(path.read_bytes())["last_full_at"])
        except (OSError, ValueError, KeyError, TypeError):
            last = None
        mode, reason = training_mode(last, now, dt.timedelta(hours=self.settings.training_full_every_hours))
        if mode == FULL:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(_temp_with(path, {"last_full_at": now.isoformat()}), path)
        return mode, reason

    def summary(self, job_name: str) -> dict | None:
        """The decision summary a finished job wrote."""
        path = self.jobs / f"{job_name}.summary.json"
        return orjson.loads(path.read_bytes()) if path.exists() else None

    def submit_unless_active(self, tick_id: str, now: dt.datetime) -> Submission:
        """Single-flight: take the lock, sync bars, start the job; or say who holds the lock.

        A damaged MLflow store raises :class:`StoreDamagedError` first: a job on it could only fail.
        """
        check_store(str(self.settings.mlflow_tracking_uri))
        name = f"train-{now:%Y%m%dT%H%M%S}Z-{tick_id[-4:]}"
        pid = os.getpid()
        # while bars sync the lock names this process: alive as long as the sync can still finish
        syncing = {
            "pid": pid,
            "pid_started": started(pid),
            "name": name,
            "started": now.isoformat(),
            "phase": "syncing",
        }
        won, holder = acquire(self.lock, syncing)
        if not won:
            if holder is None:
                return Submission(False, None, f"{self.lock} is unreadable and recent; left alone")
            state = "is still running" if holder.get("phase", "running") == "running" else "is syncing bars"
            return Submission(False, holder.get("name"), f"local job {holder.get('name')} {state}")
        try:
            inputs = self.jobs / "inputs" / "bars"
            copied, total = sync_raw(self.container, inputs)
            log.info("tick=%s job=%s synced %d new of %d raw blobs", tick_id, name, copied, total)
            mode, why = self.mode(now)
            log.info("tick=%s job=%s mode=%s: %s", tick_id, name, mode, why)
            proc = self._start(name, inputs, mode)
        except BaseException:
            release(self.lock, syncing)
            raise
        try:
            _rewrite(self.lock, {**syncing, "pid": proc.pid, "pid_started": started(proc.pid), "phase": "running"})
        except BaseException:
            # a lock left on this long-lived host's pid would block training until the host restarts
            log.exception("tick=%s job=%s could not record its pid; stopping it", tick_id, name)
            stop_group(proc.pid)
            release(self.lock, syncing)
            raise
        return Submission(True, name, f"submitted ({mode}: {why})")

    def _start(self, name: str, inputs: Path, mode: str) -> subprocess.Popen:
        s = self.settings
        mlflow_dir = self.home / "mlflow"
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "training_job.train",
            "--bars",
            str(inputs),
            "--model-name",
            s.model_name,
            "--experiment",
            s.experiment,
            "--summary-out",
            str(self.jobs / f"{name}.summary.json"),
            "--mode",
            mode,
            *shlex.split(s.train_args),  # last: TRAIN_ARGS may override any option, the mode too
        ]
        env = child_environment(
            {
                "MLFLOW_TRACKING_URI": str(s.mlflow_tracking_uri),
                "PYTHONPATH": str(REPO_ROOT),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        with open(self.jobs / f"{name}.log", "wb") as out:
            # cwd = the MLflow folder: a new experiment's artifact root is relative to it
            proc = subprocess.Popen(
                command,
                cwd=mlflow_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        return proc
