"""The consent gate's question for one FHIR resource: what the engine needs to know about it.

Before anything leaves, the sync asks the engine whether *this* resource may be disclosed to *this*
recipient for *these* purposes now (DESIGN.md, data flow step 3). :func:`requested_resource` reads
the facts the engine matches on out of the resource itself (type, profiles, codes, security labels,
date, what it refers to, who wrote it), and :func:`disclosure_request` wraps them into a
:class:`~fhir_alliance.consent.decision.DecisionRequest` with ``action = disclose``. Pure: no I/O.

A fact the resource does not state precisely (a partial date such as ``2025-03``, a date without
a UTC offset) is left out rather than guessed; the engine then lets it match deny provisions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from fhir_alliance.consent.decision import (
    KNOWN_PURPOSES,
    PURPOSE_MESSAGE,
    DecisionRequest,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.terminology import CONSENT_ACTION, CONSENT_SCOPE, V3_ACT_REASON

__all__ = ["DISCLOSE", "PRIVACY_SCOPE", "disclosure_request", "requested_resource"]

#: The action every disclosure is asked about (consentaction ``disclose``).
DISCLOSE = Coding(system=CONSENT_ACTION, code="disclose")

#: Where each resource type states when its content happened, first match wins.
_DATE_ELEMENTS = (
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod.start",
    "authored",  # QuestionnaireResponse
    "occurredDateTime",  # Provenance
    "recorded",
    "dateTime",  # R4 Consent
    "issued",
    "date",
)
#: Elements holding references to what the resource relates to (provision.data meaning related).
_REFERS_TO = ("encounter", "derivedFrom", "hasMember", "basedOn", "partOf", "focus", "target")
#: Elements naming who wrote or performed it (provision.data meaning authoredby).
_AUTHORS = ("performer", "author")


def _fail(path: str, message: str) -> InputError:
    return InputError(f"{message} at {path}", issues=[Issue(path=path, message=message)])


def _dig(resource: Mapping[str, Any], dotted: str) -> Any:
    value: Any = resource
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _instant(text: object) -> datetime | None:
    """A FHIR dateTime/instant with a time and a UTC offset; anything less precise is ``None``."""
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.utcoffset() is not None else None


def _codings(value: object) -> Iterable[Coding]:
    if not isinstance(value, list):
        return
    for coding in value:
        if isinstance(coding, Mapping):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str) and system and code:
                yield Coding(system=system, code=code)


def _ref(value: object) -> Ref | None:
    if not isinstance(value, Mapping):
        return None
    reference = value.get("reference")
    ident = value.get("identifier")
    identifier = None
    if isinstance(ident, Mapping):
        system, code = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(code, str) and system and code:
            identifier = Identifier(system=system, value=code)
    if not isinstance(reference, str) or not reference:
        reference = None
    if reference is None and identifier is None:
        return None
    kind = value.get("type")
    return Ref(
        reference=reference,
        identifier=identifier,
        type=kind if isinstance(kind, str) else None,
    )


def _refs(resource: Mapping[str, Any], elements: Sequence[str]) -> tuple[Ref, ...]:
    found: list[Ref] = []
    for element in elements:
        value = resource.get(element)
        for item in value if isinstance(value, list) else [value]:
            ref = _ref(item.get("who") if isinstance(item, Mapping) and "who" in item else item)
            if ref is not None and ref not in found:
                found.append(ref)
    return tuple(found)


def requested_resource(resource: Mapping[str, Any]) -> RequestedResource:
    """The engine's view of one FHIR resource (R4 or R5). Raises :class:`InputError` on a resource
    without a ``resourceType``; every other missing fact is simply left out."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise _fail("resourceType", "a FHIR resource needs a resourceType")
    meta = resource.get("meta")
    if not isinstance(meta, Mapping):
        meta = {}
    resource_id = resource.get("id")
    identifiers = [
        i for i in (_ref({"identifier": x}) for x in resource.get("identifier") or []) if i
    ]
    reference = None
    if isinstance(resource_id, str) and resource_id:
        reference = Ref(
            reference=f"{resource_type}/{resource_id}",
            identifier=identifiers[0].identifier if identifiers else None,
            type=resource_type,
        )
    elif identifiers:
        reference = Ref(identifier=identifiers[0].identifier, type=resource_type)
    code = resource.get("code")
    codes = tuple(_codings(code.get("coding"))) if isinstance(code, Mapping) else ()
    profiles = tuple(p for p in meta.get("profile") or [] if isinstance(p, str))
    date = next(
        (d for d in (_instant(_dig(resource, e)) for e in _DATE_ELEMENTS) if d is not None), None
    )
    return RequestedResource(
        type=resource_type,
        reference=reference,
        profiles=profiles,
        codes=codes,
        labels=tuple(_codings(meta.get("security"))),
        date=date,
        refers_to=_refs(resource, _REFERS_TO),
        authors=_refs(resource, _AUTHORS),
    )


