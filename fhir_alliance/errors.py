"""One exception hierarchy for the whole library, so callers can catch by meaning.

::

    FhirAllianceError
    ├── InputError                  bad input; ``issues`` name the field paths
    │   └── JsonInputError          text that is not strict JSON: ``line``, ``column``, ``field_path``
    ├── MappingError                a FHIR resource that does not fit the domain model
    │   └── ProfileViolation        a resource we built breaks base FHIR or one of our profiles
    ├── UnsafeLinkError             a server link outside the configured base (never followed)
    ├── LimitExceededError          a configured bound was reached (pages, response size, entries)
    │   └── ResponseTooLargeError   an answer above ``max_response_bytes`` (also an
    │                               ``InvalidResponseError``: the request reached the server)
    ├── ProfilesPackageError        the built profiles package is missing or unreadable
    │   └── ArtefactNotFoundError   no such artefact in it (also a ``LookupError``)
    └── ServerError                 the FHIR server said no; ``outcome`` holds its OperationOutcome
        ├── TransportError          no usable HTTP answer: connection reset, timeout (retryable)
        ├── InvalidResponseError    an answer that is not the FHIR JSON it should be
        ├── AuthError               401 / 403, or the token endpoint refused us
        ├── NotFoundError           404, and 410 Gone (``gone=True``)
        ├── ConflictError           409
        ├── PreconditionFailedError 412
        │   ├── MultipleMatchesError    conditional request matched more than one resource
        │   └── VersionConflictError    ``If-Match`` named a stale version
        ├── UnprocessableError      400 / 422: the server rejected the resource
        └── TransientServerError    429, 500, 502, 503, 504 (retryable; ``retry_after`` seconds)

Every error is a value: ``to_operation_outcome()`` gives a FHIR OperationOutcome dict that the
service returns as is. Messages never contain patient data; server ``diagnostics`` are kept in
``outcome`` for the caller, and must not be logged (see :func:`loggable_outcome`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ArtefactNotFoundError",
    "AuthError",
    "ConflictError",
    "FhirAllianceError",
    "InputError",
    "InvalidResponseError",
    "Issue",
    "JsonInputError",
    "LimitExceededError",
    "MappingError",
    "MultipleMatchesError",
    "NotFoundError",
    "PreconditionFailedError",
    "ProfileViolation",
    "ProfilesPackageError",
    "ResponseTooLargeError",
    "ServerError",
    "TransientServerError",
    "TransportError",
    "UnprocessableError",
    "UnsafeLinkError",
    "VersionConflictError",
    "loggable_outcome",
    "natural_key",
]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem at one place: ``path`` is a dotted field path (``items.3.value``) or a
    FHIRPath-like element path (``Observation.component[0].code``)."""

    path: str
    message: str
    code: str = "invalid"  # FHIR issue-type code
    severity: str = "error"

    def to_fhir(self) -> dict[str, Any]:
        """The OperationOutcome ``issue``; ``expression`` only with a path (FHIR forbids empty
        arrays)."""
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "details": {"text": self.message},
        }
        if self.path:
            issue["expression"] = [self.path]
        return issue


