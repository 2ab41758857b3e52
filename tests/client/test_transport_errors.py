"""Failures without an HTTP answer are told apart: refused, host not found, timed out."""

import socket
from collections.abc import Iterator

import pytest

from fhir_alliance.client import FhirClient, RetryPolicy
from fhir_alliance.errors import TransportError


def no_retry_client(base_url: str, **kwargs: object) -> FhirClient:
    return FhirClient(
        base_url,
        retry=RetryPolicy(max_attempts=1),
        connect_retries=0,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A listener that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"


def test_connection_refused_is_named(closed_port: int) -> None:
    """Nothing listening: 'connection refused', not a timeout."""
    with pytest.raises(TransportError) as caught:
        no_retry_client(f"http://127.0.0.1:{closed_port}/fhir").read("Patient", "p1")
    assert caught.value.message.startswith("connection refused")


def test_unknown_host_is_named() -> None:
    """A name that does not resolve (.invalid never does): 'host not found'."""
    with pytest.raises(TransportError) as caught:
        no_retry_client("http://no-such-host.invalid/fhir").read("Patient", "p1")
    assert caught.value.message.startswith("host not found")


def test_silent_server_is_a_timeout(silent_server: str) -> None:
    """A server that accepts and never answers: 'timed out', neither refused nor unknown."""
    with pytest.raises(TransportError) as caught:
        no_retry_client(silent_server, timeout=(1.0, 0.2)).read("Patient", "p1")
    assert "timed out" in caught.value.message


def test_a_refusal_or_an_unknown_host_says_nothing_was_sent(closed_port: int) -> None:
    """Refused, or a name that does not resolve: the request never left, so a write cannot have
    been applied (``may_have_arrived`` False), which the sync worker relies on not to read back
    what was never sent."""
    for base_url in (f"http://127.0.0.1:{closed_port}/fhir", "http://no-such-host.invalid/fhir"):
        with pytest.raises(TransportError) as caught:
            no_retry_client(base_url).update({"resourceType": "Patient", "id": "p1"})
        assert caught.value.may_have_arrived is False, caught.value.message


def test_a_server_that_took_the_request_and_never_answered_may_have_applied_it(
    silent_server: str,
) -> None:
    """Connected and sent, then no answer (a read timeout): the write may have been applied."""
    with pytest.raises(TransportError) as caught:
        no_retry_client(silent_server, timeout=(1.0, 0.2)).update(
            {"resourceType": "Patient", "id": "p1"}
        )
    assert caught.value.may_have_arrived is True
    assert caught.value.message.startswith("request timed out (")
