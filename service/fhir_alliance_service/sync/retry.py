"""The outbox's retry policy: which failures are tried again and when, and when one is given up.

* **Transient** (the server or the network may do better later): 429 and 5xx
  (``TransientServerError``), timeouts and resets (``TransportError``), an answer that is not FHIR
  JSON or is larger than the client reads (``InvalidResponseError``, ``ResponseTooLargeError``: a
  PUT to a deterministic id is safe to repeat even if the first one landed), and refused
  credentials (``AuthError``: a configuration to fix, not a bad record).
  The item is scheduled again with exponential backoff and full jitter, never sooner than the
  server's ``Retry-After``; after ``settings.max_attempts`` failures it is dead-lettered.
* **Permanent** (the same request will fail the same way): 400/422, conflicts, a resource that
  breaks base FHIR or a profile (``ProfileViolation``), a record that cannot be mapped. Dead letter
  at once, with the OperationOutcome, to be replayed after a fix.

Nothing is dropped: every failure ends in ``mark_failed`` or ``mark_dead``.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fhir_alliance.errors import (
    AuthError,
    FhirAllianceError,
    InvalidResponseError,
    Issue,
    ServerError,
)
from fhir_alliance_service.config import Settings

__all__ = [
    "MAX_RETRY_AFTER_SECONDS",
    "RetryDecision",
    "backoff_seconds",
    "decide_retry",
    "is_transient",
    "outcome_of",
]

#: A ``Retry-After`` beyond this is not believed (a day).
MAX_RETRY_AFTER_SECONDS = 86_400.0


def is_transient(error: BaseException) -> bool:
    """Worth trying again later (see the module docstring)."""
    if isinstance(error, ServerError):
        return error.retryable or isinstance(error, InvalidResponseError | AuthError)
    return False


def outcome_of(error: BaseException) -> dict[str, Any]:
    """The OperationOutcome to store with a failure: the server's own when it sent one."""
    if isinstance(error, FhirAllianceError):
        return error.to_operation_outcome()
    issue = Issue(path="", message=f"unexpected {type(error).__name__}", code="exception")
    return {"resourceType": "OperationOutcome", "issue": [issue.to_fhir()]}


def backoff_seconds(
    failures: int,
    settings: Settings,
    *,
    retry_after: float | None = None,
    random: Callable[[], float] = _random.random,
) -> float:
    """Seconds until the next attempt after ``failures`` failures (1, 2, …): full jitter over
    ``min(backoff_max, backoff_base * 2^(failures-1))``, and never less than ``retry_after``."""
    ceiling = min(
        settings.backoff_max_seconds, settings.backoff_base_seconds * 2.0 ** max(0, failures - 1)
    )
    delay = random() * ceiling
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """``dead`` → dead-letter now; else try again at ``next_attempt_at``."""

    dead: bool
    outcome: Mapping[str, Any]
    next_attempt_at: datetime | None = None
    transient: bool = False


def decide_retry(
    error: BaseException,
    *,
    attempts: int,
    settings: Settings,
    now: datetime,
    random: Callable[[], float] = _random.random,
) -> RetryDecision:
    """What to do with an item that failed with ``error`` after ``attempts`` earlier failures."""
    outcome = outcome_of(error)
    if not is_transient(error):
        return RetryDecision(dead=True, outcome=outcome)
    failures = attempts + 1
    if failures >= settings.max_attempts:
        return RetryDecision(dead=True, outcome=outcome, transient=True)
    retry_after = error.retry_after if isinstance(error, ServerError) else None
    delay = backoff_seconds(failures, settings, retry_after=retry_after, random=random)
    return RetryDecision(
        dead=False, outcome=outcome, next_attempt_at=now + timedelta(seconds=delay), transient=True
    )
