"""Storage clients are bounded by the settings: a dead or silent endpoint fails in seconds, not minutes."""

from __future__ import annotations

import os
import socket
import time

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.storage.blob import LinearRetry

from devhost.processes import free_port
from functions.settings import load_settings
from functions.shared.storage import bars_container, client_options, connection_string_client
from tests.factories import LOCAL_APP_SETTINGS

BASE = LOCAL_APP_SETTINGS


def _connection_string(port: int) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=stockcast;AccountKey=c3RvY2tjYXN0;"
        f"BlobEndpoint=http://127.0.0.1:{port}/stockcast;"
    )


def test_client_options_come_from_the_settings():
    """Connect and read timeouts, retry count and backoff are the settings' values."""
    settings = load_settings(
        {
            **BASE,
            "BarsStorage": "x",
            "STORAGE_CONNECT_TIMEOUT_SECONDS": "1.5",
            "STORAGE_TIMEOUT_SECONDS": "4",
            "STORAGE_RETRIES": "1",
            "STORAGE_RETRY_BACKOFF_SECONDS": "0.2",
        }
    )
    options = client_options(settings)
    assert (options["connection_timeout"], options["read_timeout"]) == (1.5, 4.0)
    policy = options["retry_policy"]
    assert isinstance(policy, LinearRetry)
    assert (policy.total_retries, policy.backoff, policy.random_jitter_range) == (1, 0.2, 0.1)


def test_identity_client_is_bounded_too():
    """The managed-identity client of Azure gets the same bounds as the local connection string."""
    settings = load_settings({**BASE, "BarsStorage__blobServiceUri": "https://acct.blob.core.windows.net"})
    container = bars_container(settings)
    assert container._config.retry_policy.total_retries == settings.storage_retries
    transport = container._pipeline._transport._transport.connection_config  # the SDK keeps it private
    assert (transport.timeout, transport.read_timeout) == (
        settings.storage_connect_timeout_s,
        settings.storage_timeout_s,
    )


@pytest.mark.parametrize("call", ["get_container_properties", "upload_blob"])
def test_closed_port_fails_within_five_seconds(call):
    """Storage down: with the default settings a call fails in well under 5 s (the SDK's defaults took 82 s)."""
    port = free_port()  # bound and released: nothing listens there now
    container = bars_container(load_settings({**BASE, "BarsStorage": _connection_string(port)}))
    started = time.perf_counter()
    with pytest.raises(ServiceRequestError):
        if call == "upload_blob":
            container.upload_blob("latest/AAA.parquet", b"x", overwrite=True)
        else:
            container.get_container_properties()
    assert time.perf_counter() - started < 5.0


def test_silent_endpoint_times_out_as_configured():
    """An endpoint that accepts connections but never answers fails after (retries + 1) read timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody ever reads or answers
        port = silent.getsockname()[1]
        settings = load_settings(
            {
                **BASE,
                "BarsStorage": _connection_string(port),
                "STORAGE_TIMEOUT_SECONDS": "0.5",
                "STORAGE_RETRIES": "1",
                "STORAGE_RETRY_BACKOFF_SECONDS": "0.1",
            }
        )
        client = connection_string_client(str(settings.bars_storage_connection_string), settings)
        started = time.perf_counter()
        with pytest.raises(ServiceResponseError):
            client.get_container_client("bars").get_container_properties()
        elapsed = time.perf_counter() - started
    assert 1.0 <= elapsed < 3.0


@pytest.mark.parametrize(("proxy", "reads_environment"), [(None, False), ("http://127.0.0.1:9", True)])
def test_the_transport_reads_proxy_variables_only_where_some_are_set(monkeypatch, proxy, reads_environment):
    """No proxy or CA bundle in the environment: requests is told not to look for them on every call."""
    for key in [k for k in os.environ if k.lower().endswith("_proxy") or k.upper().endswith("CA_BUNDLE")]:
        monkeypatch.delenv(key)
    if proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    settings = load_settings({**BASE, "BarsStorage": _connection_string(free_port())})
    assert client_options(settings)["use_env_settings"] is reads_environment
    container = connection_string_client(settings.bars_storage_connection_string, settings).get_container_client("c")
    assert container._pipeline._transport._transport._use_env_settings is reads_environment  # the SDK keeps it private
