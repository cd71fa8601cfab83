"""Storage clients are bounded by the settings: a dead or silent endpoint fails in seconds, not minutes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError, ServiceResponseError
from azure.storage.blob import LinearRetry
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devhost.shared.processes import free_port
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


def _clear_http_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.lower().endswith("_proxy") or k.upper().endswith("CA_BUNDLE")]:
        monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("variable", "reads_environment", "verify"),
    [
        (None, False, True),
        (("HTTPS_PROXY", "http://127.0.0.1:9"), True, True),
        (("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem"), False, "/etc/ssl/corp.pem"),
    ],
)
def test_the_transport_reads_the_environment_per_call_only_for_proxies(
    monkeypatch, variable, reads_environment, verify
):
    """No proxy: requests is told not to walk the environment on every call; a CA bundle is passed to it once."""
    _clear_http_environment(monkeypatch)
    if variable:
        monkeypatch.setenv(*variable)
    settings = load_settings({**BASE, "BarsStorage": _connection_string(free_port())})
    assert client_options(settings)["use_env_settings"] is reads_environment
    container = connection_string_client(settings.bars_storage_connection_string, settings).get_container_client("c")
    transport = container._pipeline._transport._transport  # the SDK keeps it private
    assert (transport._use_env_settings, transport.connection_config.verify) == (reads_environment, verify)


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on loopback whose certificate no system store trusts: (port, its certificate's path).

    It answers every GET as Blob Storage answers for a missing container.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class MissingContainer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ContainerNotFound</Code></Error>'
            self.send_response(404)
            self.send_header("x-ms-error-code", "ContainerNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), MissingContainer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], cert_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("trusted", [True, False])
def test_a_ca_bundle_variable_still_decides_which_certificates_are_trusted(monkeypatch, tls_server, trusted):
    """REQUESTS_CA_BUNDLE naming the server's certificate lets the call through (a 404); without it, TLS fails."""
    port, cert = tls_server
    _clear_http_environment(monkeypatch)
    if trusted:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    connection = (
        "DefaultEndpointsProtocol=https;AccountName=stockcast;AccountKey=c3RvY2tjYXN0;"
        f"BlobEndpoint=https://127.0.0.1:{port}/stockcast;"
    )
    settings = load_settings({**BASE, "BarsStorage": connection, "STORAGE_RETRIES": "0"})
    container = connection_string_client(connection, settings).get_container_client("bars")
    if trusted:
        with pytest.raises(ResourceNotFoundError):
            container.get_container_properties()
    else:
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            container.get_container_properties()
