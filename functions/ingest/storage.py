"""Blob Storage clients for the bars container, built once per process from settings."""

from __future__ import annotations

from functools import cache

from azure.storage.blob import BlobServiceClient, ContainerClient

from functions.settings import Settings


@cache
def bars_container(settings: Settings) -> ContainerClient:
    """Return the bars container client: managed identity in Azure, a connection string locally."""
    if settings.bars_storage_connection_string:
        service = BlobServiceClient.from_connection_string(settings.bars_storage_connection_string)
    else:
        from azure.identity import DefaultAzureCredential  # only Azure needs it; keeps local start light

        credential = DefaultAzureCredential(managed_identity_client_id=settings.bars_storage_client_id)
        service = BlobServiceClient(str(settings.bars_storage_blob_service_uri), credential=credential)
    return service.get_container_client(settings.bars_container)
