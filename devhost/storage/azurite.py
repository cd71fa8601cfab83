"""Start Azurite (Blob) on demand, with its state under ``$STOCKCAST_HOME/azurite``: one per home.

The account key is generated per home on first start, so no storage key is ever written in the
repository; the connection string is assembled at run time.

Two things Azurite does not do for us, and how this module makes up for them:

- **One process per data folder.** Two Azurites on one ``--location`` each keep their own
  in-memory index and overwrite each other's on save (a third of the bars vanished when two
  devhost commands started one each). ``ensure`` therefore runs "check the recorded Azurite,
  start one if there is none, record it" under an exclusive ``flock`` on ``run/azurite.lock``,
  and stops any other Azurite still serving the folder before it starts one.
- **Durable acknowledged writes.** Blob contents go to extent files as they arrive, but the
  index of blobs (LokiJS databases) lives in memory and is autosaved every 5 s
  (``autosaveInterval: 5000`` in ``LokiBlobMetadataStore`` and ``LokiExtentMetadataStore``, not
  configurable from the command line), so a ``kill -9`` loses what was written since the last
  autosave. A small script preloaded into Azurite (``NODE_OPTIONS=--require``) saves every
  database when Azurite gets ``SIGUSR2`` and records when; :func:`flush` sends the signal and
  waits for that record, so every write acknowledged before it is on disk. :class:`UnsavedWrites`
  ties that to the Azurite process that took the writes, for whoever commits after them (the
  Kafka trigger's checkpoints: "commit after durable").
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from devhost.shared.home import REPO_ROOT, home_lock, port_released
from devhost.shared.processes import alive, free_port, json_object, listening, live_record, stop_group

log = logging.getLogger("devhost.azurite")

ACCOUNT = "stockcast"
DEFAULT_PORT = 10000
AUTOSAVE_SECONDS = 5.0  # Azurite's LokiJS autosaveInterval, hard-coded in 3.x
PACKAGE = REPO_ROOT / "node_modules" / "azurite"

# Preloaded into Azurite: on SIGUSR2 save every LokiJS database now and record the time the save
# was asked for. LokiJS serialises synchronously when a save starts and queues a save asked for
# while one runs, so each save started after the signal holds every write acknowledged before it.
_SAVE_HOOK = """\
"use strict";
const fs = require("fs");
const marker = process.env.STOCKCAST_AZURITE_SAVED;
function record(fields) {
  fs.writeFileSync(marker + "~", JSON.stringify({ pid: process.pid, ...fields }));
  fs.renameSync(marker + "~", marker);
}
try {
  const Loki = require(require.resolve("lokijs", { paths: [process.env.STOCKCAST_AZURITE_PACKAGE] }));
  const databases = new Set();
  const save = Loki.prototype.saveDatabase;
  Loki.prototype.saveDatabase = function (callback) {
    if (this.persistenceMethod === "fs") databases.add(this);
    return save.call(this, callback);
  };
  let savedAt = 0;
  process.on("SIGUSR2", () => {
    const askedAt = Date.now();
    const pending = [...databases];
    let left = pending.length;
    let failure = null;
    const done = (err) => {
      if (err) failure = String(err);
      if (--left > 0) return;
      if (failure) return record({ saved_at_ms: savedAt, failed_at_ms: askedAt, error: failure });
      savedAt = Math.max(savedAt, askedAt);
      record({ saved_at_ms: savedAt });
    };
    if (left === 0) {
      left = 1;
      done(null);
    } else {
      pending.forEach((db) => db.saveDatabase(done));
    }
  });
  record({ saved_at_ms: 0 });
} catch (err) {
  // no hook, no record: devhost then waits for Azurite's own autosave instead
}
"""


class NotSavedError(RuntimeError):
    """Azurite could not confirm that acknowledged writes are on disk."""


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service."""

    pid: int
    port: int
    key: str

    @property
    def connection_string(self) -> str:
        """Connection string for the local account."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={self.key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )


def _key(home: Path) -> str:
    path = home / "azurite" / "account.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.b64encode(secrets.token_bytes(64)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def _state_file(home: Path) -> Path:
    return home / "run" / "azurite.json"


def _saved_file(home: Path) -> Path:
    return home / "run" / "azurite-saved.json"


def running(home: Path) -> Azurite | None:
    """The Azurite this home started, if it is still up."""
    info = live_record(_state_file(home))
    if info and listening(info["port"]):
        return Azurite(info["pid"], info["port"], _key(home))
    return None


def instances(home: Path) -> list[int]:
    """Pids of every Azurite process whose ``--location`` is this home's data folder (Linux ``/proc``)."""
    data = str(home / "azurite")
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if any("azurite" in a for a in text[:2]) and "--location" in text:
            at = text.index("--location")
            if at + 1 < len(text) and text[at + 1] == data and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _recorded_wakes_up(home: Path, patience: float = 2.0) -> Azurite | None:
    """The recorded Azurite if its process lives and starts answering within ``patience`` seconds.

    A busy machine can miss one connection check; stopping a healthy Azurite for that would be a
    needless restart.
    """
    info = live_record(_state_file(home))
    deadline = time.monotonic() + patience
    while info and alive(info["pid"]) and time.monotonic() < deadline:
        if listening(info["port"]):
            return Azurite(info["pid"], info["port"], _key(home))
        time.sleep(0.1)
    return None


