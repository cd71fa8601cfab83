"""Bring up what the functions need offline: app settings, Azurite and the bars container."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from devhost import azurite
from devhost.home import apply_app_settings, local_settings, stockcast_home
from functions.train_trigger.processes import preferred_or_free

DEFAULT_SCORING_PORT = 5001


@dataclass(frozen=True)
class Runtime:
    """The local environment the functions run in."""

    home: Path
    azurite: azurite.Azurite
    container: ContainerClient


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
    """Start Azurite if needed, export app settings pointing at it, and create the container."""
    home = stockcast_home()
    blob = azurite.ensure(home)
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
    container = BlobServiceClient.from_connection_string(blob.connection_string).get_container_client(
        os.environ["BARS_CONTAINER"]
    )
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    return Runtime(home, blob, container)
