"""Reading a FHIR server's answer: JSON bodies, OperationOutcomes, and the ONE status → error mapping.

Server answers are untrusted input (OWASP API10): anything that is not the FHIR JSON expected
becomes :class:`InvalidResponseError`; messages never quote the body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_alliance.client.retry import parse_retry_after
from fhir_alliance.errors import (
    AuthError,
    ConflictError,
    InvalidResponseError,
    MultipleMatchesError,
    NotFoundError,
    PreconditionFailedError,
    ServerError,
    TransientServerError,
    UnprocessableError,
    VersionConflictError,
)

__all__ = [
    "RequestFacts",
    "error_for_status",
    "etag_for",
    "outcome_in",
    "parse_resource",
    "version_from_etag",
]

_MULTIPLE_MATCHES_TEXT = re.compile(
    r"multiple\s+(matches|resources|results)|more than one|matched \d+ resources|"
    r"multiple-matches",
    re.IGNORECASE,
)
_TRANSIENT = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the status mapping needs to know about the request that got this answer."""

    method: str
    #: The request carried ``If-Match``.
    if_match: bool = False
    #: The request was conditional on a search: ``If-None-Exist``, or a PUT/DELETE with a query.
    conditional: bool = False


def parse_resource(body: bytes, *, status: int) -> dict[str, Any]:
    """Parse a FHIR JSON body into a dict with a ``resourceType``; else InvalidResponseError."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        looks_html = body[:200].lstrip().lower().startswith((b"<!doctype", b"<html"))
        what = "an HTML page" if looks_html else "invalid JSON"
        raise InvalidResponseError(
            f"server answered with {what}, not FHIR JSON", status=status
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise InvalidResponseError(
            "server answered with JSON that is not a FHIR resource", status=status
        )
    return data


def outcome_in(body: bytes) -> dict[str, Any] | None:
    """The OperationOutcome in an error body, if there is one (error bodies may be anything)."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data
    return None


def _says_multiple_matches(outcome: Mapping[str, Any] | None) -> bool:
    """Read (never log) the outcome for a multiple-matches signal: R5's issue code, or the text."""
    if not outcome:
        return False
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        if issue.get("code") == "multiple-matches":
            return True
        details = issue.get("details")
        texts = [
            issue.get("diagnostics"),
            details.get("text") if isinstance(details, Mapping) else None,
        ]
        if any(isinstance(t, str) and _MULTIPLE_MATCHES_TEXT.search(t) for t in texts):
            return True
    return False


def error_for_status(
    status: int,
    request: RequestFacts,
    *,
    outcome: Mapping[str, Any] | None = None,
    retry_after: str | None = None,
    now: float = 0.0,
) -> ServerError | None:
    """All status-code → exception mapping, in one place. None for a 2xx answer.

    Used for whole answers and for each entry of a batch/transaction response. 412 is split:
    "multiple matches" when the outcome says so or the request was conditional without If-Match;
    "stale version" when the request carried If-Match (also for a 409 answering If-Match, as
    STU3-era servers send). ``retry_after`` is the raw header, read
    for 429 and 503 against ``now`` (Unix time).
    """
    if 200 <= status < 300:
        return None
    kwargs: dict[str, Any] = {"status": status or None, "outcome": outcome}
    if status in _TRANSIENT:
        delay = parse_retry_after(retry_after, now=now) if status in (429, 503) else None
        return TransientServerError(
            f"server is unavailable or busy (HTTP {status})", retry_after=delay, **kwargs
        )
    if status == 412:
        if _says_multiple_matches(outcome):
            return MultipleMatchesError(
                "conditional request matched more than one resource (HTTP 412)", **kwargs
            )
        if request.if_match:
            return VersionConflictError(
                "If-Match named a version that is no longer current (HTTP 412)", **kwargs
            )
        if request.conditional:
            return MultipleMatchesError(
                "conditional request matched more than one resource (HTTP 412)", **kwargs
            )
        return PreconditionFailedError("precondition failed (HTTP 412)", **kwargs)
    if status in (401, 403):
        what = "not authenticated" if status == 401 else "not allowed"
        return AuthError(f"server refused the request: {what} (HTTP {status})", **kwargs)
    if status in (404, 410):
        what = "resource is gone (deleted)" if status == 410 else "not found"
        return NotFoundError(f"{what} (HTTP {status})", **kwargs)
    if status == 409 and request.if_match:
        # STU3 servers (and some R4 ones) answer a stale If-Match with 409; R4 says 412.
        return VersionConflictError(
            "If-Match named a version that is no longer current (HTTP 409)", **kwargs
        )
    if status == 409:
        return ConflictError("conflict with the current state on the server (HTTP 409)", **kwargs)
    if status in (400, 422):
        return UnprocessableError(f"server rejected the request (HTTP {status})", **kwargs)
    if 300 <= status < 400:
        return InvalidResponseError(
            f"server answered with a redirect (HTTP {status}); redirects are not followed",
            **kwargs,
        )
    return ServerError(f"server answered HTTP {status}", **kwargs)


def version_from_etag(etag: str | None) -> str | None:
    """``W/"3"`` → ``3``; None when absent."""
    if not etag:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def etag_for(version: str) -> str:
    """``3`` or ``W/"3"`` → ``W/"3"`` (the weak ETag FHIR uses for versions)."""
    if version.startswith('W/"'):
        return version
    return f'W/"{version.strip(chr(34))}"'
