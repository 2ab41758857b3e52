"""``$import`` (FHIR Bulk Data import): capability detection, kick-off, polling and its faults.

Faults are injected with pytest-httpserver; the happy paths run against the suite's real server in
tests/test_push_bulk.py.
"""

import json
import logging

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance.client import BearerTokenAuth, FhirClient, RetryPolicy, ServerCapabilities
from fhir_alliance.client.bulk_import import (
    ImportInput,
    ImportPolling,
    import_parameters,
    run_import,
    start_import,
)
from fhir_alliance.errors import (
    InvalidResponseError,
    TransientServerError,
    TransportError,
    UnsafeLinkError,
)

from .conftest import RecordedSleep


def _statement(rest: dict) -> dict:
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def test_import_is_found_at_system_level_with_or_without_dollar() -> None:
    """``rest.operation`` named ``import`` (or ``$import``) declares the operation."""
    for name in ("import", "$import"):
        caps = ServerCapabilities.from_capability_statement(
            _statement({"mode": "server", "operation": [{"name": name, "definition": "x"}]})
        )
        assert caps.supports_operation("import") and caps.supports_operation("$import")


def test_import_is_found_on_a_resource_type() -> None:
    """An ``operation`` listed under one ``rest.resource`` counts too."""
    caps = ServerCapabilities.from_capability_statement(
        _statement(
            {
                "mode": "server",
                "resource": [{"type": "Observation", "operation": [{"name": "import"}]}],
            }
        )
    )
    assert caps.supports_operation("import")
    assert caps.resource("Observation").operations == frozenset({"import"})


def test_no_import_without_the_operation() -> None:
    """Other operations (``$export``) or none at all: ``$import`` is not supported."""
    caps = ServerCapabilities.from_capability_statement(
        _statement({"mode": "server", "operation": [{"name": "export"}], "resource": []})
    )
    assert not caps.supports_operation("import")
    assert not ServerCapabilities.from_capability_statement(_statement({})).supports_operation(
        "import"
    )


# ---------------------------------------------------------------------------- kick-off and polling

INPUTS = [
    ImportInput(type="Observation", url="http://files.example/abc/Observation.ndjson"),
    ImportInput(type="Provenance", url="http://files.example/abc/Provenance.ndjson"),
]
TOKEN = "s3cr3t-token-value"


class FakeClock:
    """A monotonic clock that the recorded sleeps move forward (so timeouts run in no time)."""

    def __init__(self, slept: RecordedSleep) -> None:
        self.slept = slept

    def __call__(self) -> float:
        return sum(self.slept.waits)


def _polling(slept: RecordedSleep, **kwargs: float) -> ImportPolling:
    return ImportPolling(sleep=slept, clock=FakeClock(slept), **kwargs)  # type: ignore[arg-type]


def _client(server: HTTPServer, policy: RetryPolicy, **kwargs: object) -> FhirClient:
    return FhirClient(server.url_for("/fhir"), retry=policy, **kwargs)  # type: ignore[arg-type]


def _completion(**extra: object) -> dict:
    body: dict = {
        "transactionTime": "2026-12-06T20:00:00Z",
        "request": "http://x/fhir/$import",
        "output": [
            {"type": "OperationOutcome", "count": 18, "inputUrl": INPUTS[0].url},
            {"type": "OperationOutcome", "count": 3, "inputUrl": INPUTS[1].url},
        ],
        "error": [],
    }
    body.update(extra)
    return body


def _accept(server: HTTPServer, location: str, **headers: str) -> None:
    server.expect_oneshot_request("/fhir/$import", method="POST").respond_with_data(
        "", status=202, headers={"Content-Location": location, **headers}
    )