def _port(home: Path) -> int:
    """The port to start on: an explicit STOCKCAST_AZURITE_PORT, else the recorded one, else the default.

    Restarting on the recorded port keeps the connection strings already handed out working.
    ``STOCKCAST_AZURITE_PORT=0`` asks for any free port when none is recorded.
    """
    configured = os.environ.get("STOCKCAST_AZURITE_PORT")
    if configured and int(configured):
        wanted = int(configured)
    else:
        recorded = int(json_object(_state_file(home)).get("port") or 0)
        # a killed Node process shows as a zombie while its other threads still hold the socket
        if recorded and port_released(recorded, patience=2.0):
            return recorded
        wanted = DEFAULT_PORT if configured is None else 0
    return wanted if wanted and not listening(wanted) else free_port()


def ensure(home: Path, timeout: float = 30.0) -> Azurite:
    """Return this home's Azurite, starting it if it is not running: at most one per home."""
    current = running(home)
    if current:
        return current
    with home_lock(home, "azurite"):
        current = running(home) or _recorded_wakes_up(home)  # another command may have started it meanwhile
        if current:
            return current
        for pid in instances(home):  # recorded as dead or hung, or never recorded
            log.warning("stopping Azurite pid %d: it serves %s but is not this home's live Azurite", pid, home)
            _terminate(pid)
        return _start(home, timeout)


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM first (Azurite saves its index on the way out), SIGKILL if it lingers."""
    try:
        leader = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    if leader:  # devhost starts Azurite in a session of its own
        stop_group(pid, timeout)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _start(home: Path, timeout: float) -> Azurite:
    binary = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make setup` (npm ci) first")
    key = _key(home)
    port = _port(home)
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    hook, saved = run / "azurite-save-hook.cjs", _saved_file(home)
    hook.write_text(_SAVE_HOOK)
    saved.unlink(missing_ok=True)
    node_options = " ".join(
        filter(None, [os.environ.get("NODE_OPTIONS"), f"--require {orjson.dumps(str(hook)).decode()}"])
    )
    with open(run / "azurite.log", "ab") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "--silent",
                "--location",
                str(home / "azurite"),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ],
            env={
                **os.environ,
                "AZURITE_ACCOUNTS": f"{ACCOUNT}:{key}",
                "NODE_OPTIONS": node_options,
                "STOCKCAST_AZURITE_SAVED": str(saved),
                "STOCKCAST_AZURITE_PACKAGE": str(PACKAGE),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command, so state persists across commands
        )
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Azurite did not start on port {port}; see {run / 'azurite.log'}")
        time.sleep(0.1)
    _state_file(home).write_bytes(orjson.dumps({"pid": proc.pid, "port": port}))
    log.info("Azurite pid %d listens on port %d for %s", proc.pid, port, home)
    return Azurite(proc.pid, port, key)


def flush(home: Path, since: Azurite | None = None, timeout: float = 10.0, wait_without_hook: bool = True) -> bool:
    """Make every write this home's Azurite acknowledged so far durable; return whether it confirmed.

    With the save hook loaded, Azurite saves its index now and says so (milliseconds). An
    Azurite started without it (by an older devhost) gets no signal, since SIGUSR2 would kill it:
    this waits out its autosave interval instead (unless ``wait_without_hook`` is false) and
    returns False. With no Azurite running there is nothing to save: True, unless ``since``
    names the Azurite the caller wrote to, which must still be the one running (a restarted
    Azurite may have lost those writes): otherwise :class:`NotSavedError`.
    """
    current = running(home)
    if since is not None and current != since:
        raise NotSavedError(f"Azurite pid {since.pid} is gone; what was written to it since its last save may be lost")
    if current is None:
        return True
    saved = _saved_file(home)
    if json_object(saved).get("pid") != current.pid:
        if wait_without_hook:
            log.warning("Azurite pid %d has no save hook: waiting for its autosave", current.pid)
            time.sleep(AUTOSAVE_SECONDS + 1.5)  # the next autosave, plus the time it takes to write
        return False
    asked_ms = int(time.time() * 1000)  # Node's Date.now() reads the same clock
    os.kill(current.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = json_object(saved)
        if record.get("saved_at_ms", 0) >= asked_ms:
            return True
        if record.get("failed_at_ms", 0) >= asked_ms:
            raise NotSavedError(f"Azurite could not save its index: {record.get('error')}")
        if not alive(current.pid):
            raise NotSavedError(f"Azurite pid {current.pid} exited before it saved its index")
        time.sleep(0.005)
    raise NotSavedError(f"Azurite pid {current.pid} did not save its index within {timeout:.0f}s")


class UnsavedWrites:
    """Writes to a home's Azurite not yet known to be durable: which Azurite took them, and saving them.

    Call :meth:`writing` before each write (or batch of writes) and :meth:`save` before anything
    that stands for them is committed (a Kafka checkpoint). The first write after a save records
    the Azurite running then; :meth:`save` flushes it and raises :class:`NotSavedError` if that
    Azurite is gone, since a restarted one came up from its predecessor's last save. Not
    thread-safe: one writer (a trigger's consumer thread) per instance.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._open = False
        self._took: Azurite | None = None

    def writing(self) -> None:
        """Note that writes are about to be made: the first since the last save remembers the Azurite now running."""
        if not self._open:
            self._open, self._took = True, running(self.home)

    def save(self) -> None:
        """Make every write since the last save durable; raise :class:`NotSavedError` if that cannot be confirmed."""
        if not self._open:
            return
        took, self._open = self._took, False  # saved or not, the next write starts a new window
        if took is None:  # it started while the writes were made: which one took them is unknown
            raise NotSavedError(f"no Azurite ran for {self.home} when the writes began")
        try:
            flush(self.home, since=took)
        except OSError as exc:  # it died between the check and the signal
            raise NotSavedError(f"Azurite pid {took.pid} could not be asked to save: {exc}") from exc


def stop(home: Path, timeout: float = 10.0) -> bool:
    """Stop this home's Azurite after saving its index; return whether one was running."""
    with home_lock(home, "azurite"):
        current = running(home)
        if current is not None:
            with contextlib.suppress(NotSavedError, OSError):
                # SIGTERM saves too, but a shutdown that stalls past the timeout ends in SIGKILL
                flush(home, wait_without_hook=False)
        _state_file(home).unlink(missing_ok=True)
        if current is None:
            return False
        os.killpg(current.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(current.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(current.pid):
            os.killpg(current.pid, signal.SIGKILL)
        return True