#: The consent scope a disclosure question concerns (R4 ``Consent.scope``, R5 a category).
PRIVACY_SCOPE: Final = Coding(system=CONSENT_SCOPE, code="patient-privacy")


def disclosure_request(
    resource: Mapping[str, Any],
    *,
    patient: Ref | str | Sequence[Ref | str],
    recipient: Ref | str | Sequence[Ref | str],
    purposes: Sequence[Coding | str],
    at: datetime,
) -> DecisionRequest:
    """May ``resource`` be disclosed to ``recipient`` (every way the one recipient is known) for
    ``purposes`` at instant ``at``? ``patient`` lists every way the patient is known; the resource's
    own subject is added when it names one.

    References may be :class:`Ref` values or strings: ``"Patient/p1"`` (or an absolute URL) is a
    literal reference, ``"system|value"`` an identifier; one reference or a list. Purposes are
    codings or bare v3 PurposeOfUse codes (``"TREAT"``). Anything else, an unknown purpose or a
    time without a UTC offset raises :class:`InputError` naming the argument."""
    issues: list[Issue] = []
    if not isinstance(resource, Mapping):
        issues.append(Issue(path="resource", message="expected a FHIR resource (a mapping)"))
    patients = _ref_arguments(patient, "patient", issues)
    recipients = _ref_arguments(recipient, "recipient", issues)
    codings = _purpose_arguments(purposes, issues)
    if not isinstance(at, datetime) or at.utcoffset() is None:
        issues.append(Issue(path="at", message="expected a datetime with a UTC offset"))
    if issues:
        paths = ", ".join(i.path for i in issues)
        raise InputError(f"invalid disclosure request at {paths}", issues=issues)
    subject = _ref(resource.get("subject") or resource.get("patient"))
    if subject is not None and subject not in patients:
        patients = (*patients, subject)
    return DecisionRequest(
        patient=patients,
        actors=tuple(RequestActor(reference=r) for r in recipients),
        at=at,
        purposes=codings,
        action=DISCLOSE,
        resource=requested_resource(resource),
        categories=(PRIVACY_SCOPE,),
    )


def _ref_from_text(text: str) -> Ref | None:
    if "|" in text:
        system, _, value = text.partition("|")
        return Ref(identifier=Identifier(system=system, value=value)) if system and value else None
    return Ref(reference=text) if text.strip() == text and text else None


def _ref_arguments(value: object, name: str, issues: list[Issue]) -> tuple[Ref, ...]:
    items: Sequence[object]
    if isinstance(value, (Ref, str)):
        items = [value]
        paths = [name]
    elif isinstance(value, Sequence) and value:
        items = value
        paths = [f"{name}.{n}" for n in range(len(value))]
    else:
        issues.append(Issue(path=name, message="expected a Ref or a string, or a non-empty list"))
        return ()
    refs: list[Ref] = []
    for item, path in zip(items, paths, strict=True):
        ref = (
            item
            if isinstance(item, Ref)
            else _ref_from_text(item)
            if isinstance(item, str)
            else None
        )
        if ref is None:
            issues.append(
                Issue(path=path, message='expected a Ref, "Type/id", a URL or "system|value"')
            )
        else:
            refs.append(ref)
    return tuple(refs)


def _purpose_arguments(value: object, issues: list[Issue]) -> tuple[Coding, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        issues.append(Issue(path="purposes", message="expected a list of codings or codes"))
        return ()
    codings: list[Coding] = []
    for n, item in enumerate(value):
        coding = (
            item
            if isinstance(item, Coding)
            else Coding(system=V3_ACT_REASON, code=item)
            if isinstance(item, str)
            else None
        )
        if coding is None or (coding.system, coding.code) not in KNOWN_PURPOSES:
            issues.append(Issue(path=f"purposes.{n}", message=PURPOSE_MESSAGE))
        else:
            codings.append(coding)
    return tuple(codings)
