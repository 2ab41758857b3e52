"""What of a FHIR server's OperationOutcome the service keeps (on an outbox item, an audit row).

A server's ``diagnostics`` and ``details.text`` are free text, and validators quote the values
they reject (``"attachment.data value '…' failed validation"``): a note's text, a name. Stored as
is, they would reach the console and the status API. So an outcome that came from the server keeps
only its coded parts: each issue's ``severity``, ``code``, ``expression`` / ``location`` and
``details.coding`` (system, version, code); its text is replaced by :data:`SERVER_TEXT_NOT_KEPT`,
and extensions are dropped. The service's own outcomes (mapping and validation errors with our
field paths and messages, "the workers sending this item stopped …") are kept intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_alliance.errors import ServerError

__all__ = ["SERVER_TEXT_NOT_KEPT", "outcome_to_store", "server_outcome", "strip_server_text"]

#: Stands for the server's text, which is not kept.
SERVER_TEXT_NOT_KEPT = "the server's text is not kept: it may quote patient data"
#: Longest code, expression or location kept (a server's, so bounded).
_MAX_TOKEN = 256
_MAX_ITEMS = 20
_MAX_ISSUES = 50


def server_outcome(error: BaseException) -> bool:
    """Whether the OperationOutcome of ``error`` is the FHIR server's (not one the library or the
    service wrote)."""
    return (
        isinstance(error, ServerError)
        and isinstance(error.outcome, Mapping)
        and error.outcome.get("resourceType") == "OperationOutcome"
    )


def outcome_to_store(error: BaseException, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """``outcome`` (the OperationOutcome of ``error``) as it may be stored: without the server's
    text when it is the server's, as is when it is the service's own."""
    if server_outcome(error):
        return strip_server_text(outcome)
    return dict(outcome)


def _token(value: Any) -> str | None:
    if isinstance(value, str) and value and len(value) <= _MAX_TOKEN:
        return value
    return None


def _tokens(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [t for t in (_token(v) for v in value[:_MAX_ITEMS]) if t is not None]


def _codings(details: Any) -> list[dict[str, str]]:
    if not isinstance(details, Mapping) or not isinstance(details.get("coding"), list):
        return []
    kept = []
    for coding in details["coding"][:_MAX_ITEMS]:
        if not isinstance(coding, Mapping):
            continue
        entry = {k: v for k in ("system", "version", "code") if (v := _token(coding.get(k)))}
        if "code" in entry:
            kept.append(entry)
    return kept


def strip_server_text(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """A server's OperationOutcome with only its coded parts (see the module docstring)."""
    issues: list[dict[str, Any]] = []
    raw = outcome.get("issue")
    for issue in raw[:_MAX_ISSUES] if isinstance(raw, list) else []:
        if not isinstance(issue, Mapping):
            continue
        kept: dict[str, Any] = {
            "severity": _token(issue.get("severity")) or "error",
            "code": _token(issue.get("code")) or "processing",
        }
        codings = _codings(issue.get("details"))
        kept["details"] = {"coding": codings} if codings else {}
        kept["diagnostics"] = SERVER_TEXT_NOT_KEPT
        if not kept["details"]:
            del kept["details"]
        for name in ("expression", "location"):
            if values := _tokens(issue.get(name)):
                kept[name] = values
        issues.append(kept)
    if not issues:  # FHIR requires at least one issue
        issues.append(
            {"severity": "error", "code": "processing", "diagnostics": SERVER_TEXT_NOT_KEPT}
        )
    return {"resourceType": "OperationOutcome", "issue": issues}
