"""The one credential factory: every Azure client signs in with the same managed identity."""

from __future__ import annotations

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from functions.settings import load_settings
from functions.shared import identity, storage
from functions.train_trigger import backends
from tests.factories import AML_APP_SETTINGS


def _managed_client_id(credential: DefaultAzureCredential) -> str | None:
    [managed] = [c for c in credential.credentials if isinstance(c, ManagedIdentityCredential)]
    return managed._credential._settings["client_id"]


@pytest.mark.parametrize(("client_id", "expected"), [("cid-1", "cid-1"), (None, None)])
def test_credential_uses_the_named_user_assigned_identity(client_id, expected):
    """A client id selects that user-assigned identity; None leaves the system-assigned one."""
    credential = identity.azure_credential(client_id)
    assert isinstance(credential, DefaultAzureCredential)
    assert _managed_client_id(credential) == expected


def test_credential_is_shared_per_identity():
    """The same identity gets the same credential object (one token cache), another gets its own."""
    assert identity.azure_credential("cid-2") is identity.azure_credential("cid-2")
    assert identity.azure_credential("cid-2") is not identity.azure_credential("cid-3")


def test_storage_and_ml_client_share_the_credential():
    """Storage by identity and the Azure ML client both sign in with the factory's credential."""
    settings = load_settings({**AML_APP_SETTINGS, "BarsStorage__clientId": "cid-4", "AZURE_CLIENT_ID": "cid-4"})
    container = storage.bars_container(settings)
    client = identity.ml_client(settings)
    assert container.credential is identity.azure_credential("cid-4")
    assert client._credential is identity.azure_credential("cid-4")
    assert isinstance(backends.create(settings).submitter.ml_client, type(client))
