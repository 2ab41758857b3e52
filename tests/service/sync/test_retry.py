"""The outbox retry policy: which errors are transient, backoff with full jitter bounded by the
settings, Retry-After honoured, dead letter after max_attempts or at once for permanent errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fhir_alliance_service.config import Settings
from fhir_alliance_service.sync.retry import backoff_seconds, decide_retry, is_transient

from fhir_alliance.errors import (
    AuthError,
    ConflictError,
    InputError,
    InvalidResponseError,
    MappingError,
    ProfileViolation,
    TransientServerError,
    TransportError,
    UnprocessableError,
)

SETTINGS = Settings(backoff_base_seconds=1.0, backoff_max_seconds=30.0, max_attempts=4)
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "error",
    [
        TransientServerError("503", status=503),
        TransportError("reset"),
        InvalidResponseError("html", status=200),
        AuthError("401", status=401),
    ],
)
def test_transient_errors(error: Exception) -> None:
    """Server overload, network faults, unreadable answers and auth refusals are retried."""
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        UnprocessableError("422", status=422),
        ConflictError("409", status=409),
        ProfileViolation("bad", element="Observation.status"),
        MappingError("bad", element="kind"),
        InputError("bad"),
        KeyError("bug"),
    ],
)
def test_permanent_errors_are_dead_lettered_at_once(error: Exception) -> None:
    """Rejections and records that cannot be mapped go to the dead letter on the first failure."""
    decision = decide_retry(error, attempts=0, settings=SETTINGS, now=NOW)
    assert decision.dead and not decision.transient
    assert decision.outcome["resourceType"] == "OperationOutcome"


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    """The wait is random() times min(max, base * 2^(n-1))."""
    assert backoff_seconds(1, SETTINGS, random=lambda: 1.0) == 1.0
    assert backoff_seconds(3, SETTINGS, random=lambda: 1.0) == 4.0
    assert backoff_seconds(3, SETTINGS, random=lambda: 0.25) == 1.0
    assert backoff_seconds(20, SETTINGS, random=lambda: 1.0) == 30.0
    assert backoff_seconds(5, SETTINGS, random=lambda: 0.0) == 0.0


def test_retry_after_is_a_floor() -> None:
    """A server's Retry-After is never undercut by the jitter."""
    assert backoff_seconds(1, SETTINGS, retry_after=90.0, random=lambda: 0.5) == 90.0
    assert backoff_seconds(6, SETTINGS, retry_after=2.0, random=lambda: 1.0) == 30.0


def test_transient_failure_schedules_the_next_attempt() -> None:
    """A transient failure before max_attempts schedules a retry with the server's outcome."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    error = TransientServerError("429", status=429, outcome=outcome, retry_after=12.0)
    decision = decide_retry(error, attempts=1, settings=SETTINGS, now=NOW, random=lambda: 0.0)
    assert not decision.dead and decision.transient
    assert decision.next_attempt_at == NOW + timedelta(seconds=12)
    assert decision.outcome == outcome


def test_the_last_transient_attempt_goes_to_the_dead_letter() -> None:
    """The max_attempts-th failure is dead-lettered, never dropped or retried forever."""
    error = TransportError("timeout")
    assert not decide_retry(error, attempts=2, settings=SETTINGS, now=NOW).dead
    last = decide_retry(error, attempts=3, settings=SETTINGS, now=NOW)
    assert last.dead and last.transient and last.next_attempt_at is None
