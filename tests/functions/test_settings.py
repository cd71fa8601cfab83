"""The settings object: typed values, defaults, and one error naming every missing key."""

from __future__ import annotations

from dataclasses import fields

import pytest

from functions.settings import Settings, SettingsError, http_environment, load_settings, setting_specs
from tests.factories import LOCAL_APP_SETTINGS

BASE = LOCAL_APP_SETTINGS


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
    for key in (
        "BARS_EVENTHUB_NAME",
        "BARS_CONSUMER_GROUP",
        "TRAIN_SCHEDULE",
        "BarsStorage or BarsStorage__blobServiceUri",
    ):
        assert key in message


def test_backend_keys_are_required_only_for_that_backend():
    """ML_BACKEND=aml needs the workspace and endpoint; local needs its home and MLflow store."""
    with pytest.raises(SettingsError) as err:
        load_settings({**BASE, "BarsStorage": "x", "ML_BACKEND": "aml"})
    for key in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AML_WORKSPACE", "AML_ENDPOINT"):
        assert f"{key} (ML_BACKEND=aml)" in str(err.value)
    local = {k: v for k, v in BASE.items() if k != "STOCKCAST_HOME"}
    with pytest.raises(SettingsError, match=r"STOCKCAST_HOME \(ML_BACKEND=local\)"):
        load_settings({**local, "BarsStorage": "x"})
    with pytest.raises(SettingsError, match="ML_BACKEND='gpu'"):
        load_settings({**BASE, "BarsStorage": "x", "ML_BACKEND": "gpu"})


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_invalid_integers_are_named(value):
    """A non-positive or non-numeric window is rejected with its key and value."""
    with pytest.raises(SettingsError, match=f"LATEST_WINDOW='{value}'"):
        load_settings({**BASE, "BarsStorage": "x", "LATEST_WINDOW": value})


def test_storage_bounds_have_defaults_and_parse():
    """Storage timeouts and retries default to a few seconds in all, and each can be set."""
    s = load_settings({**BASE, "BarsStorage": "x"})
    assert (s.storage_connect_timeout_s, s.storage_timeout_s, s.storage_retries, s.storage_retry_backoff_s) == (
        3.0,
        10.0,
        2,
        0.5,
    )
    s = load_settings(
        {
            **BASE,
            "BarsStorage": "x",
            "STORAGE_CONNECT_TIMEOUT_SECONDS": "0.5",
            "STORAGE_TIMEOUT_SECONDS": "2.5",
            "STORAGE_RETRIES": "0",
            "STORAGE_RETRY_BACKOFF_SECONDS": "0",
        }
    )
    assert (s.storage_connect_timeout_s, s.storage_timeout_s, s.storage_retries, s.storage_retry_backoff_s) == (
        0.5,
        2.5,
        0,
        0.0,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("STORAGE_CONNECT_TIMEOUT_SECONDS", "0"),
        ("STORAGE_CONNECT_TIMEOUT_SECONDS", "inf"),
        ("STORAGE_TIMEOUT_SECONDS", "-1"),
        ("STORAGE_TIMEOUT_SECONDS", "nan"),
        ("STORAGE_RETRIES", "-1"),
        ("STORAGE_RETRIES", "1.5"),
        ("STORAGE_RETRY_BACKOFF_SECONDS", "-0.1"),
        ("STORAGE_RETRY_BACKOFF_SECONDS", "soon"),
    ],
)
def test_invalid_storage_bounds_are_named(key, value):
    """A timeout that is not a positive finite number, or a negative retry count or backoff, is rejected."""
    with pytest.raises(SettingsError, match=f"{key}='{value}'"):
        load_settings({**BASE, "BarsStorage": "x", key: value})


def test_each_field_names_its_app_setting():
    """Every Settings field carries its app setting; exactly the fields without a default are required."""
    specs = setting_specs()
    assert set(specs) == {f.name for f in fields(Settings)}
    assert {s.key for s in specs.values() if s.required} == {
        "BARS_CONTAINER",
        "BARS_EVENTHUB_NAME",
        "BARS_CONSUMER_GROUP",
        "TRAIN_SCHEDULE",
    }
    assert (specs["scoring_timeout_s"].key, specs["bars_storage_client_id"].key) == (
        "SCORING_TIMEOUT_SECONDS",
        "BarsStorage__clientId",
    )


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("SCORING_TIMEOUT_SECONDS", "2.5", "scoring_timeout_s", 2.5),
        ("SCORING_TIMEOUT_SECONDS", "0", "scoring_timeout_s", None),
        ("SCORING_TIMEOUT_SECONDS", "nan", "scoring_timeout_s", None),
        ("SCORING_RETRIES", "0", "scoring_retries", 0),
        ("SCORING_RETRIES", "-1", "scoring_retries", None),
        ("PREDICT_CACHE_SECONDS", "0", "predict_cache_seconds", 0.0),
        ("PREDICT_CACHE_SECONDS", "-2", "predict_cache_seconds", None),
    ],
)
def test_predict_settings_parse_or_are_named(key, value, field, expected):
    """Predict's timeouts, retries and cache period parse when sane; otherwise the error names the key."""
    environ = {**BASE, "BarsStorage": "UseDevelopmentStorage=true", key: value}
    if expected is None:
        with pytest.raises(SettingsError, match=f"invalid app settings: {key}="):
            load_settings(environ)
    else:
        assert getattr(load_settings(environ), field) == expected


OFF = {"use_env_settings": False}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, OFF),
        ({"PATH": "/usr/bin", "HOME": "/root", "BarsStorage": "x"}, OFF),
        ({"HTTPS_PROXY": "http://proxy:3128"}, {"use_env_settings": True}),
        ({"https_proxy": "http://proxy:3128"}, {"use_env_settings": True}),
        ({"ALL_PROXY": "socks5://proxy:1080"}, {"use_env_settings": True}),
        ({"NO_PROXY": "localhost"}, {"use_env_settings": True}),
        ({"HTTPS_PROXY": "http://p:3128", "REQUESTS_CA_BUNDLE": "/r.pem"}, {"use_env_settings": True}),
        ({"HTTPS_PROXY": ""}, OFF),
        ({"REQUESTS_CA_BUNDLE": "/etc/ssl/corp.pem"}, {**OFF, "connection_verify": "/etc/ssl/corp.pem"}),
        ({"CURL_CA_BUNDLE": "/c.pem"}, {**OFF, "connection_verify": "/c.pem"}),
        ({"CURL_CA_BUNDLE": "/c.pem", "REQUESTS_CA_BUNDLE": "/r.pem"}, {**OFF, "connection_verify": "/r.pem"}),
        ({"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "/c.pem"}, {**OFF, "connection_verify": "/c.pem"}),
        ({"curl_ca_bundle": "/c.pem"}, OFF),  # requests reads the upper-case names only
    ],
)
def test_http_environment_reads_proxies_per_call_and_a_ca_bundle_once(environ, expected):
    """A *_proxy variable keeps requests' per-call reading; a CA bundle alone is passed once, as requests picks it."""
    assert http_environment(environ) == expected
