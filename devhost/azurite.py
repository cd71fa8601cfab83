"""Start Azurite (Blob) on demand, with its state under ``$STOCKCAST_HOME/azurite``.

The account key is generated per home on first start, so no storage key is ever written in the
repository; the connection string is assembled at run time.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from devhost.home import REPO_ROOT
from functions.train_trigger.processes import alive, listening, live_record, preferred_or_free

ACCOUNT = "stockcast"
DEFAULT_PORT = 10000


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


def running(home: Path) -> Azurite | None:
    """The Azurite this home started, if it is still up."""
    info = live_record(_state_file(home))
    if info and listening(info["port"]):
        return Azurite(info["pid"], info["port"], _key(home))
    return None


def ensure(home: Path, timeout: float = 30.0) -> Azurite:
    """Return this home's Azurite, starting it if it is not running."""
    current = running(home)
    if current:
        return current
    binary = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make setup` (npm ci) first")
    key = _key(home)
    port = preferred_or_free(int(os.environ.get("STOCKCAST_AZURITE_PORT", DEFAULT_PORT)))
    data = home / "azurite"
    log = (home / "run").joinpath("azurite.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "--silent",
                "--location",
                str(data),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ],
            env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{key}"},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command, so state persists across commands
        )
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Azurite did not start on port {port}; see {log}")
        time.sleep(0.1)
    _state_file(home).write_bytes(orjson.dumps({"pid": proc.pid, "port": port}))
    return Azurite(proc.pid, port, key)


def stop(home: Path, timeout: float = 10.0) -> bool:
    """Stop this home's Azurite; return whether one was running."""
    current = running(home)
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
