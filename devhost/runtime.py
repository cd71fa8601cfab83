"""Bring up what the functions need offline: app settings, Azurite and the bars container."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from devhost import azurite
from devhost.home import apply_app_settings, stockcast_home


@dataclass(frozen=True)
class Runtime:
    """The local environment the functions run in."""

    home: Path
    azurite: azurite.Azurite
    container: ContainerClient


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
        }
    )
    container = BlobServiceClient.from_connection_string(blob.connection_string).get_container_client(
        os.environ["BARS_CONTAINER"]
    )
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    return Runtime(home, blob, container)
