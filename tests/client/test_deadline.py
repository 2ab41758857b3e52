"""Every call has a total deadline: a server that drips bytes cannot keep a call open."""

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient, RetryPolicy
from fhir_alliance.errors import InputError, TransientServerError, TransportError

from .conftest import RecordedSleep

#: How long the drip server keeps dripping at most: a client without a deadline waits this long.
DRIP_FOR = 8.0
DRIP_EVERY = 1.0  # below the read timeout the tests use (3 s), so no socket read ever times out

HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 200\r\n\r\n"


def drip_server(first: bytes) -> Callable[[], Iterator[tuple[str, list[int]]]]:
    """A loopback server that reads a request, sends ``first`` at once, then one byte a second."""

    def fixture() -> Iterator[tuple[str, list[int]]]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        accepted: list[int] = []
        stop = threading.Event()

        def drip(conn: socket.socket) -> None:
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(first)
                    until = time.monotonic() + DRIP_FOR
                    while time.monotonic() < until and not stop.wait(DRIP_EVERY):
                        conn.sendall(b" ")
                except OSError:
                    return  # the client gave up

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                accepted.append(1)
                threading.Thread(target=drip, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", accepted
        finally:
            stop.set()
            thread.join()
            listener.close()

    return fixture


dripping_headers = pytest.fixture(drip_server(b"HTTP/1.1 200 OK\r\n"))
dripping_body = pytest.fixture(drip_server(HEADERS + b'{"resourceType": "Observation", '))


@pytest.mark.parametrize("server", ["dripping_headers", "dripping_body"])
def test_dripping_server_is_cut_off_at_the_deadline(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Headers or body dripped a byte a second: the call ends at its deadline, not when the drip does."""
    base, _ = request.getfixturevalue(server)
    client = FhirClient(
        base, timeout=(3.0, 3.0), deadline=1.5, retry=RetryPolicy(sleep=lambda s: None)
    )
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        client.read("Observation", "o1")
    elapsed = time.monotonic() - started
    client.close()
    assert 1.4 < elapsed < 3.0
    assert "deadline" in caught.value.message and "1.5 s" in caught.value.message
    assert caught.value.__cause__ is None


def test_deadline_includes_retries(dripping_headers: tuple[str, list[int]]) -> None:
    """A read timeout retried: every attempt fits in the one deadline; no attempt starts after it."""
    base, accepted = dripping_headers
    client = FhirClient(
        base, timeout=(3.0, 0.5), deadline=1.8, retry=RetryPolicy(max_attempts=10, sleep=time.sleep)
    )
    started = time.monotonic()
    with pytest.raises(TransportError):
        client.read("Observation", "o1")
    assert time.monotonic() - started < 2.5
    assert 1 <= len(accepted) <= 4  # retried, but bounded by the deadline, not max_attempts
    client.close()


def test_retry_wait_beyond_the_deadline_is_not_slept(httpserver: HTTPServer) -> None:
    """A Retry-After longer than the time left raises at once instead of sleeping past the deadline."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        "", status=503, headers={"Retry-After": "5"}
    )
    slept = RecordedSleep()
    client = FhirClient(httpserver.url_for("/fhir"), deadline=2.0, retry=RetryPolicy(sleep=slept))
    with pytest.raises(TransientServerError):
        client.read("Observation", "o1")
    assert slept.waits == [] and len(httpserver.log) == 1
    client.close()


def test_connection_is_reusable_after_a_call_that_finished_in_time(httpserver: HTTPServer) -> None:
    """A deadline that passes after the call ended does not break the pooled connection."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(
        {"resourceType": "Observation", "id": "o1"}
    )
    with FhirClient(httpserver.url_for("/fhir"), deadline=0.3) as client:
        assert client.read("Observation", "o1")["id"] == "o1"
        time.sleep(0.5)  # the first call's deadline has passed by now
        assert client.read("Observation", "o1")["id"] == "o1"


def test_deadline_is_on_by_default_and_must_be_positive() -> None:
    """The default client has a finite deadline; zero or a negative one is refused by name."""
    assert 0 < FhirClient("http://127.0.0.1:9/fhir").deadline <= 300
    with pytest.raises(InputError) as caught:
        FhirClient("http://127.0.0.1:9/fhir", deadline=0)
    assert caught.value.issues[0].path == "deadline"
