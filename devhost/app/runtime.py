"""Bring up what the functions need offline: app settings, Azurite and the bars container.

A :class:`Runtime` is what was true when it was made; :meth:`Runtime.reconnect` (and
:func:`keep_connected`, which ``devhost up`` runs) re-resolves the home's Azurite, so a
long-running command outlives an Azurite that died or moved port.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import ContainerClient

from devhost.shared.home import apply_app_settings, local_settings, stockcast_home
from devhost.shared.processes import preferred_or_free
from devhost.storage import azurite
from functions.settings import get_settings
from functions.shared.storage import bars_container

log = logging.getLogger("devhost")
DEFAULT_SCORING_PORT = 5001
_persisted_at_exit: set[Path] = set()


@dataclass(frozen=True)
class Runtime:
    """The local environment the functions run in."""

    home: Path
    azurite: azurite.Azurite
    container: ContainerClient

    def reconnect(self) -> Runtime:
        """The home's Azurite as it is now: ``self`` if unchanged, else a runtime wired to the new one.

        A dead Azurite is restarted (on its recorded port when free, so clients already built
        keep working); a new one gets its connection string exported and the settings and
        storage clients rebuilt.
        """
        blob = azurite.ensure(self.home)
        return self if blob == self.azurite else _connect(self.home, blob)

    def persist(self) -> bool:
        """Make every write Azurite acknowledged so far survive a crash; see :func:`devhost.storage.azurite.flush`."""
        return azurite.flush(self.home)


def scoring_port(home: Path) -> int:
    """The scoring server's port for ``home``, so that every devhost command of the home agrees.

    ``SCORING_PORT`` from the environment wins; else the port recorded for the home; else the
    local settings' default (5001) if it is free, or any free port when another home's server
    holds it (recorded, like Azurite's port).
    """
    if os.environ.get("SCORING_PORT"):
        return int(os.environ["SCORING_PORT"])
    record = home / "run" / "scoring-port"
    if record.exists():
        return int(record.read_text())
    preferred = int(local_settings().get("SCORING_PORT", DEFAULT_SCORING_PORT))
    port = preferred_or_free(preferred)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(str(port))
    return port


def prepare() -> Runtime:
    """Start Azurite if needed, export app settings pointing at it, and create the container.

    The process then saves Azurite's index before it exits, so a command's exit status comes
    only once what it wrote would survive ``kill -9`` of Azurite.
    """
    home = stockcast_home()
    runtime = _connect(home, azurite.ensure(home))
    if home not in _persisted_at_exit:
        _persisted_at_exit.add(home)
        atexit.register(_persist_at_exit, home)
    return runtime


def _persist_at_exit(home: Path) -> None:
    try:
        azurite.flush(home)
    except Exception:  # an exit hook must not turn a finished command into a traceback
        log.warning("could not make Azurite save its index for %s", home, exc_info=True)


def _connect(home: Path, blob: azurite.Azurite) -> Runtime:
    mlflow_dir = home / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    apply_app_settings(
        {
            "BarsStorage": blob.connection_string,
            "STOCKCAST_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "SCORING_PORT": str(scoring_port(home)),
        }
    )
    get_settings.cache_clear()  # read again: the storage clients are keyed on the settings
    container = bars_container(get_settings())
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    return Runtime(home, blob, container)


def keep_connected(
    runtime: Runtime, stop: threading.Event, say: Callable[[str], None] | None = None, every: float = 2.0
) -> None:
    """Until ``stop`` is set, re-resolve the home's Azurite every ``every`` seconds (see ``reconnect``)."""
    while not stop.wait(every):
        try:
            fresh = runtime.reconnect()
        except Exception:  # Azurite failing to start now may work on the next check
            log.exception("Azurite for %s is down and could not be restarted", runtime.home)
            continue
        if fresh is not runtime:
            if say:
                say(f"Azurite:     restarted (pid {fresh.azurite.pid}) on http://127.0.0.1:{fresh.azurite.port}")
            else:
                log.warning(
                    "Azurite for %s changed: pid %d, port %d", runtime.home, fresh.azurite.pid, fresh.azurite.port
                )
            runtime = fresh
