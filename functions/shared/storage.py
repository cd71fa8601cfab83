"""Blob Storage clients for the bars container, built once per process from settings.

Every client gets bounded timeouts and a short retry from the settings. The SDK's defaults
(20 s to connect, 60 s per read, three retries waiting 15 s, 18 s and 24 s, each ±3 s) held one
call against a stopped Azurite for 81 s; the function's own retry policy, not the SDK, is what
waits out a long outage.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient, LinearRetry, StorageStreamDownloader

from functions.settings import Settings, http_environment
from functions.shared.identity import azure_credential


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments that bound a storage client's timeouts and retries.

    The transport reads proxy variables on every call only where the environment sets some, and a
    CA bundle variable once (:func:`functions.settings.http_environment`).
    """
    backoff = settings.storage_retry_backoff_s
    return {
        **http_environment(),
        "connection_timeout": settings.storage_connect_timeout_s,
        "read_timeout": settings.storage_timeout_s,
        # retry_total caps every kind of retry; the jitter keeps retrying callers from moving in step
        "retry_policy": LinearRetry(
            backoff=backoff, retry_total=settings.storage_retries, random_jitter_range=backoff / 2
        ),
    }


def connection_string_client(connection_string: str, settings: Settings) -> BlobServiceClient:
    """A blob service client for ``connection_string`` with the settings' timeouts and retries."""
    return BlobServiceClient.from_connection_string(connection_string, **client_options(settings))


@cache
def bars_container(settings: Settings) -> ContainerClient:
    """Return the bars container client: managed identity in Azure, a connection string locally."""
    if settings.bars_storage_connection_string:
        service = connection_string_client(settings.bars_storage_connection_string, settings)
    else:
        service = BlobServiceClient(
            str(settings.bars_storage_blob_service_uri),
            credential=azure_credential(settings.bars_storage_client_id),
            **client_options(settings),
        )
    return service.get_container_client(settings.bars_container)


def download(blob: BlobClient, known_etag: str | None = None) -> StorageStreamDownloader:
    """Start downloading ``blob``; with ``known_etag``, only if it changed since (else the SDK raises its 304).

    The 304 comes as ``ResourceModifiedError`` with ``status_code`` 304: a reader that passed an ETag
    keeps what it read with it.
    """
    if known_etag is None:
        return blob.download_blob()
    return blob.download_blob(etag=known_etag, match_condition=MatchConditions.IfModified)