def test_kick_off_sends_parameters_with_respond_async(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """The kick-off is a Parameters resource (inputFormat, inputSource, storageDetail, an input
    per file with type and url) sent with ``Prefer: respond-async``; the status URL is polled."""
    _accept(httpserver, httpserver.url_for("/fhir/$import-status/job1"))
    httpserver.expect_request("/fhir/$import-status/job1").respond_with_json(_completion())
    outcome = run_import(
        _client(httpserver, retry_policy),
        INPUTS,
        input_source="https://clinic.example/exports",
        polling=_polling(slept),
    )
    kick_off = httpserver.log[0][0]
    assert kick_off.headers["Prefer"] == "respond-async"
    body = json.loads(kick_off.get_data())
    assert body == import_parameters(INPUTS, input_source="https://clinic.example/exports")
    assert body["resourceType"] == "Parameters"
    values = {p["name"]: p for p in body["parameter"]}
    assert values["inputFormat"]["valueCode"] == "application/fhir+ndjson"
    assert values["inputSource"]["valueUri"] == "https://clinic.example/exports"
    assert values["storageDetail"]["part"] == [{"name": "type", "valueCode": "https"}]
    inputs = [p["part"] for p in body["parameter"] if p["name"] == "input"]
    assert inputs == [
        [{"name": "type", "valueCode": i.type}, {"name": "url", "valueUrl": i.url}] for i in INPUTS
    ]
    assert outcome.ok and outcome.imported == {"Observation": 18, "Provenance": 3}
    assert outcome.polls == 1 and slept.waits == []


def test_polling_honours_retry_after_then_backs_off(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """202 with Retry-After: 7 waits 7 s; 202s without it back off 1, 2, 4 s; 200 completes."""
    status = "/fhir/$import-status/job1"
    _accept(httpserver, httpserver.url_for(status))
    httpserver.expect_oneshot_request(status).respond_with_data(
        "", status=202, headers={"Retry-After": "7", "X-Progress": "10%"}
    )
    for _ in range(3):
        httpserver.expect_oneshot_request(status).respond_with_data("", status=202)
    httpserver.expect_oneshot_request(status).respond_with_json(_completion())
    outcome = run_import(
        _client(httpserver, retry_policy), INPUTS, input_source="urn:x", polling=_polling(slept)
    )
    assert slept.waits == [7.0, 1.0, 2.0, 4.0]
    assert outcome.polls == 5 and outcome.ok


def test_a_relative_status_url_is_resolved_against_the_base(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """``Content-Location: $import-status/job1`` (relative) is polled inside the base."""
    _accept(httpserver, "$import-status/job1")
    httpserver.expect_request("/fhir/$import-status/job1").respond_with_json(_completion())
    outcome = run_import(
        _client(httpserver, retry_policy), INPUTS, input_source="urn:x", polling=_polling(slept)
    )
    assert outcome.status_url == httpserver.url_for("/fhir/$import-status/job1")


def test_500_on_poll_is_retried_then_raised_with_the_outcome(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """202, then the status URL answers 500: retried as any GET (4 attempts), then the job is
    cancelled (DELETE, here refused as well, which the message says) and the client's
    TransientServerError carrying the server's OperationOutcome is raised."""
    status = "/fhir/$import-status/job1"
    _accept(httpserver, httpserver.url_for(status))
    httpserver.expect_request(status).respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception"}]},
        status=500,
    )
    with pytest.raises(TransientServerError) as caught:
        run_import(
            _client(httpserver, retry_policy), INPUTS, input_source="urn:x", polling=_polling(slept)
        )
    assert caught.value.status == 500 and caught.value.outcome is not None
    assert "cancelling the import failed" in caught.value.message
    methods = [r.method for r, _ in httpserver.log if r.path == status]
    assert methods.count("GET") == 4 and set(methods[4:]) == {"DELETE"}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>busy</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"transactionTime": "2026-01-01T00:00:00Z"}', "no 'output'"),
        (b'{"output": {"count": 3}}', "'output' is not a list"),
        (b'{"output": [{"count": "3"}]}', "'output[0].count' is not a count"),
        (b'{"resourceType": "OperationOutcome", "issue": []}', "an OperationOutcome"),
    ],
)
def test_a_malformed_completion_body_is_refused(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep, body: bytes, why: str
) -> None:
    """A 200 whose body is not a completion report is an InvalidResponseError saying what is wrong."""
    _accept(httpserver, httpserver.url_for("/fhir/s"))
    httpserver.expect_request("/fhir/s").respond_with_data(body, status=200)
    with pytest.raises(InvalidResponseError) as caught:
        run_import(
            _client(httpserver, retry_policy), INPUTS, input_source="urn:x", polling=_polling(slept)
        )
    assert why in caught.value.message


