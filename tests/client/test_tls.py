"""TLS verification is always on: a self-signed server is refused unless its CA is given."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance.client import BearerTokenAuth, FhirClient, RetryPolicy
from fhir_alliance.errors import TransportError

from .tls import self_signed_https_server


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[HTTPServer, Path]]:
    """An https server on 127.0.0.1 with a fresh self-signed certificate; yields (server, cert path)."""
    with self_signed_https_server(tmp_path) as server:
        yield server


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
