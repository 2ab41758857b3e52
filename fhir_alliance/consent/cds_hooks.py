"""CDS Hooks ``patient-consent-consult`` as LEAP speaks it: hook context → decision request, and
decision → LEAP's card. Pure functions, so the service can serve the hook with the same code.

Where our answer cannot be said in LEAP's vocabulary (an obligation that filters by date or by
resource reference, which ``codes`` / ``exceptAnyOfCodes`` cannot carry), the card says
``CONSENT_DENY``: a LEAP client would otherwise release what it cannot redact.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from fhir_alliance.consent.decision import (
    ACTION_MESSAGE,
    KNOWN_ACTIONS,
    KNOWN_PURPOSES,
    PURPOSE_MESSAGE,
    ConsentDecision,
    DecisionOutcome,
    DecisionRequest,
    RedactMode,
    RedactObligation,
    RequestActor,
)
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.terminology import CONSENT_ACTION, V3_ACT_CODE, V3_ACT_REASON

__all__ = [
    "BASIS_KEY",
    "CARD_DECISIONS",
    "NOTES_KEY",
    "REASONS_KEY",
    "HOOK",
    "card_response",
    "is_hook_request",
    "request_from_hook",
]

HOOK: Final = "patient-consent-consult"
#: Our outcome → LEAP's decision code, and the card's indicator.
CARD_DECISIONS: Final = {
    DecisionOutcome.PERMIT: ("CONSENT_PERMIT", "info"),
    DecisionOutcome.DENY: ("CONSENT_DENY", "critical"),
    DecisionOutcome.NO_CONSENT: ("NO_CONSENT", "warning"),
}
_DETAIL: Final = {
    "CONSENT_PERMIT": "There is a patient consent permitting this action.",
    "CONSENT_DENY": "There is a patient consent denying this action.",
    "NO_CONSENT": "No applicable patient consent was found.",
}
#: Card extension keys of ours: every deciding consent with its provision path, and the notes.
BASIS_KEY: Final = "org.fhir-alliance.basis"
NOTES_KEY: Final = "org.fhir-alliance.notes"
#: With NO_CONSENT: each consent of the patient and why it did not apply.
REASONS_KEY: Final = "org.fhir-alliance.reasons"
#: The action a consult asks about when the caller does not say (LEAP does not evaluate actions).
DEFAULT_HOOK_ACTION: Final = Coding(system=CONSENT_ACTION, code="access")


def is_hook_request(data: object) -> bool:
    """Whether ``data`` is a hook request body (``hook``/``context``) or a bare hook context."""
    return isinstance(data, Mapping) and (
        "context" in data or "hook" in data or "patientId" in data
    )


def _fail(path: str, message: str) -> InputError:
    return InputError(f"invalid hook request at {path}", issues=[Issue(path=path, message=message)])


def _identifiers(value: Any, path: str) -> list[Identifier]:
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(path, "expected a non-empty list of {system, value}")
    out = []
    for n, item in enumerate(value):
        system = item.get("system") if isinstance(item, Mapping) else None
        code = item.get("value") if isinstance(item, Mapping) else None
        if not (isinstance(system, str) and system and isinstance(code, str) and code):
            raise _fail(f"{path}.{n}", "expected {system, value} with both set")
        out.append(Identifier(system=system, value=code))
    return out


def _codings(value: Any, path: str) -> list[Coding]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, "expected a list of {system, code}")
    out = []
    for n, item in enumerate(value):
        system = item.get("system") if isinstance(item, Mapping) else None
        # LEAP's own README writes content classes with "value" instead of "code": accept both.
        code = (item.get("code") or item.get("value")) if isinstance(item, Mapping) else None
        if not (isinstance(system, str) and system and isinstance(code, str) and code):
            raise _fail(f"{path}.{n}", "expected {system, code} with both set")
        out.append(Coding(system=system, code=code))
    return out


def _purposes(value: Any, path: str) -> list[Coding]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _fail(path, "expected a purpose-of-use code or a list of them")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, str) or (V3_ACT_REASON, item) not in KNOWN_PURPOSES:
            raise _fail(f"{path}.{n}", PURPOSE_MESSAGE)
        out.append(Coding(system=V3_ACT_REASON, code=item))
    return out


def request_from_hook(
    data: Mapping[str, Any], *, at: datetime, action: Coding | None = DEFAULT_HOOK_ACTION
) -> DecisionRequest:
    """A hook request body, or just its ``context``, → a decision about the patient's data in
    general. ``at`` is the time of the consult (the hook carries none); ``action`` is what the
    actors want to do (LEAP ignores it; we do not, so say ``access`` or ``disclose``).

    ``class`` names the content classes asked about: consents and provisions scoped to other
    classes are left out of the answer."""
    prefix = ""
    context: Any = data
    if "context" in data or "hook" in data:
        hook = data.get("hook")
        if hook is not None and hook != HOOK:
            raise _fail("hook", f"expected the {HOOK} hook")
        context = data.get("context")
        prefix = "context."
        if not isinstance(context, Mapping):
            raise _fail("context", "expected the hook context object")
    patients = _identifiers(context.get("patientId"), f"{prefix}patientId")
    actors = _identifiers(context.get("actor"), f"{prefix}actor")
    purposes = _purposes(context.get("purposeOfUse"), f"{prefix}purposeOfUse")
    categories = _codings(context.get("category"), f"{prefix}category")
    classes = _codings(context.get("class"), f"{prefix}class")
    if action is not None and (action.system, action.code) not in KNOWN_ACTIONS:
        raise _fail("action", ACTION_MESSAGE)
    return DecisionRequest(
        patient=tuple(Ref(identifier=i) for i in patients),
        actors=tuple(RequestActor(reference=Ref(identifier=i)) for i in actors),
        at=at,
        purposes=tuple(purposes),
        action=action,
        categories=tuple(categories),
        content_classes=tuple(classes),
    )


def _codes(o: RedactObligation) -> list[dict[str, str]]:
    return [{"system": c.system, "code": c.code} for c in (*o.labels, *o.codes, *o.classes)]


def _expressible(o: RedactObligation) -> bool:
    return o.data_period is None and not o.data and bool(o.labels or o.codes or o.classes)


def card_response(
    decision: ConsentDecision,
    *,
    source_label: str = "fhir-alliance consent engine",
    source_url: str | None = None,
    locations: Mapping[Identifier, str] | None = None,
) -> dict[str, Any]:
    """LEAP's answer: ``{"cards": [one card]}`` with ``extension.decision``, REDACT
    ``obligations`` (only with a permit) and ``basedOn``: the deciding consent's location from
    ``locations`` (e.g. its ``fullUrl``), else a search URL by its identifier.

    Beside LEAP's keys, ``extension`` carries :data:`BASIS_KEY` (every deciding consent, its
    location, provision path and decision), :data:`NOTES_KEY` (the engine's notes) and, with
    ``NO_CONSENT``, :data:`REASONS_KEY` (why no consent applied), and the
    ``detail`` text repeats them for a client that shows only the card. ``source_label`` and
    ``source_url`` name the service (the sync service passes its settings)."""
    outcome = decision.outcome
    inexpressible = [o for o in decision.obligations if not _expressible(o)]
    if outcome is DecisionOutcome.PERMIT and inexpressible:
        outcome = DecisionOutcome.DENY
    code, indicator = CARD_DECISIONS[outcome]
    extension: dict[str, Any] = {"decision": code, "obligations": []}
    if outcome is DecisionOutcome.PERMIT:
        for o in decision.obligations:
            key = "codes" if o.mode is RedactMode.MATCHING else "exceptAnyOfCodes"
            extension["obligations"].append(
                {"id": {"system": V3_ACT_CODE, "code": "REDACT"}, "parameters": {key: _codes(o)}}
            )
    where = locations or {}
    if decision.basis:
        consent = decision.basis[0].consent
        extension["basedOn"] = where.get(consent) or f"Consent?identifier={consent}"
    # Ours, beside LEAP's keys (reverse-domain names, as CDS Hooks advises for extensions).
    extension[BASIS_KEY] = [
        {
            "consent": str(b.consent),
            "location": where.get(b.consent),
            "provision": b.path,
            "decision": b.decision.value,
        }
        for b in decision.basis
    ]
    extension[NOTES_KEY] = list(decision.notes)
    reasons = decision.no_consent_reasons()
    if decision.outcome is DecisionOutcome.NO_CONSENT:
        extension[REASONS_KEY] = list(reasons)
    detail = _DETAIL[code]
    if inexpressible and decision.outcome is DecisionOutcome.PERMIT:
        detail += (
            " Permitted only with redactions by date or by resource that this card cannot carry;"
            " ask about each resource instead."
        )
    if decision.basis:
        detail += " Decided by " + "; ".join(str(b) for b in decision.basis) + "."
    if decision.notes or reasons:
        detail += "\n\n" + "\n".join(f"- {n}" for n in (*decision.notes, *reasons))
    source: dict[str, str] = {"label": source_label}
    if source_url:
        source["url"] = source_url
    card = {
        "summary": code,
        "detail": detail,
        "indicator": indicator,
        "source": source,
        "extension": extension,
    }
    return {"cards": [card]}