def test_202_without_content_location_is_refused(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """A kick-off answered 202 with no status URL cannot be followed: InvalidResponseError."""
    httpserver.expect_request("/fhir/$import", method="POST").respond_with_data("", status=202)
    with pytest.raises(InvalidResponseError, match="Content-Location"):
        start_import(_client(httpserver, retry_policy), INPUTS, input_source="urn:x")


@pytest.mark.parametrize("where", ["other-host", "other-port", "outside-path"])
def test_hostile_content_location_gets_no_request_and_no_token(
    httpserver: HTTPServer, other_server: HTTPServer, retry_policy: RetryPolicy, where: str
) -> None:
    """A status URL outside the base (another host or port, a path beside the base) is refused
    before any request: the bearer token never reaches it."""
    location = {
        "other-host": "http://attacker.invalid/fhir/status",
        "other-port": other_server.url_for("/fhir/status"),
        "outside-path": httpserver.url_for("/admin/status"),
    }[where]
    _accept(httpserver, location)
    other_server.expect_request("/fhir/status").respond_with_json(_completion())
    httpserver.expect_request("/admin/status").respond_with_json(_completion())
    client = _client(httpserver, retry_policy, auth=BearerTokenAuth(TOKEN))
    with pytest.raises(UnsafeLinkError, match="credentials are not sent there"):
        run_import(client, INPUTS, input_source="urn:x")
    assert other_server.log == []
    assert [r.path for r, _ in httpserver.log] == ["/fhir/$import"]


def test_an_import_that_never_finishes_times_out(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """202 forever: TransportError once the next wait would pass the timeout; waits capped."""
    _accept(httpserver, httpserver.url_for("/fhir/s"))
    httpserver.expect_request("/fhir/s").respond_with_data(
        "", status=202, headers={"Retry-After": "100000"}
    )
    with pytest.raises(TransportError, match="did not finish within 1000 s"):
        run_import(
            _client(httpserver, retry_policy),
            INPUTS,
            input_source="urn:x",
            polling=_polling(slept, timeout=1000, max_retry_after=300),
        )
    assert slept.waits == [300.0, 300.0, 300.0]


def test_error_entries_are_counted_per_input_type(
    httpserver: HTTPServer, retry_policy: RetryPolicy, slept: RecordedSleep
) -> None:
    """Errors matched to inputs by URL count per resource type; the outcome is not ok. Entries
    without an input URL are matched by position when they correspond 1:1 with the inputs."""
    _accept(httpserver, httpserver.url_for("/fhir/s"))
    httpserver.expect_request("/fhir/s").respond_with_json(
        _completion(
            output=[{"count": 16}, {"count": 3}],
            error=[
                {"type": "OperationOutcome", "count": 2, "inputUrl": INPUTS[0].url, "url": "e1"},
            ],
        )
    )
    outcome = run_import(
        _client(httpserver, retry_policy), INPUTS, input_source="urn:x", polling=_polling(slept)
    )
    assert outcome.imported == {"Observation": 16, "Provenance": 3}
    assert outcome.failed == {"Observation": 2}
    assert not outcome.ok and outcome.error_entries == 1


def test_logs_carry_no_file_url_job_id_or_token(
    httpserver: HTTPServer,
    retry_policy: RetryPolicy,
    slept: RecordedSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Debug logs of a whole import name the interaction ($import, its status path as a
    template) but not the files' URLs, the job id, the bearer token or the server's diagnostics."""
    caplog.set_level(logging.DEBUG)
    status = "/fhir/$import-status/job-7f3a9"
    _accept(httpserver, httpserver.url_for(status))
    httpserver.expect_oneshot_request(status).respond_with_data("", status=202)
    httpserver.expect_oneshot_request(status).respond_with_json(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "exception", "diagnostics": "Patient Jane Doe"}
            ],
        },
        status=503,
    )
    httpserver.expect_request(status).respond_with_json(_completion())
    client = _client(httpserver, retry_policy, auth=BearerTokenAuth(TOKEN))
    run_import(client, INPUTS, input_source="urn:x", polling=_polling(slept))
    # werkzeug logs are pytest-httpserver's (the server side), not ours.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")
    assert "$import" in text
    for secret in ("job-7f3a9", "files.example", "abc", TOKEN, "Jane Doe"):
        assert secret not in text, secret


def test_an_interrupted_wait_cancels_the_job(
    httpserver: HTTPServer, retry_policy: RetryPolicy
) -> None:
    """Ctrl-C while waiting between polls: the job's status URL is sent a DELETE (the
    proposal's cancel), then the interrupt goes on."""
    status = "/fhir/$import-status/job1"
    _accept(httpserver, httpserver.url_for(status))
    httpserver.expect_request(status, method="GET").respond_with_data("", status=202)
    httpserver.expect_request(status, method="DELETE").respond_with_data("", status=202)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_import(
            _client(httpserver, retry_policy),
            INPUTS,
            input_source="urn:x",
            polling=ImportPolling(sleep=interrupted),
        )
    assert [(r.method, r.path) for r, _ in httpserver.log] == [
        ("POST", "/fhir/$import"),
        ("GET", status),
        ("DELETE", status),
    ]
