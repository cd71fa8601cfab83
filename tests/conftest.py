"""Session fixtures: a real Azurite started once, and app settings pointing at it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from azure.storage.blob import ContainerClient

from devhost import azurite
from devhost.runtime import Runtime, prepare
from functions.ingest.storage import bars_container
from functions.settings import get_settings
from functions.train_trigger.processes import free_port


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """Azurite in a private $STOCKCAST_HOME on a free port, with the app settings exported."""
    saved = dict(os.environ)
    os.environ["STOCKCAST_HOME"] = str(tmp_path_factory.mktemp("stockcast-home"))
    os.environ["STOCKCAST_AZURITE_PORT"] = "0"  # any free port, never the developer's own Azurite
    os.environ["SCORING_PORT"] = str(free_port())  # nor the developer's scoring server
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
