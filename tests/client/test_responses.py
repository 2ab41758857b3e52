"""The one status → error mapping, Retry-After parsing and FHIR JSON body checks."""

import pytest

from fhir_alliance.client.responses import RequestFacts, error_for_status, parse_resource
from fhir_alliance.client.retry import Replay, RetryPolicy, parse_retry_after
from fhir_alliance.errors import (
    AuthError,
    ConflictError,
    InvalidResponseError,
    MultipleMatchesError,
    NotFoundError,
    PreconditionFailedError,
    ServerError,
    TransientServerError,
    TransportError,
    UnprocessableError,
    VersionConflictError,
)

OO_PLAIN = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "processing", "diagnostics": "Precondition Failed"}],
}
OO_MULTIPLE_R5 = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "multiple-matches"}],
}
OO_MULTIPLE_TEXT = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "processing",
            "diagnostics": "Multiple resources match this search",
        }
    ],
}


def test_success_is_not_an_error() -> None:
    """2xx maps to no error."""
    assert error_for_status(201, RequestFacts("POST")) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, UnprocessableError),
        (422, UnprocessableError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (410, NotFoundError),
        (409, ConflictError),
        (429, TransientServerError),
        (500, TransientServerError),
        (502, TransientServerError),
        (503, TransientServerError),
        (504, TransientServerError),
        (302, InvalidResponseError),
        (405, ServerError),
    ],
)
def test_statuses_map_to_the_error_tree(status: int, kind: type[ServerError]) -> None:
    """Each status lands on its class, with the status and outcome kept."""
    error = error_for_status(status, RequestFacts("GET"), outcome=OO_PLAIN)
    assert type(error) is kind
    assert error.status == status and error.outcome == OO_PLAIN
    assert "Precondition" not in error.message  # diagnostics never reach the message


def test_410_is_gone() -> None:
    """410 is a NotFoundError with gone=True; 404 is not gone."""
    gone = error_for_status(410, RequestFacts("GET"))
    missing = error_for_status(404, RequestFacts("GET"))
    assert isinstance(gone, NotFoundError) and gone.gone
    assert isinstance(missing, NotFoundError) and not missing.gone


def test_412_with_if_match_is_a_stale_version() -> None:
    """412 answering a request with If-Match → VersionConflictError."""
    error = error_for_status(412, RequestFacts("PUT", if_match=True), outcome=OO_PLAIN)
    assert isinstance(error, VersionConflictError)


def test_412_on_conditional_create_is_multiple_matches() -> None:
    """412 answering If-None-Exist (no If-Match) → MultipleMatchesError."""
    error = error_for_status(412, RequestFacts("POST", conditional=True), outcome=OO_PLAIN)
    assert isinstance(error, MultipleMatchesError)


@pytest.mark.parametrize("outcome", [OO_MULTIPLE_R5, OO_MULTIPLE_TEXT])
def test_412_outcome_saying_multiple_matches_wins(outcome: dict) -> None:
    """The outcome's multiple-matches code or text decides even when If-Match was sent."""
    error = error_for_status(412, RequestFacts("PUT", if_match=True), outcome=outcome)
    assert isinstance(error, MultipleMatchesError)


def test_409_answering_if_match_is_a_stale_version() -> None:
    """A 409 to a request with If-Match (STU3-style servers) is a VersionConflictError; without
    If-Match, 409 stays a plain ConflictError."""
    stale = error_for_status(409, RequestFacts("PUT", if_match=True))
    plain = error_for_status(409, RequestFacts("PUT"))
    assert isinstance(stale, VersionConflictError) and stale.status == 409
    assert type(plain) is ConflictError


def test_412_otherwise_is_plain_precondition_failed() -> None:
    """412 with no conditional facts and no telling outcome stays PreconditionFailedError."""
    error = error_for_status(412, RequestFacts("DELETE"))
    assert type(error) is PreconditionFailedError


def test_retry_after_read_on_429_and_503_only() -> None:
    """Retry-After seconds are kept for 429/503, ignored for 500."""
    e429 = error_for_status(429, RequestFacts("GET"), retry_after="7")
    e500 = error_for_status(500, RequestFacts("GET"), retry_after="7")
    assert e429.retry_after == 7.0 and e500.retry_after is None


def test_retry_after_http_date() -> None:
    """An HTTP-date Retry-After becomes seconds from now; a past date becomes 0."""
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None


def test_parse_resource_refuses_html_and_broken_json() -> None:
    """HTML pages and invalid or non-resource JSON raise InvalidResponseError."""
    for body in (b"<!DOCTYPE html><html>Login</html>", b"{not json", b"[1, 2]", b'{"a": 1}'):
        with pytest.raises(InvalidResponseError):
            parse_resource(body, status=200)
    assert parse_resource(b'{"resourceType": "Bundle"}', status=200)["resourceType"] == "Bundle"


def test_replay_rules() -> None:
    """Idempotent requests retry on any transient error; conditional create only when refused
    (429/503); plain POST never."""
    e500 = TransientServerError("x", status=500)
    e503 = TransientServerError("x", status=503)
    reset = TransportError("x")
    assert Replay.IDEMPOTENT.allows(e500) and Replay.IDEMPOTENT.allows(reset)
    assert Replay.IF_REFUSED.allows(e503) and not Replay.IF_REFUSED.allows(e500)
    assert not Replay.IF_REFUSED.allows(reset)
    assert not Replay.NEVER.allows(e503)
    assert not Replay.IDEMPOTENT.allows(UnprocessableError("x", status=400))


def test_backoff_is_bounded_by_attempts_time_and_retry_after_cap() -> None:
    """Full-jitter backoff stays under its ceiling; bounds stop the retries."""
    clock = [0.0]
    policy = RetryPolicy(
        max_attempts=3,
        max_elapsed=10,
        backoff_base=1,
        random=lambda: 1.0,
        clock=lambda: clock[0],
        max_retry_after=30,
    )
    e500 = TransientServerError("x", status=500)
    assert policy.next_delay(1, 0.0, e500) == 1.0
    assert policy.next_delay(2, 0.0, e500) == 2.0
    assert policy.next_delay(3, 0.0, e500) is None  # attempts
    clock[0] = 9.5
    assert policy.next_delay(1, 0.0, e500) is None  # total time
    long_wait = TransientServerError("x", status=429, retry_after=60)
    assert RetryPolicy(max_retry_after=30).next_delay(1, 0.0, long_wait) is None


def test_retry_policy_settings_are_checked() -> None:
    """Zero attempts or negative waits are InputErrors naming each field."""
    from fhir_alliance.errors import InputError

    with pytest.raises(InputError) as caught:
        RetryPolicy(max_attempts=0, backoff_base=-1)
    assert {i.path for i in caught.value.issues} == {"max_attempts", "backoff_base"}
