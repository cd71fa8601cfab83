"""The settings object: typed values, defaults, and one error naming every missing key."""

from __future__ import annotations

import pytest

from functions.settings import SettingsError, load_settings

BASE = {"BARS_CONTAINER": "bars", "BARS_EVENTHUB_NAME": "stock_bars", "BARS_CONSUMER_GROUP": "ingest"}


def test_defaults_and_connection_string():
    """Optional keys take their defaults; a connection string means no identity."""
    s = load_settings({**BASE, "BarsStorage": "UseDevelopmentStorage=true"})
    assert (s.bars_container, s.latest_window, s.latest_max_attempts, s.uses_identity) == ("bars", 512, 8, False)


def test_identity_based_connection():
    """__blobServiceUri and __clientId select the managed identity."""
    s = load_settings(
        {**BASE, "BarsStorage__blobServiceUri": "https://x.blob.core.windows.net", "BarsStorage__clientId": "abc"}
    )
    assert (s.uses_identity, s.bars_storage_client_id) == (True, "abc")


def test_every_missing_key_is_named():
    """One error lists all missing keys, not just the first."""
    with pytest.raises(SettingsError) as err:
        load_settings({"BARS_CONTAINER": "bars"})
    message = str(err.value)
    for key in ("BARS_EVENTHUB_NAME", "BARS_CONSUMER_GROUP", "BarsStorage or BarsStorage__blobServiceUri"):
        assert key in message


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_invalid_integers_are_named(value):
    """A non-positive or non-numeric window is rejected with its key and value."""
    with pytest.raises(SettingsError, match=f"LATEST_WINDOW='{value}'"):
        load_settings({**BASE, "BarsStorage": "x", "LATEST_WINDOW": value})