class FhirAllianceError(Exception):
    """Base of every error this library raises on purpose."""

    #: FHIR issue-type code used when the error becomes an OperationOutcome.
    issue_code = "exception"

    def __init__(self, message: str, *, issues: Iterable[Issue] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.issues: tuple[Issue, ...] = tuple(issues)

    def to_operation_outcome(self) -> dict[str, Any]:
        issues = self.issues or (Issue(path="", message=self.message, code=self.issue_code),)
        return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


class InputError(FhirAllianceError):
    """Input that does not fit a schema. ``issues`` carry one entry per bad field path."""

    issue_code = "invalid"

    #: Issues spelled out in the message; the rest are counted (all stay in ``issues``).
    MESSAGE_ISSUES = 10

    @classmethod
    def from_issues(cls, issues: Iterable[Issue]) -> InputError:
        """One error for several issues, sorted naturally by path (``responses.2`` before
        ``responses.10``); the message names each path with its reason."""
        ordered = sorted(issues, key=lambda issue: natural_key(issue.path))
        shown = "; ".join(
            f"{i.path or '(root)'}: {i.message}" for i in ordered[: cls.MESSAGE_ISSUES]
        )
        more = len(ordered) - cls.MESSAGE_ISSUES
        suffix = f" (and {more} more)" if more > 0 else ""
        return cls(f"invalid input: {shown}{suffix}", issues=ordered)

    @classmethod
    def from_messages(
        cls, messages: Mapping[str, Any] | list[Any], *, prefix: str = ""
    ) -> InputError:
        """Build from marshmallow's nested ``ValidationError.messages``."""
        return cls.from_issues(_flatten_messages(messages, prefix))


class JsonInputError(InputError):
    """Input text that is not strict JSON (:mod:`fhir_alliance.jsonio`): where, as values.

    ``line`` and ``column`` (1-based; ``None`` when the reader cannot tell, e.g. for input over the
    size cap) and, for a duplicate key, ``field_path``, the dotted path of the repeated key
    (``responses.2``, ``items.1.a``). The issue path is ``source:line:column``.
    """

    def __init__(
        self,
        message: str,
        *,
        issues: Iterable[Issue] = (),
        line: int | None = None,
        column: int | None = None,
        field_path: str | None = None,
    ) -> None:
        super().__init__(message, issues=issues)
        self.line = line
        self.column = column
        self.field_path = field_path


def natural_key(path: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the numbers inside a path by value: ``items.2`` < ``items.10``."""
    return tuple(
        (0, int(part)) if part.isdecimal() else (1, part)
        for part in re.split(r"(\d+)", path)
        if part
    )


def _flatten_messages(messages: Any, prefix: str) -> Iterable[Issue]:
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            key_s = "" if key == "_schema" else str(key)
            path = ".".join(p for p in (prefix, key_s) if p)
            yield from _flatten_messages(value, path)
    elif isinstance(messages, list | tuple):
        for value in messages:
            if isinstance(value, str):
                yield Issue(path=prefix, message=value)
            else:
                yield from _flatten_messages(value, prefix)
    else:
        yield Issue(path=prefix, message=str(messages))


class MappingError(FhirAllianceError):
    """A FHIR resource that cannot be read into the domain model. ``element`` names where.

    Not an :class:`InputError`, on purpose: whose fault it is depends on where the resource came
    from, which only the caller knows. In a request body it is bad input (the service answers 422
    with the element path, ``QuestionnaireResponse.item[1].linkId``); read from a FHIR server it is
    that server's data (a pulled foreign Consent that does not read is kept as unreadable and
    holds its patient's records); and :class:`ProfileViolation` is a resource this library built
    (the worker dead-letters the record: a fix is needed, not other input). Callers that take
    FHIR resources as input catch both, as the service's error handlers do.
    """

    issue_code = "structure"

    def __init__(self, message: str, *, element: str = "", issues: Iterable[Issue] = ()) -> None:
        issues = tuple(issues) or (Issue(path=element, message=message, code=self.issue_code),)
        super().__init__(message, issues=issues)
        self.element = element


class ProfileViolation(MappingError):
    """A resource we produced is not valid against base FHIR or one of our profiles."""

    issue_code = "invariant"


class UnsafeLinkError(FhirAllianceError):
    """A link from a server points outside the configured base URL; it was not followed."""

    issue_code = "security"


class LimitExceededError(FhirAllianceError):
    """A configured bound was reached (pages followed, response bytes, bundle entries); nothing
    beyond it was read or sent."""

    issue_code = "too-costly"


class ProfilesPackageError(FhirAllianceError):
    """The FHIR package built from ``profiles/`` is not installed or cannot be read (a packaging
    or checkout problem, not bad input)."""

    issue_code = "not-found"


class ArtefactNotFoundError(ProfilesPackageError, LookupError):
    """The profiles package has no artefact of that type with that id, name or canonical URL."""


class ServerError(FhirAllianceError):
    """The FHIR server answered with an error. ``outcome`` is its OperationOutcome, if any."""

    issue_code = "exception"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome: dict[str, Any] | None = dict(outcome) if outcome else None
        self.retry_after = retry_after

    def to_operation_outcome(self) -> dict[str, Any]:
        if self.outcome and self.outcome.get("resourceType") == "OperationOutcome":
            return dict(self.outcome)
        return super().to_operation_outcome()


class TransportError(ServerError):
    """No usable HTTP answer (connection refused or reset, timeout).

    ``may_have_arrived``: whether the request may have reached the server all the same (a write
    may then have been applied though no answer came): True unless the failure came before any
    of it was sent (the name did not resolve, the connection was refused or timed out while
    connecting, the TLS handshake failed).
    """

    issue_code = "transient"
    retryable = True
    may_have_arrived = True


class InvalidResponseError(ServerError):
    """The server's answer is not the FHIR JSON it should be (HTML error page, broken JSON)."""

    issue_code = "exception"
    retryable = False


class AuthError(ServerError):
    issue_code = "security"


class NotFoundError(ServerError):
    issue_code = "not-found"

    @property
    def gone(self) -> bool:
        return self.status == 410


class ConflictError(ServerError):
    issue_code = "conflict"


class PreconditionFailedError(ServerError):
    issue_code = "conflict"


class MultipleMatchesError(PreconditionFailedError):
    """A conditional create/update/delete matched more than one resource."""

    issue_code = "multiple-matches"


class VersionConflictError(PreconditionFailedError):
    """``If-Match`` named a version that is no longer current."""

    issue_code = "conflict"


class UnprocessableError(ServerError):
    issue_code = "processing"


class TransientServerError(ServerError):
    issue_code = "transient"
    retryable = True


class ResponseTooLargeError(LimitExceededError, InvalidResponseError):
    """The server's answer is larger than ``max_response_bytes``: not read. A bound reached (the
    ``LimitExceededError`` of the tree), and an answer that could not be read: the request
    reached the server, which answered ``status``, so a write it carried may have been applied
    (an ``InvalidResponseError`` too, as a broken JSON answer is: a caller that repeats a write
    to a fixed id, or reads it back, treats both alike)."""


def loggable_outcome(outcome: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """What of an OperationOutcome may be logged: severity and code of each issue, nothing else.

    ``diagnostics``, ``details.text`` and ``expression`` can echo patient data back to us.
    """
    if not outcome:
        return []
    issues = outcome.get("issue")
    if not isinstance(issues, list):
        return []
    return [
        {"severity": str(i.get("severity", "")), "code": str(i.get("code", ""))}
        for i in issues
        if isinstance(i, Mapping)
    ]
