"""The consent gate's question for one FHIR resource: what the engine needs to know about it.

Before anything leaves, the sync asks the engine whether *this* resource may be disclosed to *this*
recipient for *these* purposes now (DESIGN.md, data flow step 3). :func:`requested_resource` reads
the facts the engine matches on out of the resource itself (type, profiles, codes, security labels,
date, what it refers to, who wrote it), and :func:`disclosure_request` wraps them into a
:class:`~fhir_alliance.consent.decision.DecisionRequest` with ``action = disclose``. Pure: no I/O.

A fact the resource does not state precisely (a partial date such as ``2025-03``, a date without
a UTC offset) is left out rather than guessed; the engine then lets it match deny provisions only.
An element whose loss could widen an answer (``resourceType``, ``id`` and ``identifier``,
``meta.security``, ``meta.profile``, a coding in ``code.coding``, or in a document's ``type`` and
``category``) is never dropped when malformed: the resource is refused with an
:class:`InputError` naming the element (``meta.security[0]``). A document (DocumentReference,
Composition) says what it is in ``type`` and ``category``, which are its codes; one without a
coding in ``type`` has unknown codes.
Security labels of the HL7 v3 code systems are read in their canonical form (the OIDs and FHIR STU3
URLs of those systems become the ``http://terminology.hl7.org/CodeSystem/v3-…`` URIs) and must be
codes the library knows (:data:`~fhir_alliance.consent.decision.KNOWN_LABELS`); codes in
``code.coding`` likewise (the OIDs of LOINC and SNOMED CT become ``http://loinc.org`` and
``http://snomed.info/sct``).

The resource is known by ``Type/id`` and by every identifier it carries: the first identifier goes
with the reference, each further one with an alias (``RequestedResource.aliases``), so that a
consent naming it by any of them matches it.

The references a resource holds (``encounter``, ``derivedFrom``, …) and its authors
(``performer``, ``author``) are read strictly too: an entry that is not a Reference object, whose
``reference`` is not a non-empty string or whose ``identifier`` is not ``{system, value}`` strings
is refused at its path (``performer[1].reference``). A Reference that names nobody (a
``display`` only) leaves that fact unknown rather than incomplete: an author so named leaves the
authors unknown (none), a reference so named leaves the resource without its own reference; either
way a deny scoped by ``provision.data`` applies and a permit so scoped does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Final

from fhir_alliance.consent.decision import (
    KNOWN_LABELS,
    KNOWN_PURPOSES,
    LABEL_MESSAGE,
    LABEL_SYSTEMS,
    PURPOSE_MESSAGE,
    DecisionRequest,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.terminology import (
    CODE_SYSTEM_ALIASES,
    CONSENT_ACTION,
    CONSENT_SCOPE,
    V3_ACT_REASON,
    V3_LABEL_SYSTEM_ALIASES,
    canonical_system,
)

__all__ = [
    "DISCLOSE",
    "PRIVACY_SCOPE",
    "disclosure_request",
    "label_problem",
    "normal_code",
    "normal_label",
    "requested_resource",
]

#: The action every disclosure is asked about (consentaction ``disclose``).
DISCLOSE = Coding(system=CONSENT_ACTION, code="disclose")

#: Where each resource type states when its content happened: the first element the resource
#: carries decides. ``effective`` and ``occurred`` are choice types (``effectiveDateTime``,
#: ``effectivePeriod``, ``effectiveTiming``, …): a Period gives its start, anything else must be
#: an instant.
_DATE_ELEMENTS = (
    "effective",
    "authored",  # QuestionnaireResponse
    "occurred",  # Provenance
    "recorded",
    "dateTime",  # R4 Consent
    "issued",
    "date",
)
_CHOICE_DATES = frozenset({"effective", "occurred"})
#: Elements holding references to what the resource relates to (provision.data meaning related).
_REFERS_TO = ("encounter", "derivedFrom", "hasMember", "basedOn", "partOf", "focus", "target")
#: Elements naming who wrote or performed it (provision.data meaning authoredby).
_AUTHORS = ("performer", "author")


def _fail(path: str, message: str) -> InputError:
    return InputError(f"{message} at {path}", issues=[Issue(path=path, message=message)])


def _instant(text: object) -> datetime | None:
    """A FHIR dateTime/instant with a time and a UTC offset; anything less precise is ``None``."""
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.utcoffset() is not None else None


def _clinical_date(resource: Mapping[str, Any]) -> datetime | None:
    """When the content happened: the first of :data:`_DATE_ELEMENTS` the resource carries, as an
    instant. One it carries but does not state precisely (a date without a time, a time without
    an offset, a Period without a start, a Timing) leaves the date unknown: a later element
    (``issued``, when the result was released) is another date, and taking it could carry the
    content out of a ``dataPeriod`` that a deny names."""
    for name in _DATE_ELEMENTS:
        if name in _CHOICE_DATES:
            found = [
                key
                for key in resource
                if isinstance(key, str)
                and key.startswith(name)
                and key[len(name) : len(name) + 1].isupper()
                and resource[key] is not None
            ]
            if not found:
                continue
            if len(found) > 1:  # two values of one choice element: which one holds is unknown
                return None
            (key,) = found
            value = resource[key]
            if key.endswith("Period"):
                return _instant(value.get("start")) if isinstance(value, Mapping) else None
            return _instant(value)
        if resource.get(name) is not None:
            return _instant(resource[name])
    return None


#: A resource type name (``Observation``).
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]*")
#: The HL7 label systems by any spelling, case folded: a system that matches one of these only
#: when case is ignored is a misspelling, not another code system.
_FOLDED_LABEL_SYSTEMS: Final = frozenset(
    s.casefold() for s in (*LABEL_SYSTEMS, *V3_LABEL_SYSTEM_ALIASES)
)


def _token(value: object) -> str | None:
    """``value`` if it is a non-empty string without spaces at either end (a FHIR code, a uri)."""
    return value if isinstance(value, str) and value and value.strip() == value else None


def normal_label(system: str) -> str:
    """The canonical URI of an HL7 v3 label code system however it is spelt (by OID, bare or
    ``urn:oid:``, FHIR STU3 URL, https, a trailing slash: :func:`canonical_system`); any other
    system as it is."""
    return V3_LABEL_SYSTEM_ALIASES.get(system) or canonical_system(system)


def normal_code(coding: Coding) -> Coding:
    """``coding`` with its system in canonical form (the OIDs of LOINC and SNOMED CT, bare or
    ``urn:oid:``, ``https://loinc.org``, a SNOMED CT edition URI… become ``http://loinc.org`` and
    ``http://snomed.info/sct``: :func:`canonical_system`), so that a consent scoped by the code
    sees it whichever way the resource spells the system."""
    system = CODE_SYSTEM_ALIASES.get(coding.system) or canonical_system(coding.system)
    return coding if system == coding.system else Coding(system, coding.code, coding.display)


def label_problem(system: str, code: str) -> str | None:
    """Why ``(system, code)`` (system already :func:`normal_label`) cannot be a security label the
    engine reads, or ``None``: a code of an HL7 label system that the library does not know, or a
    system that is one of those misspelt (letter case), or spaces around either. Labels of other
    systems pass as they are; the engine counts one whose code is an HL7 label code as that label
    for deny provisions and the explicit-permit rule (``deny_label_keys``)."""
    if _token(system) is None or _token(code) is None:
        return "a security label needs a system and a code (strings without spaces)"
    if system in LABEL_SYSTEMS:
        return None if (system, code) in KNOWN_LABELS else LABEL_MESSAGE
    if system.casefold() in _FOLDED_LABEL_SYSTEMS:
        return "an HL7 v3 code system misspelt (letter case): use its canonical URI"
    return None


def _labels(meta: Mapping[str, Any], issues: list[Issue]) -> tuple[Coding, ...]:
    """``meta.security`` read strictly: every label is kept (normalised) or the resource refused,
    since a label left out could keep a deny provision scoped to it from matching."""
    value = meta.get("security")
    if value is None:
        return ()
    if not isinstance(value, list):
        issues.append(Issue(path="meta.security", message="expected a list of Coding objects"))
        return ()
    labels: list[Coding] = []
    for i, item in enumerate(value):
        path = f"meta.security[{i}]"
        if not isinstance(item, Mapping):
            issues.append(Issue(path=path, message="expected a Coding object {system, code}"))
            continue
        system, code = _token(item.get("system")), _token(item.get("code"))
        if system is None or code is None:
            message = "a security label needs a system and a code (strings without spaces)"
            issues.append(Issue(path=path, message=message))
            continue
        system = normal_label(system)
        problem = label_problem(system, code)
        if problem is not None:
            issues.append(Issue(path=path, message=problem))
            continue
        labels.append(Coding(system=system, code=code))
    return tuple(labels)


def _profiles(meta: Mapping[str, Any], issues: list[Issue]) -> tuple[str, ...]:
    """``meta.profile`` read strictly (a deny scoped to a profile must see each one). A versioned
    canonical (``…|1.0``) counts as itself and as its unversioned URL."""
    value = meta.get("profile")
    if value is None:
        return ()
    if not isinstance(value, list):
        issues.append(Issue(path="meta.profile", message="expected a list of canonical URLs"))
        return ()
    profiles: list[str] = []
    for i, item in enumerate(value):
        url = _token(item)
        if url is None or any(c.isspace() for c in url):
            message = "expected a canonical URL (a string without spaces)"
            issues.append(Issue(path=f"meta.profile[{i}]", message=message))
            continue
        for form in (url, url.partition("|")[0]):
            if form and form not in profiles:
                profiles.append(form)
    return tuple(profiles)


def _codes(resource: Mapping[str, Any], issues: list[Issue]) -> tuple[Coding, ...]:
    """The codings of ``code`` (a CodeableConcept), or of a document's ``type`` and ``category``
    (:func:`_document_codes`). A ``code`` of another shape (the Coding list or code of
    definitional resources) is left out: unknown codes match deny provisions scoped by code and
    no permit, so leaving all of them out never widens an answer, while leaving out one of
    several could (a deny scoped to it would be missed); so a malformed coding refuses the
    resource. A coding without a system or without a code is skipped: it can equal no provision's
    code (those always have both). Systems are read in canonical form (:func:`normal_code`)."""
    if resource.get("resourceType") in _DOCUMENTS:
        return _document_codes(resource, issues)
    codes: list[Coding] = []
    _concept_codes(resource.get("code"), "code", codes, issues)
    return tuple(codes)


#: Resources that say which document they are in ``type`` (LOINC 34904-3 *Mental health Progress
#: note*, a session note's content kind) and ``category`` (US Core ``clinical-note``), not ``code``.
_DOCUMENTS: Final = frozenset({"DocumentReference", "Composition"})


def _document_codes(resource: Mapping[str, Any], issues: list[Issue]) -> tuple[Coding, ...]:
    """A document's codes: the codings of its ``type``, then of each ``category``. Without a
    coding in ``type`` which document it is stays unknown, and so do its codes (none), whatever
    its categories say: a deny by document type then applies and a permit by it does not; the
    categories alone would read as every code it has. Malformed codings refuse the resource."""
    codes: list[Coding] = []
    _concept_codes(resource.get("type"), "type", codes, issues)
    typed = bool(codes)
    categories = resource.get("category")
    if categories is not None:
        if not isinstance(categories, list):
            issues.append(Issue(path="category", message="expected a list of CodeableConcepts"))
        else:
            for i, concept in enumerate(categories):
                if not isinstance(concept, Mapping):
                    message = "expected a CodeableConcept object"
                    issues.append(Issue(path=f"category[{i}]", message=message))
                    continue
                _concept_codes(concept, f"category[{i}]", codes, issues)
    return tuple(codes) if typed else ()


def _concept_codes(concept: object, path: str, codes: list[Coding], issues: list[Issue]) -> None:
    """Add the codings of the CodeableConcept ``concept`` (at ``path``) to ``codes``, each once,
    in canonical form; a ``concept`` that is not one (or has no coding) adds nothing."""
    if not isinstance(concept, Mapping) or concept.get("coding") is None:
        return
    pairs = _system_pairs(concept["coding"], f"{path}.coding", "code", "Coding", issues)
    for system, code in pairs:
        coding = normal_code(Coding(system=system, code=code))
        if coding not in codes:
            codes.append(coding)


def _system_pairs(
    value: object, path: str, second: str, kind: str, issues: list[Issue]
) -> list[tuple[str, str]]:
    """``(system, second)`` of each entry of the list ``value`` (Codings, Identifiers) read
    strictly: a list that is not one, an entry that is not an object, or a system or ``second``
    that is not a string without spaces at either end is an issue at its path; an entry lacking
    either is skipped (no provision can name it)."""
    if not isinstance(value, list):
        issues.append(Issue(path=path, message=f"expected a list of {kind} objects"))
        return []
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            issues.append(Issue(path=where, message=f"expected a {kind} object"))
            continue
        if item.get("system") is None or item.get(second) is None:
            continue
        system, text = _token(item["system"]), _token(item[second])
        if system is None or text is None:
            message = f"expected a system and a {second} (strings without spaces at either end)"
            issues.append(Issue(path=where, message=message))
            continue
        pairs.append((system, text))
    return pairs


def _identifiers(resource: Mapping[str, Any], issues: list[Issue]) -> list[Identifier]:
    """``identifier`` read strictly (a deny scoped to this resource by identifier must see it);
    an identifier without a system or a value is skipped (no provision can name it)."""
    value = resource.get("identifier")
    if value is None:
        return []
    pairs = _system_pairs(value, "identifier", "value", "Identifier", issues)
    return list(dict.fromkeys(Identifier(system=system, value=text) for system, text in pairs))


def _ref(value: object) -> Ref | None:
    """A Reference read leniently (the resource's subject): ``None`` unless it names someone."""
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


class _Unread(Enum):
    """Why an entry of a reference element gave no :class:`Ref`."""

    #: A Reference without a ``reference`` and an ``identifier`` (a ``display`` only, or a
    #: backbone element of another shape): it may name anyone, so the fact is unknown.
    NOBODY = "nobody"
    #: Malformed: an issue was added.
    MALFORMED = "malformed"


def _strict_ref(value: object, path: str, issues: list[Issue]) -> Ref | _Unread:
    """One entry of a reference element read strictly: its :class:`Ref`, or why not. Malformed
    (an issue added at ``path``): not an object, a ``reference`` that is not a non-empty string
    without spaces at either end, an ``identifier`` that is not ``{system, value}`` strings."""
    if isinstance(value, Mapping) and value.get("who") is not None:
        value, path = value["who"], f"{path}.who"  # an agent-like backbone element
    if not isinstance(value, Mapping):
        issues.append(Issue(path=path, message="expected a Reference object"))
        return _Unread.MALFORMED
    reference = value.get("reference")
    if reference is not None and _token(reference) is None:
        message = "expected a reference (a non-empty string without spaces at either end)"
        issues.append(Issue(path=f"{path}.reference", message=message))
        return _Unread.MALFORMED
    ident = value.get("identifier")
    identifier = None
    if ident is not None:
        system = _token(ident.get("system")) if isinstance(ident, Mapping) else None
        text = _token(ident.get("value")) if isinstance(ident, Mapping) else None
        if system is None or text is None:
            message = (
                "expected an Identifier {system, value} (strings without spaces at either end)"
            )
            issues.append(Issue(path=f"{path}.identifier", message=message))
            return _Unread.MALFORMED
        identifier = Identifier(system=system, value=text)
    if reference is None and identifier is None:
        return _Unread.NOBODY
    kind = value.get("type")
    return Ref(
        reference=reference, identifier=identifier, type=kind if isinstance(kind, str) else None
    )


def _refs(
    resource: Mapping[str, Any], elements: Sequence[str], issues: list[Issue]
) -> tuple[tuple[Ref, ...], bool]:
    """The references of ``elements``, and whether they are complete (no entry names nobody).
    A malformed entry adds an issue at its path (``performer[1].reference``): left out, a deny
    scoped by the party it names would be missed."""
    found: list[Ref] = []
    complete = True
    for element in elements:
        value = resource.get(element)
        if value is None:
            continue
        many = isinstance(value, list)
        for i, item in enumerate(value if many else [value]):
            ref = _strict_ref(item, f"{element}[{i}]" if many else element, issues)
            if ref is _Unread.NOBODY:
                complete = False
            elif isinstance(ref, Ref) and ref not in found:
                found.append(ref)
    return tuple(found), complete


def requested_resource(resource: Mapping[str, Any]) -> RequestedResource:
    """The engine's view of one FHIR resource (R4 or R5). Raises :class:`InputError`, an issue per
    element, on a resource without a ``resourceType`` or with a malformed element the engine needs
    (see the module docstring); every missing fact is simply left out."""
    if not isinstance(resource, Mapping):
        raise _fail("resource", "expected a FHIR resource (a mapping)")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise _fail("resourceType", "a FHIR resource needs a resourceType")
    issues: list[Issue] = []
    if not _RESOURCE_TYPE.fullmatch(resource_type):
        issues.append(Issue(path="resourceType", message="expected a FHIR resource type name"))
    meta = resource.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, Mapping):
        issues.append(Issue(path="meta", message="expected a Meta object"))
        meta = {}
    resource_id = resource.get("id")
    if resource_id is not None and _token(resource_id) is None:
        issues.append(Issue(path="id", message="expected a FHIR id (a string without spaces)"))
    identifiers = _identifiers(resource, issues)
    codes = _codes(resource, issues)
    profiles = _profiles(meta, issues)
    labels = _labels(meta, issues)
    refers_to, relations_known = _refs(resource, _REFERS_TO, issues)
    authors, authors_known = _refs(resource, _AUTHORS, issues)
    if issues:
        paths = ", ".join(i.path for i in issues)
        raise InputError(f"invalid resource at {paths}", issues=issues)
    # A reference that names nothing (display only): what this resource depends on is unknown.
    # The engine has no unknown ``refers_to`` but reads every data reference of a resource
    # without its own reference as unknown (a deny by data reference applies, a permit does
    # not); the known references alone could miss a deny by dependents.
    # Every identifier names the resource: the first goes with the reference, each further one
    # with an alias. With an id, each alias pairs ``Type/id`` with its identifier: an alias by
    # identifier alone would leave the resource named one way in it, and a deny by reference to
    # any other resource would then match as a missing fact (the engine's ``_data_incomparable``).
    reference = None
    aliases: tuple[Ref, ...] = ()
    if relations_known and isinstance(resource_id, str):
        literal = f"{resource_type}/{resource_id}"
        reference = Ref(
            reference=literal,
            identifier=identifiers[0] if identifiers else None,
            type=resource_type,
        )
        aliases = tuple(
            Ref(reference=literal, identifier=i, type=resource_type) for i in identifiers[1:]
        )
    elif relations_known and identifiers:
        reference = Ref(identifier=identifiers[0], type=resource_type)
        aliases = tuple(Ref(identifier=i, type=resource_type) for i in identifiers[1:])
    date = _clinical_date(resource)
    return RequestedResource(
        type=resource_type,
        reference=reference,
        profiles=profiles,
        codes=codes,
        labels=labels,
        date=date,
        refers_to=refers_to,
        # An author named by display only: the authors are unknown (none), so a deny by author
        # applies and a permit by author does not; the known ones alone could miss a deny.
        authors=authors if authors_known else (),
        aliases=aliases,
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
