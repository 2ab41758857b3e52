"""Fault injection (pytest-httpserver): retries, timeouts, resets, bad bodies, hostile links."""

import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import BearerTokenAuth, BundleRequest, FhirClient, RetryPolicy
from fhir_alliance.client.retry import parse_retry_after
from fhir_alliance.errors import (
    InvalidResponseError,
    LimitExceededError,
    ResponseTooLargeError,
    TransientServerError,
    TransportError,
    UnprocessableError,
    UnsafeLinkError,
)

from .conftest import RecordedSleep

OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
TOKEN = "s3cr3t-token-value"


def client_for(server: HTTPServer, policy: RetryPolicy, **kwargs: object) -> FhirClient:
    return FhirClient(server.url_for("/fhir"), retry=policy, **kwargs)  # type: ignore[arg-type]


def searchset(next_url: str | None = None) -> dict:
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": OBS, "search": {"mode": "match"}}],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def test_429_with_retry_after_waits_that_long(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """429 with Retry-After: 3 → the client waits 3 s, then succeeds."""
    httpserver.expect_oneshot_request("/fhir/Observation/o1").respond_with_data(
        "", status=429, headers={"Retry-After": "3"}
    )
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(OBS)
    assert client_for(httpserver, retry_policy).read("Observation", "o1")["id"] == "o1"
    assert slept.waits == [3.0]
    assert len(httpserver.log) == 2


def test_429_without_retry_after_backs_off_exponentially(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """429 without Retry-After (Medplum's own server) → jittered exponential backoff."""
    for _ in range(2):
        httpserver.expect_oneshot_request("/fhir/Observation/o1").respond_with_data("", status=429)
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(OBS)
    client_for(httpserver, retry_policy).read("Observation", "o1")
    assert slept.waits == [0.5, 1.0]


def test_retry_after_beyond_the_bound_is_not_waited_for(
    httpserver: HTTPServer, slept: RecordedSleep
) -> None:
    """A Retry-After above max_retry_after raises at once with retry_after for the outbox."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        "", status=503, headers={"Retry-After": "3600"}
    )
    policy = RetryPolicy(max_retry_after=60, sleep=slept)
    with pytest.raises(TransientServerError) as caught:
        client_for(httpserver, policy).read("Observation", "o1")
    assert caught.value.retry_after == 3600.0 and slept.waits == []
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_on_get_is_retried_to_the_attempt_bound(
    httpserver: HTTPServer, retry_policy: RetryPolicy, status: int
) -> None:
    """GET after 500/502/503 is retried, max_attempts in all, then TransientServerError."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]},
        status=status,
    )
    with pytest.raises(TransientServerError) as caught:
        client_for(httpserver, retry_policy).read("Observation", "o1")
    assert caught.value.status == status and caught.value.outcome is not None
    assert len(httpserver.log) == 4


def test_plain_post_is_never_retried(httpserver: HTTPServer, retry_policy: RetryPolicy) -> None:
    """A plain create that got 503 is not sent again (it may have been processed)."""
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_data("", status=503)
    with pytest.raises(TransientServerError):
        client_for(httpserver, retry_policy).create(OBS)
    assert len(httpserver.log) == 1


def test_conditional_create_retried_only_when_refused(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """If-None-Exist create: retried after 503 (refused), not after 500 (may have run)."""
    httpserver.expect_oneshot_request("/fhir/Observation", method="POST").respond_with_data(
        "", status=503
    )
    httpserver.expect_oneshot_request("/fhir/Observation", method="POST").respond_with_json(
        OBS, status=201
    )
    client = client_for(httpserver, retry_policy)
    result = client.create(OBS, if_none_exist={"identifier": "urn:x|1"})
    assert result.created and len(httpserver.log) == 2
    assert httpserver.log[0][0].headers["If-None-Exist"] == "identifier=urn%3Ax%7C1"
    httpserver.clear()
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_data("", status=500)
    with pytest.raises(TransientServerError):
        client.create(OBS, if_none_exist={"identifier": "urn:x|1"})
    assert len(httpserver.log) == 1


def test_bad_request_is_not_retried(httpserver: HTTPServer, retry_policy: RetryPolicy) -> None:
    """400 is permanent: UnprocessableError after one request."""
    httpserver.expect_request("/fhir/Observation/o1", method="PUT").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]},
        status=400,
    )
    with pytest.raises(UnprocessableError):
        client_for(httpserver, retry_policy).update(OBS)
    assert len(httpserver.log) == 1


