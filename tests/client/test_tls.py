"""TLS verification is always on: a self-signed server is refused unless its CA is given."""

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_httpserver import HTTPServer

from fhir_alliance.client import BearerTokenAuth, FhirClient, RetryPolicy
from fhir_alliance.errors import TransportError


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[HTTPServer, Path]]:
    """An https server on 127.0.0.1 with a fresh self-signed certificate; yields (server, cert path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    try:
        yield server, cert_path
    finally:
        server.clear()
        server.stop()


def test_self_signed_server_is_refused(tls_server: tuple[HTTPServer, Path]) -> None:
    """Without the CA, the TLS handshake fails: TransportError, and no request is served."""
    server, _ = tls_server
    server.expect_request("/fhir/metadata").respond_with_json(
        {"resourceType": "CapabilityStatement"}
    )
    client = FhirClient(
        server.url_for("/fhir"),
        auth=BearerTokenAuth("secret"),
        retry=RetryPolicy(max_attempts=1),
        connect_retries=0,
    )
    with pytest.raises(TransportError):
        client.read("Patient", "p1")
    assert server.log == []
    client.close()


def test_private_ca_bundle_is_trusted(tls_server: tuple[HTTPServer, Path]) -> None:
    """With ca_bundle naming the server's CA, the same call succeeds."""
    server, cert_path = tls_server
    server.expect_request("/fhir/Patient/p1").respond_with_json(
        {"resourceType": "Patient", "id": "p1"}
    )
    with FhirClient(server.url_for("/fhir"), ca_bundle=str(cert_path)) as client:
        assert client.read("Patient", "p1")["id"] == "p1"


def test_certificate_failure_is_named_and_not_retried(tls_server: tuple[HTTPServer, Path]) -> None:
    """An untrusted certificate is reported as a certificate failure and never retried."""
    server, _ = tls_server
    waits: list[float] = []
    client = FhirClient(
        server.url_for("/fhir"), retry=RetryPolicy(max_attempts=4, sleep=waits.append)
    )
    with pytest.raises(TransportError) as caught:
        client.read("Patient", "p1")
    assert "certificate verification failed" in caught.value.message
    assert not caught.value.retryable and waits == []
    client.close()
