"""The app's one way to sign in to Azure: its managed identity, through one cached credential.

Storage, the Azure ML client (training jobs, rollout, endpoint keys) and the telemetry exporter
all take their credential from :func:`azure_credential`, so a token is fetched once per scope and
shared, and no secret is ever read from settings.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from functions.settings import Settings


@cache
def azure_credential(client_id: str | None) -> Any:
    """A ``DefaultAzureCredential`` for the user-assigned identity ``client_id`` (None: system-assigned).

    Cached per client id: the credential caches its tokens, so sharing it saves a token call per client.
    """
    from azure.identity import DefaultAzureCredential  # only Azure needs it; keeps the local start light

    return DefaultAzureCredential(managed_identity_client_id=client_id)


def ml_client(settings: Settings) -> Any:
    """An MLClient for the workspace, authenticated with the app's managed identity."""
    from azure.ai.ml import MLClient

    return MLClient(
        azure_credential(settings.azure_client_id),
        settings.azure_subscription_id,
        settings.azure_resource_group,
        settings.aml_workspace,
    )