def test_read_timeout_retries_get_but_not_post(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A read timeout on GET is retried to the bound; on a plain POST it is raised at once."""

    def slow(request: Request) -> Response:
        time.sleep(0.4)
        return Response("{}", status=200)

    httpserver.expect_request("/fhir/Observation/o1").respond_with_handler(slow)
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_handler(slow)
    policy = RetryPolicy(max_attempts=2, sleep=retry_policy.sleep, random=lambda: 0.0)
    client = client_for(httpserver, policy, timeout=(2.0, 0.1))
    with pytest.raises(TransportError) as caught:
        client.read("Observation", "o1")
    assert "timed out" in caught.value.message and caught.value.retryable
    assert caught.value.__cause__ is None  # the requests error (with the URL) is not chained
    with pytest.raises(TransportError):
        client.create(OBS)
    deadline = time.monotonic() + 5  # the single-threaded server finishes the slow handlers
    while len(httpserver.log) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # and would log a late extra request, if one had been sent
    methods = [req.method for req, _ in httpserver.log]
    assert methods.count("GET") == 2 and methods.count("POST") == 1


@pytest.fixture
def resetting_server() -> Iterator[tuple[str, list[int]]]:
    """A TCP server that reads a request and answers with a connection reset (RST)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            conn.recv(65536)
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", accepted
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_connection_reset_retries_get_but_not_post(
    resetting_server: tuple[str, list[int]], retry_policy: RetryPolicy
) -> None:
    """A reset after sending: GET retried to the bound; plain POST raised after one try."""
    base, accepted = resetting_server
    client = FhirClient(base, retry=retry_policy)
    with pytest.raises(TransportError) as caught:
        client.read("Observation", "o1")
    assert "connection failed" in caught.value.message
    assert len(accepted) == 4
    with pytest.raises(TransportError):
        client.create(OBS)
    assert len(accepted) == 5
    client.close()


def test_html_page_with_200_is_invalid_response(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A 200 HTML page (a login portal) is InvalidResponseError, not data."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        "<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html"
    )
    with pytest.raises(InvalidResponseError) as caught:
        client_for(httpserver, retry_policy).read("Observation", "o1")
    assert "HTML" in caught.value.message


def test_html_error_page_on_502_is_transient(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A proxy's HTML 502 page is a TransientServerError without outcome (and is retried)."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        "<html><h1>502 Bad Gateway</h1></html>", status=502, content_type="text/html"
    )
    with pytest.raises(TransientServerError) as caught:
        client_for(httpserver, retry_policy).read("Observation", "o1")
    assert caught.value.outcome is None and len(httpserver.log) == 4


def test_invalid_json_is_invalid_response(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """Truncated JSON with a FHIR content type is InvalidResponseError."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        '{"resourceType": "Observation", "id": ', content_type="application/fhir+json"
    )
    with pytest.raises(InvalidResponseError) as caught:
        client_for(httpserver, retry_policy).read("Observation", "o1")
    assert "invalid JSON" in caught.value.message


def test_oversized_answer_is_refused(httpserver: HTTPServer, retry_policy: RetryPolicy) -> None:
    """An answer above max_response_bytes raises ResponseTooLargeError with the answer's status:
    a LimitExceededError (a bound) and an InvalidResponseError (an answer that was not read)."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(
        OBS | {"note": [{"text": "x" * 5000}]}
    )
    with pytest.raises(ResponseTooLargeError) as caught:
        client_for(httpserver, retry_policy, max_response_bytes=1000).read("Observation", "o1")
    assert isinstance(caught.value, LimitExceededError | InvalidResponseError)
    assert caught.value.status == 200
    assert caught.value.to_operation_outcome()["issue"][0]["code"] == "too-costly"


def _gzip_bomb(size: int) -> bytes:
    """A gzip body of ``size`` bytes of JSON-ish text once decompressed (about a thousandth of
    that compressed), made chunk by chunk so that the test itself never holds ``size`` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    chunk = b" " * (1 << 20)
    parts = [compressor.compress(b'{"resourceType": "Observation", "id": "o1", "x": "')]
    parts += [compressor.compress(chunk) for _ in range(size >> 20)]
    parts.append(compressor.compress(b'"}') + compressor.flush())
    return b"".join(parts)


def test_a_compressed_answer_is_refused_before_it_is_decompressed_whole(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """max_response_bytes bounds the answer as decompressed, and so the memory it takes: a
    server's gzip answer of about 128 KiB that would be 128 MiB is refused without the client
    ever holding much more than the bound. (urllib3 before 2.6 decompressed each chunk read
    whole: one read of a 256 KiB chunk could become 256 MiB, whatever the bound.)"""
    body = _gzip_bomb(128 << 20)
    assert len(body) < 1 << 20
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        body, headers={"Content-Encoding": "gzip"}, content_type="application/fhir+json"
    )
    client = client_for(httpserver, retry_policy, max_response_bytes=1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLargeError):
            client.read("Observation", "o1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB held for an answer bounded at 1 MB"


def test_an_oversized_transaction_answer_is_each_entrys_error(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A transaction the server answered with more than max_response_bytes may have been
    applied: each entry carries the ResponseTooLargeError (not raised past the other chunks),
    so a caller can tell it from a failure before anything was sent."""
    padded = {"resourceType": "Bundle", "type": "transaction-response", "id": "x" * 5000}
    httpserver.expect_request("/fhir", method="POST").respond_with_json(padded)
    client = client_for(httpserver, retry_policy, max_response_bytes=1000)
    requests_ = [BundleRequest.put(OBS), BundleRequest.put(OBS | {"id": "o2"})]
    outcomes = client.transaction(requests_, chunk_size=2)
    assert [type(o.error) for o in outcomes] == [ResponseTooLargeError] * 2
    assert [o.status for o in outcomes] == [200, 200] and not any(o.ok for o in outcomes)


def test_paging_follows_next_within_the_base(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """next links inside the base, including HAPI's [base]?_getpages=, are followed in turn."""
    page2 = httpserver.url_for("/fhir") + "?_getpages=abc&_getpagesoffset=1"
    page3 = httpserver.url_for("/fhir/Observation") + "?_offset=2"
    httpserver.expect_request("/fhir/Observation", query_string="code=x").respond_with_json(
        searchset(page2)
    )
    httpserver.expect_request(
        "/fhir", query_string="_getpages=abc&_getpagesoffset=1"
    ).respond_with_json(searchset(page3))
    httpserver.expect_request("/fhir/Observation", query_string="_offset=2").respond_with_json(
        searchset()
    )
    found = list(client_for(httpserver, retry_policy).search("Observation", {"code": "x"}))
    assert len(found) == 3 and len(httpserver.log) == 3


def test_page_cap_raises(httpserver: HTTPServer, retry_policy: RetryPolicy) -> None:
    """A server whose next links never end (each a new page) is stopped at max_pages with
    LimitExceededError."""
    served: list[int] = []

    def endless(request: Request) -> Response:
        served.append(1)
        page = httpserver.url_for("/fhir/Observation") + f"?page={len(served) + 1}"
        return Response(json.dumps(searchset(page)), content_type="application/fhir+json")

    httpserver.expect_request("/fhir/Observation").respond_with_handler(endless)
    client = client_for(httpserver, retry_policy, max_pages=5)
    with pytest.raises(LimitExceededError):
        list(client.search("Observation"))
    assert len(httpserver.log) == 5


@pytest.mark.parametrize("loop", ["same-page", "back-to-first"])
def test_a_next_link_to_a_page_already_read_raises_before_requesting_it(
    httpserver: HTTPServer, retry_policy: RetryPolicy, loop: str
) -> None:
    """A next link naming a page already read (the page itself, or the first page again) is an
    InvalidResponseError before that page is requested again, not a loop to max_pages."""
    first = httpserver.url_for("/fhir/Observation")
    second = first + "?page=2"
    httpserver.expect_request("/fhir/Observation", query_string="").respond_with_json(
        searchset(second)
    )
    httpserver.expect_request("/fhir/Observation", query_string="page=2").respond_with_json(
        searchset(second if loop == "same-page" else first)
    )
    client = client_for(httpserver, retry_policy, max_pages=50)
    with pytest.raises(InvalidResponseError, match="repeats a page"):
        list(client.search("Observation"))
    assert len(httpserver.log) == 2


@pytest.mark.parametrize("kind", ["other-port", "other-host", "look-alike", "path-prefix"])
def test_hostile_next_link_is_never_requested(
    httpserver: HTTPServer, other_server: HTTPServer, retry_policy: RetryPolicy, kind: str
) -> None:
    """A next link leaving the base raises UnsafeLinkError; no request (no token) goes there."""
    base = httpserver.url_for("/fhir")
    port = httpserver.port
    hostile = {
        "other-port": other_server.url_for("/fhir/Observation?page=2"),
        "other-host": f"http://127.0.0.1:{port}/fhir/Observation?page=2",  # base host is localhost
        "look-alike": other_server.url_for("/steal") + f"?next={base}/Observation",
        "path-prefix": f"http://localhost:{port}/fhir-evil/Observation?page=2",
    }[kind]
    other_server.expect_request("/fhir/Observation").respond_with_json(searchset())
    other_server.expect_request("/steal").respond_with_json(searchset())
    httpserver.expect_request("/fhir/Observation").respond_with_json(searchset(hostile))
    httpserver.expect_request("/fhir-evil/Observation").respond_with_json(searchset())
    client = client_for(httpserver, retry_policy, auth=BearerTokenAuth(TOKEN))
    pages = client.search_pages("Observation")
    first = next(pages)
    assert first["type"] == "searchset"
    with pytest.raises(UnsafeLinkError):
        next(pages)
    assert other_server.log == []
    assert len(httpserver.log) == 1  # only the first page, on the real base
    assert httpserver.log[0][0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_redirects_are_not_followed(
    httpserver: HTTPServer, other_server: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A 302 to another server is an InvalidResponseError; the token does not follow it."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_data(
        "", status=302, headers={"Location": other_server.url_for("/fhir/Observation/o1")}
    )
    other_server.expect_request("/fhir/Observation/o1").respond_with_json(OBS)
    client = client_for(httpserver, retry_policy, auth=BearerTokenAuth(TOKEN))
    with pytest.raises(InvalidResponseError):
        client.read("Observation", "o1")
    assert other_server.log == []


def test_search_streams_one_page_at_a_time(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """The first result is yielded after one request; the next page is fetched only when needed."""
    page2 = httpserver.url_for("/fhir/Observation") + "?_offset=1"
    httpserver.expect_request("/fhir/Observation", query_string="").respond_with_json(
        searchset(page2)
    )
    httpserver.expect_request("/fhir/Observation", query_string="_offset=1").respond_with_json(
        searchset()
    )
    results = client_for(httpserver, retry_policy).search("Observation")
    assert len(httpserver.log) == 0  # nothing is sent before iteration starts
    next(results)
    assert len(httpserver.log) == 1
    assert list(results) and len(httpserver.log) == 2


# Digits str.isdigit() accepts that are not ASCII: a superscript two (int() refuses it), and
# fullwidth and Arabic-Indic digits (int() reads them). HTTP numbers are ASCII digits only. A
# header reaches the client as Latin-1, so of these only the superscript can be in one.
OTHER_DIGITS = ["\u00b2", "\uff12", "\u0662"]
SUPERSCRIPT_TWO = "\u00b2"


@pytest.mark.parametrize("digit", OTHER_DIGITS, ids=["superscript", "fullwidth", "arabic-indic"])
def test_a_bundle_entry_status_in_other_digits_is_an_unreadable_answer(
    httpserver: HTTPServer, retry_policy: RetryPolicy, digit: str
) -> None:
    """A transaction-response entry whose status is "200 OK" with another script's 2: that entry
    carries an InvalidResponseError (the Bundle was answered, so it may have been applied), the
    others are read as usual. It used to raise ValueError out of the client (a superscript), or
    take the entry for a success (digits int() reads)."""
    hostile = {"status": f"{digit}00 OK", "location": "Observation/o1/_history/1"}
    fine = {"status": "200 OK", "location": "Observation/o2/_history/1"}
    answer = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": hostile}, {"response": fine}],
    }
    httpserver.expect_request("/fhir", method="POST").respond_with_json(answer)
    requests_ = [BundleRequest.put(OBS), BundleRequest.put(OBS | {"id": "o2"})]
    first, second = client_for(httpserver, retry_policy).transaction(requests_)
    assert isinstance(first.error, InvalidResponseError) and not first.ok
    assert first.status is None and first.id is None
    assert "status" in first.error.message and digit not in first.error.message
    assert second.ok and (second.id, second.version_id) == ("o2", "1")


def test_a_content_length_in_other_digits_is_not_believed(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A Content-Length of superscript digits says nothing: the body is read as one without it,
    up to ``max_response_bytes`` (it used to raise ValueError out of the client)."""
    answer = Response(json.dumps(OBS), content_type="application/fhir+json")
    answer.headers["Content-Length"] = SUPERSCRIPT_TWO * 4  # after the body, which sets its own
    answer.headers["Connection"] = "close"  # the body ends when the connection does
    httpserver.expect_request("/fhir/Observation/o1").respond_with_response(answer)
    client = client_for(httpserver, retry_policy, max_response_bytes=1000)
    assert client.read("Observation", "o1")["id"] == "o1"


def test_a_retry_after_in_other_digits_is_not_believed(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """503 with a Retry-After of superscript digits: unreadable, so the client backs off as
    without one, then succeeds (it used to raise ValueError out of the client). Nor are digits
    of other scripts read as a delay (``parse_retry_after``)."""
    httpserver.expect_oneshot_request("/fhir/Observation/o1").respond_with_data(
        "", status=503, headers={"Retry-After": SUPERSCRIPT_TWO * 3}
    )
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(OBS)
    assert client_for(httpserver, retry_policy).read("Observation", "o1")["id"] == "o1"
    assert slept.waits == [0.5]  # the first backoff (jitter at its ceiling)
    for digit in OTHER_DIGITS:
        assert parse_retry_after(digit * 3, now=0.0) is None
