"""The consent decision engine: compiles consent records once into fast matchers, then answers
:class:`~fhir_alliance.consent.decision.DecisionRequest` questions (pure, no I/O).

Semantics in brief (the full statement, with examples, is ``docs/consent-decisions.md``):

* A consent counts only if it is about the request's patient, ``active``, its ``period`` contains
  the request time, its category matches (when the request names categories) and its root provision
  matches the request. Every provision dimension is honoured at every depth: ``period``, ``actor``
  (reference and role), ``action``, ``purpose``, ``securityLabel``, ``class``, ``code``,
  ``dataPeriod`` and ``data`` (by meaning). Empty means "no restriction". A ``class`` names a
  resource type (by its code system), a profile (a canonical URL) or else a document type (R5
  ``documentType``, LOINC 34904-3), which is compared with the resource's codes as ``code`` is.
* Nested provisions are exceptions to their parent, to any depth; the deepest matching provision
  decides. Among matching siblings, deny overrides permit (first in document order among equals).
* Consents combine by :class:`~fhir_alliance.consent.decision.CombiningRule`.
* Labels in :attr:`ConsentEngine.explicit_labels` (PSYTHPN by default) are released only when the
  deciding provision or one of its ancestors names the label in ``securityLabel``.
* A resource label of a code system other than the HL7 label systems, whose code is a code of one
  of them (``R`` or ``PSYTHPN`` under an EHR's own system), may mean that label: a missing fact.
  For deny provisions and the explicit-label rule it counts as that code of each such system
  (:func:`deny_label_keys`); permits match labels exactly as written.
* With a ``resource`` the answer is exact for that resource. Without one, the answer is about the
  patient's data in general and data-scoped provisions turn into redact obligations (conservatively:
  an obligation may remove more than strictly needed, never less).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import NamedTuple

from fhir_alliance.consent.decision import (
    KNOWN_ACTIONS,
    KNOWN_LABELS,
    KNOWN_PURPOSES,
    LABEL_SYSTEMS,
    CombiningRule,
    ConsentDecision,
    DecisionBasis,
    DecisionOutcome,
    DecisionRequest,
    RedactMode,
    RedactObligation,
)
from fhir_alliance.consent.directory import ActorDirectory, RefKey
from fhir_alliance.consent.purposes import broader_purposes, narrower_purposes
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.mapping.consent import KIND_SCOPES
from fhir_alliance.model.common import Coding, Ref
from fhir_alliance.model.consent import (
    ConsentRecord,
    ConsentStatus,
    DataMeaning,
    DataRef,
    Decision,
    Period,
    Provision,
)
from fhir_alliance.terminology import (
    CONSENT_SCOPE,
    LABEL_PSYCHOTHERAPY_NOTE,
    LABEL_VERY_RESTRICTED,
    canonical_system,
)

__all__ = [
    "DEFAULT_EXPLICIT_LABELS",
    "MAX_PROVISION_DEPTH",
    "RESOURCE_TYPE_SYSTEMS",
    "ConsentEngine",
    "decide",
    "deny_label_keys",
]

#: Labels whose content is released only by a provision that names the label: psychotherapy
#: notes (PSYTHPN) and very restricted content (confidentiality ``V``, which another system may
#: have put on a record; a permit for ``R`` content does not reach above it).
DEFAULT_EXPLICIT_LABELS: frozenset[tuple[str, str]] = frozenset(
    {LABEL_PSYCHOTHERAPY_NOTE, LABEL_VERY_RESTRICTED}
)

#: Code systems whose ``class`` codes are resource types (R4 and R5). Any other ``class`` code is
#: a profile when it is a canonical URL (compared with ``meta.profile``), else a document type
#: (R5 ``documentType``, LOINC 34904-3 in R4 ``class``: compared with the resource's codes).
RESOURCE_TYPE_SYSTEMS = frozenset(
    {"http://hl7.org/fhir/resource-types", "http://hl7.org/fhir/fhir-types"}
)

#: A ``class`` code that names a profile: a canonical URL (``https://…/StructureDefinition/x``,
#: whatever system it is given under) or a URN.
_PROFILE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+|[Uu][Rr][Nn]:\S+")

#: Deepest nesting of provisions compiled (the FHIR mapping reads no deeper either).
MAX_PROVISION_DEPTH = 32


_CodeKey = tuple[str, str]
_EMPTY: frozenset[RefKey] = frozenset()


_NO_CODES: frozenset[_CodeKey] = frozenset()
_NO_TYPES: frozenset[str] = frozenset()


def _key(coding: Coding) -> _CodeKey:
    """``(system, code)`` with the system in canonical form (:func:`canonical_system`: OIDs,
    https, a trailing slash… of the code systems consents are matched on), whichever reader or
    caller built the coding: a code spelt another way must not slip past a deny naming it."""
    return (canonical_system(coding.system), coding.code)


def _code_keys(codings: tuple[Coding, ...] | list[Coding]) -> frozenset[_CodeKey]:
    if not codings:
        return _NO_CODES
    return frozenset([_key(c) for c in codings])


#: Each code of the HL7 label systems the library knows, to its ``(system, code)`` in every one of
#: those systems that has it.
_LABELS_BY_CODE: dict[str, frozenset[_CodeKey]] = {
    code: frozenset(k for k in KNOWN_LABELS if k[1] == code) for _, code in KNOWN_LABELS
}


def _foreign_label_keys(labels: frozenset[_CodeKey]) -> frozenset[_CodeKey]:
    """The known labels that ``labels`` of other code systems may mean (see
    :func:`deny_label_keys`); empty, and cheap, when every label is of a known system."""
    found: frozenset[_CodeKey] = _NO_CODES
    for system, code in labels:
        if system not in LABEL_SYSTEMS:
            meant = _LABELS_BY_CODE.get(code)
            if meant is not None:
                found = found | meant
    return found


def deny_label_keys(labels: Iterable[Coding]) -> frozenset[tuple[str, str]]:
    """The labels a resource carrying ``labels`` counts as carrying for deny provisions, for
    ``redact-matching`` obligations and for the labels that need an explicit permit (PSYTHPN, V):
    each label as ``(system, code)`` with the system in canonical form, and, for a label of a
    code system that is not one of the HL7 label systems (an EHR's own, a value set URL given as
    the system) whose code is a code of one of them (``R``, ``PSYTHPN``, ``HIV``), that code of
    each of those systems too. Whether the other system's ``PSYTHPN`` means psychotherapy notes
    is a missing fact: it may, so it never widens access. Permits match the labels as written."""
    keys = _code_keys(tuple(labels))
    return keys | _foreign_label_keys(keys)


class _ClassKind(Enum):
    """What a ``class`` coding names."""

    TYPE = "resource type"  # compared with the resource's type
    PROFILE = "profile"  # a canonical URL: compared with the resource's profiles
    DOCUMENT = "document type"  # any other code: compared with the resource's codes


def _class_kind(coding: Coding) -> _ClassKind:
    """What a ``class`` coding names: a resource type (by its code system), a profile (a
    canonical URL), else a document type (a LOINC document code, a note's content kind), which
    says what the content is as a ``code`` does."""
    if canonical_system(coding.system) in RESOURCE_TYPE_SYSTEMS:
        return _ClassKind.TYPE
    if _PROFILE_URL.fullmatch(coding.code):
        return _ClassKind.PROFILE
    return _ClassKind.DOCUMENT


def _class_id(coding: Coding) -> tuple[_ClassKind, str, str]:
    """A ``class`` coding as what it names: resource types and profiles by their code alone (the
    system says only that it is one), document types by ``(system, code)`` like any code."""
    kind = _class_kind(coding)
    if kind is _ClassKind.DOCUMENT:
        system, code = _key(coding)
        return (kind, system, code)
    return (kind, "", coding.code)


#: How a party is named when it is named one way only: ``("ref" | "id", resource type or None)``.
_Facet = tuple[str, str | None]


def _facet(ref: Ref, keys: frozenset[RefKey]) -> _Facet | None:
    """``("ref", type)`` or ``("id", type)`` when ``keys`` name a party only one way (by a
    reference the directory cannot resolve, or by identifier alone), else ``None``. The resource
    type, when known, tells two such parties apart: an Organization is never a Practitioner."""
    has_ref = has_id = False
    for key in keys:
        if key[0] == "ref":
            has_ref = True
        else:
            has_id = True
    if has_ref == has_id:
        return None
    return ("ref" if has_ref else "id", _resource_type(ref))


def _resource_type(ref: Ref) -> str | None:
    if ref.type:
        return ref.type
    if ref.reference is None:
        return None
    parts = ref.reference.split("/_history/")[0].split("/")
    head = parts[-2] if len(parts) >= 2 else ""
    return head if head[:1].isupper() and head.isalpha() else None


def _incomparable(facet: _Facet, request_facets: tuple[_Facet, ...]) -> bool:
    """Whether a party named only one way (``facet``) cannot be compared with a request actor
    named only the other way: then whether they are the same party is a missing fact."""
    kind, rtype = facet
    return any(k != kind and (t is None or rtype is None or t == rtype) for k, t in request_facets)


def _timestamp(value: datetime | None, path: str) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InputError(
            f"timestamp without a UTC offset at {path}",
            issues=[Issue(path=path, message="the timestamp needs a UTC offset")],
        )
    return value.timestamp()


class _Node:
    """One compiled provision. ``None`` in a filter slot means "no restriction"."""

    __slots__ = (
        "actions",
        "actors",
        "basis_value",
        "children",
        "codes",
        "consent",
        "data",
        "data_end",
        "data_start",
        "document_classes",
        "end",
        "filter_parts",
        "folded_types",
        "has_filter",
        "labels",
        "named_labels",
        "own_redact",
        "path",
        "permit",
        "profile_classes",
        "provision",
        "purposes",
        "single_kind_actors",
        "start",
        "type_classes",
    )

    def __init__(
        self,
        provision: Provision,
        permit: bool,
        path: str,
        consent: _Consent,
        directory: ActorDirectory,
        explicit_labels: frozenset[_CodeKey],
        inherited_labels: frozenset[_CodeKey],
        where: str,
    ) -> None:
        self.provision = provision
        self.permit = permit
        self.path = path
        self.consent = consent
        period = provision.period
        self.start = _timestamp(period.start, f"{where}.period.start") if period else None
        self.end = _timestamp(period.end, f"{where}.period.end") if period else None
        self.actions = _code_keys(provision.actions) or None
        # PurposeOfUse is a hierarchy: a permit for TREAT covers ETREAT; a deny matches when either
        # purpose subsumes the other.
        purposes = _code_keys(provision.purposes)
        if not purposes:
            self.purposes: frozenset[_CodeKey] | None = None
        elif permit:
            self.purposes = narrower_purposes(purposes)
        else:
            self.purposes = narrower_purposes(purposes) | broader_purposes(purposes)
        # (role, match keys, kind): kind is "ref" or "id" for an actor known only by reference
        # (not in the directory) or only by identifier, which cannot be compared with a request
        # actor known only the other way; None when both ways are known.
        self.actors: tuple[tuple[_CodeKey, frozenset[RefKey], _Facet | None], ...] | None = (
            tuple(
                (_key(a.role), keys, _facet(a.reference, keys))
                for a, keys in ((a, directory.keys(a.reference)) for a in provision.actors)
            )
            or None
        )
        self.single_kind_actors = tuple(
            (a, facet)
            for a, (_, _, facet) in zip(provision.actors, self.actors or (), strict=True)
            if facet is not None
        )
        self.labels = _code_keys(provision.security_labels) or None
        kinds = [(_class_kind(c), c) for c in provision.classes]
        type_classes = frozenset(c.code for k, c in kinds if k is _ClassKind.TYPE)
        profile_classes = frozenset(c.code for k, c in kinds if k is _ClassKind.PROFILE)
        # ``type_classes`` is ``None`` when the provision names no class at all.
        self.type_classes = type_classes if provision.classes else None
        # Document types say what the content is, as codes do: compared with the resource's codes.
        self.document_classes = frozenset(_key(c) for k, c in kinds if k is _ClassKind.DOCUMENT)
        # A deny names a resource type in any letter case (``observation``) and a profile in any
        # version (``…|1.0`` names the profile too): it must not be missed over how the class is
        # spelt. A permit is read as written.
        self.folded_types = (
            frozenset(t.casefold() for t in type_classes) if not permit else frozenset()
        )
        if not permit:
            profile_classes |= {p.partition("|")[0] for p in profile_classes}
        self.profile_classes = profile_classes
        self.codes = _code_keys(provision.codes) or None
        dp = provision.data_period
        self.data_start = _timestamp(dp.start, f"{where}.dataPeriod.start") if dp else None
        self.data_end = _timestamp(dp.end, f"{where}.dataPeriod.end") if dp else None
        self.data: tuple[tuple[DataMeaning, frozenset[RefKey], _Facet | None], ...] | None = (
            tuple(
                (d.meaning, keys, _facet(d.reference, keys))
                for d, keys in ((d, directory.keys(d.reference)) for d in provision.data)
            )
            or None
        )
        self.has_filter = bool(
            provision.security_labels
            or provision.classes
            or provision.codes
            or dp is not None
            or provision.data
        )
        record = consent.record
        self.basis_value = DecisionBasis(
            consent=record.id,
            path=path,
            decision=Decision.PERMIT if permit else Decision.DENY,
            consent_date=record.date,
        )
        # This provision's data filter, as the parts of a redact obligation.
        self.filter_parts = (
            provision.security_labels,
            provision.codes,
            provision.classes,
            provision.data_period,
            provision.data,
        )
        # The redaction this provision asks for when it decides inside its own scope.
        self.own_redact = RedactObligation(
            RedactMode.MATCHING, *self.filter_parts, (self.basis_value,)
        )
        self.named_labels = inherited_labels | ((self.labels or frozenset()) & explicit_labels)
        if provision.provisions and path.count(".") + 1 >= MAX_PROVISION_DEPTH:
            consent_path = where.split(".provision", 1)[0]
            raise InputError(
                f"provisions nested deeper than {MAX_PROVISION_DEPTH} levels in {consent_path}",
                issues=[
                    Issue(
                        path=f"{consent_path}.provision",
                        message=f"nested deeper than {MAX_PROVISION_DEPTH} levels (the limit)",
                    )
                ],
            )
        children: list[_Node] = []
        for n, child in enumerate(provision.provisions):
            # A nested provision without a type is an exception to its parent: the opposite decision.
            child_permit = (not permit) if child.type is None else child.type is Decision.PERMIT
            child_path = str(n) if path == "root" else f"{path}.{n}"
            children.append(
                _Node(
                    child,
                    child_permit,
                    child_path,
                    consent,
                    directory,
                    explicit_labels,
                    self.named_labels,
                    f"{where}.provisions.{n}",
                )
            )
        self.children = tuple(children)

    def walk(self) -> Iterable[_Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def basis(self) -> DecisionBasis:
        return self.basis_value


class _UnresolvedActor(NamedTuple):
    """A provision actor named one way only (see :func:`_facet`), and the note an answer carries
    when the request names its actors of that role only the other way."""

    role: _CodeKey
    facet: _Facet
    note: str


class _Consent:
    """One compiled consent record."""

    __slots__ = (
        "active_end",
        "active_more",
        "active_start",
        "categories",
        "date",
        "end",
        "id_text",
        "index",
        "patient_keys",
        "privacy",
        "record",
        "root",
        "start",
        "unresolved_actors",
    )

    def __init__(
        self,
        record: ConsentRecord,
        index: int,
        directory: ActorDirectory,
        explicit_labels: frozenset[_CodeKey],
    ) -> None:
        where = f"consents.{index}"
        self.record = record
        self.index = index
        self.id_text = str(record.id)
        spans = _in_force(record, where)
        # Most consents have one span: compare two floats; the rest go to ``active_more``.
        self.active_start, self.active_end = spans[0] if spans else (float("inf"), float("-inf"))
        self.active_more = spans[1:]
        period = record.period
        self.start = _timestamp(period.start, f"{where}.period.start") if period else None
        self.end = _timestamp(period.end, f"{where}.period.end") if period else None
        date = _timestamp(record.date, f"{where}.date")
        self.date = date if date is not None else 0.0
        # A request category matches a consent category or its scope (R4 ``scope``, R5 a
        # consentscope category), which the mapping turns into the consent's kind.
        self.categories = _code_keys(record.categories) | {
            (CONSENT_SCOPE, KIND_SCOPES[record.kind])
        }
        #: A privacy consent (sharing, recording, restriction) restricts disclosure whatever
        #: category it is filed under; a treatment consent is about care, not disclosure.
        self.privacy = KIND_SCOPES[record.kind] == "patient-privacy"
        self.patient_keys = directory.keys(record.patient)
        self.root = _Node(
            record.provision,
            record.decision is Decision.PERMIT,
            "root",
            self,
            directory,
            explicit_labels,
            frozenset(),
            f"{where}.provision",
        )
        # Every actor named one way only, with the note an answer carries when a request names
        # its party only the other way: worked out once, not for each request.
        self.unresolved_actors = tuple(
            _UnresolvedActor(
                _key(actor.role),
                facet,
                f"consent {self.id_text}, {_where(node)}: actor {_describe(actor.reference)} "
                "could not be resolved (not in the actor directory); "
                + (
                    "a permit never matches it"
                    if node.permit
                    else "it counts as matching this deny provision"
                ),
            )
            for node in self.root.walk()
            for actor, facet in node.single_kind_actors
        )


def _in_force(record: ConsentRecord, where: str) -> tuple[tuple[float, float], ...]:
    """When the consent was ``active``: from its history (status as of each instant), else its
    current status. Entered in error never counts, whatever the history says."""
    inf = float("inf")
    if record.status is ConsentStatus.ENTERED_IN_ERROR:
        return ()
    if not record.history:
        return ((-inf, inf),) if record.status is ConsentStatus.ACTIVE else ()
    spans: list[tuple[float, float]] = []
    since: float | None = None
    for n, change in enumerate(record.history):
        at = _timestamp(change.at, f"{where}.history.{n}.at")
        if at is None:  # StatusChange.at is required; a missing one proves nothing
            continue
        if change.status is ConsentStatus.ACTIVE:
            if since is None:
                since = at
        elif since is not None:
            spans.append((since, at))
            since = None
    if since is not None:
        if record.status is not ConsentStatus.ACTIVE:  # history ends active, status says otherwise
            return tuple(spans)
        spans.append((since, inf))
    return tuple(spans)


def _active_at(spans: tuple[tuple[float, float], ...], at: float) -> bool:
    return any(start <= at < end for start, end in spans)


class _Request:
    """One request, compiled: every reference expanded to its match keys, codes to key sets."""

    __slots__ = (
        "action",
        "action_unknown",
        "actor_keys",
        "all_actor_keys",
        "at",
        "author_keys",
        "codes",
        "content_classes",
        "content_documents",
        "content_profiles",
        "content_types",
        "date",
        "deny_labels",
        "directory",
        "explicit_needed",
        "foreign_labels",
        "has_resource",
        "incomparable",
        "labels",
        "profiles",
        "purpose_unknown",
        "purposes",
        "referenced_by_keys",
        "refers_to_keys",
        "resource",
        "role_systems",
        "self_keys",
        "type",
    )

    def __init__(
        self,
        request: DecisionRequest,
        directory: ActorDirectory,
        explicit_labels: frozenset[_CodeKey],
    ) -> None:
        self.at = request.at.timestamp()
        self.directory = directory
        self.resource = request.resource
        action = request.action
        self.action = _key(action) if action is not None else None
        # A missing or unknown action or purpose is a missing fact: it matches deny provisions
        # restricted to actions or purposes, never permit provisions.
        self.action_unknown = self.action not in KNOWN_ACTIONS
        self.purposes = _code_keys(request.purposes)
        self.purpose_unknown = not self.purposes or not self.purposes <= KNOWN_PURPOSES
        actor_keys: dict[_CodeKey, frozenset[RefKey]] = {}
        # role → the request actors of that role named one way only (see _facet): a provision
        # actor named only the other way cannot be compared with them.
        incomparable: dict[_CodeKey, tuple[_Facet, ...]] = {}
        for actor in request.actors:
            role = _key(actor.role)
            keys = directory.keys(actor.reference)
            known = actor_keys.get(role)
            actor_keys[role] = keys if known is None else known | keys
            facet = _facet(actor.reference, keys)
            if facet is not None:
                incomparable[role] = (*incomparable.get(role, ()), facet)
        self.actor_keys = actor_keys
        self.incomparable = incomparable
        # The role systems the request's actors are coded in, and every key of every actor: a
        # provision actor whose role is coded in another system cannot be compared by role.
        self.role_systems = frozenset(system for system, _ in actor_keys)
        self.all_actor_keys = frozenset().union(*actor_keys.values())
        resource = request.resource
        self.has_resource = resource is not None
        classes = frozenset(_class_id(c) for c in request.content_classes)
        #: The content classes asked about (without a resource), as :func:`_class_id` gives them.
        self.content_classes = classes
        self.content_types = frozenset(c for k, _, c in classes if k is _ClassKind.TYPE)
        self.content_profiles = frozenset(c for k, _, c in classes if k is _ClassKind.PROFILE)
        self.content_documents = frozenset(
            (s, c) for k, s, c in classes if k is _ClassKind.DOCUMENT
        )
        if resource is None:
            self.labels = self.deny_labels = self.foreign_labels = _NO_CODES
            self.explicit_needed: frozenset[_CodeKey] = frozenset()
            self.type = None
            self.profiles: frozenset[str] = frozenset()
            self.codes: frozenset[_CodeKey] = frozenset()
            self.date = None
            self.self_keys = self.refers_to_keys = self.referenced_by_keys = _EMPTY
            self.author_keys = _EMPTY
            return
        self.labels = _code_keys(resource.labels)
        # Labels of other code systems with a code of the HL7 label systems may mean that label
        # (a missing fact): they count for deny provisions and for the explicit-label rule.
        self.foreign_labels = _foreign_label_keys(self.labels)
        self.deny_labels = self.labels | self.foreign_labels if self.foreign_labels else self.labels
        self.explicit_needed = self.deny_labels & explicit_labels
        self.type = resource.type
        self.profiles = frozenset(resource.profiles)
        self.codes = _code_keys(resource.codes)
        self.date = resource.date.timestamp() if resource.date is not None else None
        # Every way the resource itself is known: its reference and the aliases (which need it).
        self.self_keys = (
            _keys_of((resource.reference, *resource.aliases), directory)
            if resource.reference is not None
            else _EMPTY
        )
        self.refers_to_keys = _keys_of(resource.refers_to, directory)
        self.referenced_by_keys = _keys_of(resource.referenced_by, directory)
        self.author_keys = _keys_of(resource.authors, directory)


def _facets_of(refs: Iterable[Ref], directory: ActorDirectory) -> tuple[_Facet, ...]:
    facets = (_facet(ref, directory.keys(ref)) for ref in refs)
    return tuple(f for f in facets if f is not None)


def _keys_of(refs: Iterable[Ref], directory: ActorDirectory) -> frozenset[RefKey]:
    keys: frozenset[RefKey] = _EMPTY
    for ref in refs:
        keys = keys | directory.keys(ref)
    return keys


# --- matching -------------------------------------------------------------------------------------


def _context_matches(n: _Node, q: _Request) -> bool:
    """Period, action, purpose and actor: the circumstances of the request."""
    if n.start is not None and q.at < n.start:
        return False
    if n.end is not None and q.at >= n.end:
        return False
    if n.actions is not None and q.action not in n.actions and (n.permit or not q.action_unknown):
        return False
    if (
        n.purposes is not None
        and n.purposes.isdisjoint(q.purposes)
        and (n.permit or not q.purpose_unknown)
    ):
        return False
    if n.actors is not None:
        actor_keys = q.actor_keys
        for role, keys, facet in n.actors:
            wanted = actor_keys.get(role)
            if wanted is None:
                # A role coded in a system no request actor is coded in (an EHR's own roles)
                # cannot be compared: a missing fact, which matches a deny naming one of the
                # request's actors, never a permit.
                if (
                    not n.permit
                    and role[0] not in q.role_systems
                    and not keys.isdisjoint(q.all_actor_keys)
                ):
                    break
                continue
            if not keys.isdisjoint(wanted):
                break
            # An actor that cannot be compared is a missing fact: it matches a deny only.
            if (
                facet is not None
                and not n.permit
                and role in q.incomparable
                and _incomparable(facet, q.incomparable[role])
            ):
                break
        else:
            return False
    return True


def _data_matches(n: _Node, q: _Request) -> bool:
    """Labels, class, code, data period and data references: what the resource is.

    A fact the request leaves out (type, codes, date, reference, authors) is unknown: it matches a
    deny provision and not a permit, so that missing facts never widen access. Labels are always
    known: a resource without labels is unlabelled; one of another code system with a code of the
    HL7 label systems may mean that label, so it matches a deny provision naming it and no permit.
    """
    if n.labels is not None and n.labels.isdisjoint(q.labels if n.permit else q.deny_labels):
        return False
    unknown = not n.permit
    if n.type_classes is not None and not _class_matches(n, q, unknown):
        return False
    if n.codes is not None:
        if not q.codes:
            if not unknown:
                return False
        elif n.codes.isdisjoint(q.codes):
            return False
    if n.data_start is not None or n.data_end is not None:
        date = q.date
        if date is None:
            if not unknown:
                return False
        elif (n.data_start is not None and date < n.data_start) or (
            n.data_end is not None and date >= n.data_end
        ):
            return False
    if n.data is not None:
        for meaning, keys, facet in n.data:
            if meaning is DataMeaning.AUTHOREDBY:
                hit = unknown if not q.author_keys else not keys.isdisjoint(q.author_keys)
            elif not q.self_keys:
                hit = unknown
            elif meaning is DataMeaning.INSTANCE:
                hit = not keys.isdisjoint(q.self_keys)
            elif meaning is DataMeaning.RELATED:
                hit = not (keys.isdisjoint(q.self_keys) and keys.isdisjoint(q.referenced_by_keys))
            else:  # dependents
                hit = not (keys.isdisjoint(q.self_keys) and keys.isdisjoint(q.refers_to_keys))
            if hit or (unknown and facet is not None and _data_incomparable(meaning, facet, q)):
                break
        else:
            return False
    return True


def _class_matches(n: _Node, q: _Request, unknown: bool) -> bool:
    """Whether the resource is of one of the provision's classes: its type, one of its profiles,
    or a document type among its codes. ``unknown`` is what a fact the request leaves out counts
    as (true for a deny): the type when neither type nor profiles are known, the codes when none
    are known."""
    types = n.type_classes or _NO_TYPES
    if types or n.profile_classes:
        if q.type is None:
            if not q.profiles:
                if unknown:
                    return True
            elif not n.profile_classes.isdisjoint(q.profiles):
                return True
        elif (
            q.type in types
            or (not n.permit and q.type.casefold() in n.folded_types)
            or not n.profile_classes.isdisjoint(q.profiles)
        ):
            return True
    if n.document_classes:
        if not q.codes:
            return unknown
        return not n.document_classes.isdisjoint(q.codes)
    return False


def _data_incomparable(meaning: DataMeaning, facet: _Facet, q: _Request) -> bool:
    """Whether a data reference named one way only cannot be compared with the references of the
    request named only the other way (then whether they are the same resource is a missing fact).
    Rare, so worked out here rather than for every request."""
    resource = q.resource
    if resource is None:
        return False
    directory = q.directory
    if meaning is DataMeaning.AUTHOREDBY:
        return _incomparable(facet, _facets_of(resource.authors, directory))
    # The resource itself, known by its reference and its aliases: named both ways among them
    # (by reference and by identifier, in one Ref or across several), it is known completely and
    # compares with any data reference; else each way counts as named one way only.
    kinds = {key[0] for key in q.self_keys}
    own: tuple[_Facet, ...] = ()
    if len(kinds) == 1 and resource.reference is not None:
        own = _facets_of((resource.reference, *resource.aliases), directory)
    if meaning is DataMeaning.INSTANCE:
        others: tuple[Ref, ...] = ()
    elif meaning is DataMeaning.RELATED:
        others = resource.referenced_by
    else:  # dependents
        others = resource.refers_to
    return _incomparable(facet, (*own, *_facets_of(others, directory)))


def _walk(n: _Node, q: _Request) -> _Node:
    """The provision that decides for ``q`` below ``n`` (``n`` itself if no exception matches)."""
    best = n
    needed = q.explicit_needed
    for child in n.children:
        if _context_matches(child, q) and _data_matches(child, q):
            found = _walk(child, q) if child.children else child
            if (
                best is n
                or (best.permit and not found.permit)
                # Among matching permits, one that names the labels the resource needs named
                # (PSYTHPN) decides: it permits that content explicitly.
                or (
                    needed
                    and best.permit
                    and found.permit
                    and not needed <= best.named_labels
                    and needed <= found.named_labels
                )
            ):
                best = found
    return best


# --- answers about the patient's data in general (no resource) --------------------------------------


def _may_concern(n: _Node, q: _Request) -> bool:
    """Without a resource: False only when the provision certainly cannot concern the content the
    request names: both name resource types only, and none in common (a resource has one type).
    A profile tells nothing certain about a resource's type, nor about the other profiles it may
    claim, and a document type nothing about either (a resource of any type may carry that code,
    beside others), so a provision or a request naming profiles or document types may concern any
    content."""
    if n.type_classes is None or not q.content_classes:
        return True
    if n.profile_classes or n.document_classes or q.content_profiles or q.content_documents:
        return True
    if not n.type_classes.isdisjoint(q.content_types):
        return True
    return not n.permit and not n.folded_types.isdisjoint(t.casefold() for t in q.content_types)


@dataclass(slots=True)
class _Scoped:
    """A data-scoped exception met without a resource: ``scope`` is the filtering provision,
    ``decider`` what decides inside it for this context, ``nested`` the scoped exceptions within.
    ``overrode``: a deny decides where, without some deny, a permit would (see
    :func:`_redacted_within`)."""

    scope: _Node
    decider: _Node
    nested: list[_Scoped]
    overrode: bool = False


_NO_RULES: list[_Scoped] = []  # shared, never mutated: leaves have no nested rules


def _walk_general(n: _Node, q: _Request) -> tuple[_Node, list[_Scoped], bool]:
    """What decides below ``n`` for the request's context, the scoped exceptions met, and whether
    that decider is a deny overriding a permit that would decide without it (or without a deny
    further in: ``overrode`` of :class:`_Scoped`)."""
    best = n
    best_nested: list[_Scoped] = _NO_RULES
    scoped: list[_Scoped] = []
    passed_over: list[list[_Scoped]] = []  # the nested rules of unfiltered siblings not chosen
    best_overrode = False  # the unfiltered denies chosen overrode a permit further in
    classes = q.content_classes
    for child in n.children:
        if not _context_matches(child, q) or (classes and not _may_concern(child, q)):
            continue
        if child.children:
            decider, nested, overrode = _walk_general(child, q)
        else:
            decider, nested, overrode = child, _NO_RULES, False
        if child.has_filter:
            scoped.append(_Scoped(child, decider, nested, overrode))
        elif best is n or (best.permit and not decider.permit):
            if best is not n:
                passed_over.append(best_nested)
            best, best_nested, best_overrode = decider, nested, overrode
        elif not best.permit and not decider.permit:
            # Two denies: content either one denies is denied, so what stays released is what
            # the exceptions of both permit; no obligation can say that much: neither's permits
            # are kept (the safe side), the denies within them still count.
            best_nested = [*_denies_within(best_nested), *_denies_within(nested)]
            best_overrode = best_overrode or overrode
        else:
            passed_over.append(nested)
    if best is not n:
        # An unfiltered sibling matched: inside a scope, deny overrides among siblings, so a scoped
        # permit adds nothing to what that sibling decided; but what it denies further in (its
        # nested scoped denies) still overrides a permit of that sibling.
        kept: list[_Scoped] = []
        for s in scoped:
            if not s.decider.permit:
                kept.append(s)
            else:
                kept.extend(_denies_within(s.nested))
        scoped = kept
    if best_nested:
        scoped.extend(best_nested)
    for nested in passed_over:
        # An unfiltered sibling that did not decide still denies inside its scoped exceptions,
        # and there a deny overrides whatever the deciding sibling permits.
        scoped.extend(_denies_within(nested))
    # A deny decides; it overrode a permit when ``n`` permits, when a permit was passed over
    # (only unfiltered permits are), or when one of the denies chosen did further in.
    overrode = not best.permit and (n.permit or bool(passed_over) or best_overrode)
    return best, scoped, overrode


def _denies_within(rules: list[_Scoped]) -> Iterable[_Scoped]:
    """The scoped denies among ``rules`` and, through permits, further in (each redacts its own
    scope: more than the intersection with the scopes around it, never less)."""
    for rule in rules:
        if rule.decider.permit:
            yield from _denies_within(rule.nested)
        else:
            yield rule


def _redacted_within(rules: list[_Scoped]) -> Iterable[_Scoped]:
    """What ``rules`` redact under a permit: the scoped denies among them and, through permits,
    further in; and, inside a deny that overrode a permit, what that permit's rules would redact.

    A scope a deny decides is redacted whole, and the denies nested inside it add nothing to what
    is released. But where the deny overrode a permit (a deny added beside it, or further in), the
    permit would decide without it, and the denies nested inside would then redact their own scopes,
    which may reach beyond the scope around them (no obligation can say "both"). Dropping them then
    would let an added deny swap their wide redaction for the scope's narrower one and turn a deny
    into a permit: they still redact. A deny that decides with no permit in its way keeps its nested
    denies out (no fewer denies would make it a permit)."""
    for rule in rules:
        if rule.decider.permit:
            yield from _redacted_within(rule.nested)
        else:
            yield rule
            if rule.overrode:
                yield from _redacted_within(rule.nested)


@dataclass(slots=True)
class _General:
    """One consent's answer about the patient's data in general."""

    consent: _Consent
    base: _Node | None  # decides for content outside every scope; None if the root is scoped
    permit_only: list[_Scoped]
    redact: list[_Scoped]
    explicit: set[_CodeKey]
    dropped: int  # scoped permits too narrow to express as an obligation (left out: safe side)
    kind: str = "none"
    #: Explicit labels permitted only as written (see :func:`_flatten`): they stay redacted.
    as_written: set[_CodeKey] = field(default_factory=set)
    #: ``redact`` may list a rule twice (see :func:`_flatten`).
    repeats: bool = False

    def classify(self) -> _General:
        if self.base is not None and self.base.permit:
            self.kind = "permit-all"
        elif self.permit_only:
            self.kind = "permit-only"
        elif self.base is not None:
            self.kind = "deny-all"
        elif self.redact:
            self.kind = "deny-some"
        return self


def _flatten(rules: list[_Scoped], outer_permit: bool, depth: int, out: _General) -> None:
    for rule in rules:
        permit = rule.decider.permit
        if permit and depth == 0 and _labels_only(rule.scope):
            # Content carrying the label is released whole only by a permit scoped by labels
            # alone; one narrowed further (a code, a class, a data period, a scope around it)
            # releases only part of it, which no label obligation can say: it stays redacted.
            named = rule.decider.named_labels
            if rule.scope.permit:
                # A permit's scope reads labels as written: it does not meet content labelled
                # PSYTHPN under another code system alone (asked about, such content is denied),
                # and no obligation can redact "PSYTHPN of other systems only" (one listing the
                # code redacts it under every system). So a label that another system's label
                # may count as (deny_label_keys) stays redacted: more than needed, never less.
                # A deny's scope reads them as deny_label_keys does: what it releases is whole.
                out.as_written.update(named & KNOWN_LABELS)
                named = named - KNOWN_LABELS
            out.explicit.update(named)
        if outer_permit:
            if not permit:
                out.redact.append(rule)  # permits nested inside stay redacted (safe side)
                if rule.overrode:  # (see _redacted_within)
                    out.redact.extend(_redacted_within(rule.nested))
                out.dropped += sum(1 for r in rule.nested if r.decider.permit)
            else:
                _flatten(rule.nested, True, depth + 1, out)
        elif permit:
            if depth == 0 and _single_dimension(rule.scope):
                out.permit_only.append(rule)
                _flatten(rule.nested, True, depth + 1, out)
            else:
                out.dropped += 1
                # Its content is not kept, but what it denies further in still overrides the
                # permits of other consents (deny overrides).
                out.redact.extend(_redacted_within(rule.nested))
        else:
            if depth == 0:
                # A scoped deny beside the scoped permits kept below overrides them inside its
                # scope (deny overrides among siblings): redacted, should a permit keep content.
                out.redact.append(rule)
            if rule.overrode:  # (see _redacted_within; a permit there would redact them)
                out.redact.extend(_redacted_within(rule.nested))
                out.repeats = True  # some of them again, below
            _flatten(rule.nested, False, depth + 1, out)


def _labels_only(n: _Node) -> bool:
    p = n.provision
    return bool(p.security_labels) and not (p.classes or p.codes or p.data_period or p.data)


def _single_dimension(n: _Node) -> bool:
    p = n.provision
    dims = (p.security_labels, p.classes, p.codes, p.data_period, p.data)
    return sum(1 for d in dims if d) == 1


def _general(c: _Consent, q: _Request) -> _General | None:
    root = c.root
    if not (_context_matches(root, q) and _may_concern(root, q)):
        return None
    if not root.children:
        if not root.has_filter:
            return _General(c, root, [], [], set(), 0).classify()
        decider, rules, overrode = root, _NO_RULES, False
    else:
        decider, rules, overrode = _walk_general(root, q)
    if root.has_filter:
        # The consent speaks only about content in the root's scope: a permit keeps only that
        # content, a deny redacts it (and any permit nested inside stays redacted: safe side).
        scoped = _Scoped(root, decider, rules, overrode)
        result = _General(c, None, [], [], set(), 0)
        if decider.permit:
            _flatten([scoped], False, 0, result)
        else:
            result.redact.append(scoped)
            if overrode:  # (see _redacted_within)
                result.redact.extend(_redacted_within(rules))
            result.dropped += sum(1 for r in rules if r.decider.permit)
    else:
        result = _General(c, decider, [], [], set(), 0)
        if rules:
            _flatten(rules, decider.permit, 0, result)
    if result.repeats:  # one obligation each
        result.redact = list({id(r): r for r in result.redact}.values())
    return result.classify()


# --- indexes ---------------------------------------------------------------------------------------

_OTHER = ("", "")  # stands for any action or purpose that no root provision of the group names


class _PatientGroup:
    """The consents of one patient, indexed by what their root provisions require (action, purpose,
    actor) as bit masks, so a request looks only at consents whose root could match it."""

    __slots__ = (
        "actions",
        "actor_masks",
        "any_actor",
        "consents",
        "deny_role_systems",
        "deny_roots",
        "purposes",
        "table",
        "unresolved",
    )

    def __init__(self, consents: Iterable[_Consent]) -> None:
        self.consents = tuple(consents)
        # (role, how the provision actor is named: "ref" or "id") → (order, consent, actor): the
        # actors a request naming that role only the other way cannot compare, in note order.
        self.unresolved: dict[tuple[_CodeKey, str], list[tuple[int, _Consent, _UnresolvedActor]]]
        self.unresolved = {}
        order = 0
        for c in self.consents:
            for actor in c.unresolved_actors:
                self.unresolved.setdefault((actor.role, actor.facet[0]), []).append(
                    (order, c, actor)
                )
                order += 1
        roots = [c.root for c in self.consents]
        self.actions = frozenset(k for r in roots for k in (r.actions or ()))
        self.purposes = frozenset(k for r in roots for k in (r.purposes or ()))
        self.table: dict[tuple[_CodeKey, _CodeKey], int] = {}
        for action in (*self.actions, _OTHER):
            for purpose in (*self.purposes, _OTHER):
                mask = 0
                for bit, root in enumerate(roots):
                    if (root.actions is None or action in root.actions) and (
                        root.purposes is None or purpose in root.purposes
                    ):
                        mask |= 1 << bit
                self.table[(action, purpose)] = mask
        # (role, key) → consents whose root names that actor; any_actor: roots naming no actor.
        self.actor_masks: dict[tuple[_CodeKey, RefKey], int] = {}
        self.any_actor = 0
        # Deny roots: candidates for requests with an unknown action or purpose (missing facts).
        self.deny_roots = 0
        # Role system → deny roots naming an actor in a role of it: candidates for requests whose
        # actors are coded in other systems (a role that cannot be compared, a missing fact).
        self.deny_role_systems: dict[str, int] = {}
        for bit, root in enumerate(roots):
            if not root.permit:
                self.deny_roots |= 1 << bit
                for (system, _), _, _ in root.actors or ():
                    self.deny_role_systems[system] = self.deny_role_systems.get(system, 0) | (
                        1 << bit
                    )
            if root.actors is None or (not root.permit and root.single_kind_actors):
                self.any_actor |= 1 << bit
                continue
            for role, keys, _kind in root.actors:
                for key in keys:
                    token = (role, key)
                    self.actor_masks[token] = self.actor_masks.get(token, 0) | 1 << bit

    def lookup(self, q: _Request) -> list[_Consent]:
        action = q.action if q.action in self.actions else _OTHER
        table = self.table
        mask = 0
        matched = False
        for purpose in q.purposes:
            if purpose in self.purposes:
                mask |= table[(action, purpose)]
                matched = True
        if not matched:
            mask = table[(action, _OTHER)]
        if q.action_unknown or q.purpose_unknown:
            mask |= self.deny_roots
        actors = self.any_actor
        actor_masks = self.actor_masks
        for role, keys in q.actor_keys.items():
            for key in keys:
                actors |= actor_masks.get((role, key), 0)
        for system, roots_of_system in self.deny_role_systems.items():
            if system not in q.role_systems:
                actors |= roots_of_system
        mask &= actors
        consents = self.consents
        found = []
        while mask:
            low = mask & -mask
            found.append(consents[low.bit_length() - 1])
            mask ^= low
        return found


def _group_by_patient(
    consents: tuple[_Consent, ...], directory: ActorDirectory
) -> dict[RefKey, _PatientGroup]:
    """Consents whose patients share a key (reference or identifier) form one group; each key of
    the group points at it. Each consent's own keys are still checked at decision time."""
    parent: dict[RefKey, RefKey] = {}

    def find(key: RefKey) -> RefKey:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for c in consents:
        keys = sorted(c.patient_keys)
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
        if keys:
            find(keys[0])
    members: dict[RefKey, list[_Consent]] = {}
    for c in consents:
        if c.patient_keys:
            members.setdefault(find(next(iter(c.patient_keys))), []).append(c)
    groups = {root: _PatientGroup(cs) for root, cs in members.items()}
    return {key: groups[find(key)] for key in parent}


#: What a decision path returns: outcome, basis, obligations.
_Answer = tuple[DecisionOutcome, tuple[DecisionBasis, ...], tuple[RedactObligation, ...]]


# --- the engine ---------------------------------------------------------------------------------


class ConsentEngine:
    """Consent records compiled for fast decisions: build once, call :meth:`decide` many times.

    ``directory`` resolves actors named by reference in one place and by identifier in the other;
    ``base`` (the FHIR server base the consents came from) makes absolute references on it equal
    to relative ones, overriding the directory's; ``combining`` says how consents combine;
    ``explicit_labels`` are ``(system, code)`` labels whose content needs a provision naming the
    label (default: PSYTHPN).
    """

    def __init__(
        self,
        consents: Iterable[ConsentRecord],
        *,
        directory: ActorDirectory | None = None,
        base: str | None = None,
        combining: CombiningRule = CombiningRule.DENY_OVERRIDES,
        explicit_labels: frozenset[tuple[str, str]] = DEFAULT_EXPLICIT_LABELS,
    ) -> None:
        if directory is None:
            directory = ActorDirectory(base=base)
        elif base is not None:
            directory = directory.with_base(base)
        self.directory = directory
        self.combining = CombiningRule(combining)
        self.explicit_labels = frozenset(explicit_labels)
        self._consents = tuple(
            _Consent(record, n, self.directory, self.explicit_labels)
            for n, record in enumerate(consents)
        )
        self._groups = _group_by_patient(self._consents, self.directory)
        # The usual general answer redacts every explicit label: worked out once.
        self._all_explicit_redacted = (
            _explicit_label_obligation(sorted(self.explicit_labels))
            if self.explicit_labels
            else None
        )

    @property
    def consents(self) -> tuple[ConsentRecord, ...]:
        return tuple(c.record for c in self._consents)

    def _patient_group(self, keys: frozenset[RefKey]) -> _PatientGroup | None:
        groups = self._groups
        found: _PatientGroup | None = None
        merged: list[_PatientGroup] = []
        for key in keys:
            group = groups.get(key)
            if group is None or group is found:
                continue
            if found is None:
                found = group
            else:
                merged.append(group)
        if merged and found is not None:  # the request names two patients' ways: rare, slow path
            merged.append(found)
            found = _PatientGroup(
                sorted({c for g in merged for c in g.consents}, key=lambda c: c.index)
            )
        return found

    def decide(self, request: DecisionRequest, *, trace: bool = False) -> ConsentDecision:
        """Answer ``request``. With ``trace``, notes also say why each other consent did not count."""
        q = _Request(request, self.directory, self.explicit_labels)
        notes: list[str] = []
        patient_keys = _keys_of(request.patient, self.directory)
        group = self._patient_group(patient_keys)
        candidates: Sequence[_Consent]
        if group is None:
            candidates = ()
        elif trace:
            candidates = group.consents
        else:
            candidates = group.lookup(q)
        if trace:
            others = len(self._consents) - (len(group.consents) if group else 0)
            if others:
                notes.append(f"{others} consent(s) of other patients ignored")
        if q.action_unknown or q.purpose_unknown:
            notes.extend(_unknown_code_notes(request))
        if q.foreign_labels:
            codes = ", ".join(sorted({code for _, code in q.foreign_labels}))
            notes.append(
                f"label {codes} of another code system than HL7's: counted as that label for "
                "deny provisions and the labels that need an explicit permit, never for permits"
            )
        categories = _code_keys(request.categories)
        at = q.at
        live: list[_Consent] = []
        # Consents of other categories than the request names: they only take away (a
        # restriction filed under another category still restricts), they never permit.
        restricting: list[_Consent] = []
        for c in candidates:
            if c.patient_keys.isdisjoint(patient_keys):  # same person only through another consent
                continue
            if not (c.active_start <= at < c.active_end or _active_at(c.active_more, at)):
                if trace:
                    notes.append(f"consent {c.id_text}: not counted, {_inactive_reason(c, at)}")
                continue
            if (c.start is not None and at < c.start) or (c.end is not None and at >= c.end):
                if trace:
                    notes.append(f"consent {c.id_text}: not counted, outside its period")
                continue
            if categories and categories.isdisjoint(c.categories):
                if c.privacy:
                    if trace:
                        notes.append(
                            f"consent {c.id_text}: other category, counts only where it denies"
                        )
                    restricting.append(c)
                elif trace:
                    notes.append(f"consent {c.id_text}: not counted, other category")
                continue
            live.append(c)
        if q.has_resource:
            decision = self._decide_resource(live, q, notes, trace, restricting)
        else:
            decision = self._decide_general(live, q, notes, trace, restricting)
        if group is not None and group.unresolved and q.incomparable:
            # Consents naming an actor that cannot be compared with the request's (the index may
            # have passed them over): say so, for those in force.
            notes.extend(_unresolved_notes(group, q, patient_keys))
        outcome, basis, obligations = decision
        why = None
        if outcome is DecisionOutcome.NO_CONSENT:
            consents = group.consents if group is not None else ()

            def why() -> tuple[str, ...]:
                return _no_consent_reasons(consents, q, patient_keys, categories)

        return ConsentDecision(outcome, self.combining, basis, obligations, tuple(notes), why)

    # -- one resource --

    def _decide_resource(
        self,
        live: list[_Consent],
        q: _Request,
        notes: list[str],
        trace: bool,
        restricting: Sequence[_Consent] = (),
    ) -> _Answer:
        restrictions: list[_Node] = []
        for c in restricting:
            root = c.root
            if _context_matches(root, q) and _data_matches(root, q):
                decider = _walk(root, q) if root.children else root
                if not decider.permit:
                    restrictions.append(decider)
        if restrictions:  # a deny of another category: whatever the combining rule
            notes.append(
                "a consent of another category than the request names denies: it counts "
                "where it denies"
            )
            return (
                DecisionOutcome.DENY,
                tuple(n.basis() for n in sorted(restrictions, key=_recency)),
                (),
            )
        denies: list[_Node] = []
        permits: list[_Node] = []
        silent: list[_Node] = []
        needed = q.explicit_needed
        for c in live:
            root = c.root
            if not (_context_matches(root, q) and _data_matches(root, q)):
                if trace:
                    notes.append(
                        f"consent {c.id_text}: not counted, base provision does not match "
                        f"({_first_mismatch(root, q)})"
                    )
                continue
            decider = _walk(root, q) if root.children else root
            if not decider.permit:
                denies.append(decider)
            elif needed and not needed <= decider.named_labels:
                silent.append(decider)
            else:
                permits.append(decider)
        if silent:
            labels = ", ".join(sorted(code for _, code in needed))
            notes.extend(
                f"consent {n.consent.id_text}, {_where(n)}: permits, but does not name {labels}; "
                "content with that label needs a provision that permits it explicitly"
                for n in sorted(silent, key=_recency)
            )
        combining = self.combining
        if combining is CombiningRule.MOST_RECENT_WINS:
            ranked = sorted(denies + permits, key=_recency)
            if ranked:
                winner = ranked[0]
                outcome = DecisionOutcome.PERMIT if winner.permit else DecisionOutcome.DENY
                return (outcome, (winner.basis(),), ())
        elif denies:
            return (
                DecisionOutcome.DENY,
                tuple(n.basis() for n in sorted(denies, key=_recency)),
                (),
            )
        elif permits:
            return (
                DecisionOutcome.PERMIT,
                tuple(n.basis() for n in sorted(permits, key=_recency)),
                (),
            )
        if silent:
            return (DecisionOutcome.DENY, (), ())
        return (DecisionOutcome.NO_CONSENT, (), ())

    # -- the patient's data in general --

    def _decide_general(
        self,
        live: list[_Consent],
        q: _Request,
        notes: list[str],
        trace: bool,
        restricting: Sequence[_Consent] = (),
    ) -> _Answer:
        restrictions = [
            a for a in (_general(c, q) for c in restricting) if a is not None and a.kind != "none"
        ]
        if restrictions:
            notes.append(
                f"{len(restrictions)} consent(s) of another category than the request names: "
                "they count only where they deny"
            )
        answers: list[_General] = []
        for c in live:
            answer = _general(c, q)
            if answer is None:
                if trace:
                    notes.append(
                        f"consent {c.id_text}: not counted, base provision does not match "
                        f"({_first_mismatch(c.root, q)})"
                    )
                continue
            if answer.kind != "none":
                answers.append(answer)
        combining = self.combining
        if combining is CombiningRule.MOST_RECENT_WINS and answers:
            # The newest consents decide. Several of the same date combine deny-overrides: for a
            # resource, a tie goes to the deny, and a consent that permits some content may deny
            # the very content another of that date permits; picking one of them by its kind and
            # identifier released what the other denies.
            newest = max(a.consent.date for a in answers)
            answers = [a for a in answers if a.consent.date == newest]
        if len(answers) > 1:
            answers.sort(key=_general_recency)
        for answer in answers:
            if answer.dropped:
                notes.append(
                    f"consent {answer.consent.id_text}: {answer.dropped} narrowly scoped permit(s) "
                    "cannot be expressed without a resource; ask about the resource itself"
                )
        deny_all = [
            a.base.basis() for a in (*answers, *restrictions) if a.kind == "deny-all" and a.base
        ]
        if deny_all:
            return (DecisionOutcome.DENY, tuple(deny_all), ())
        permit_all = [a for a in answers if a.kind == "permit-all"]
        permit_only = [a for a in answers if a.kind == "permit-only"]
        if not permit_all and not permit_only:
            if answers:  # consents that deny some data and permit none
                return (
                    DecisionOutcome.DENY,
                    tuple(r.decider.basis() for a in answers for r in a.redact),
                    (),
                )
            return (DecisionOutcome.NO_CONSENT, (), ())
        obligations: list[RedactObligation] = []
        if permit_all:
            basis = tuple(a.base.basis() for a in permit_all if a.base is not None)
        else:
            keep = _one_period([r for a in permit_only for r in a.permit_only], notes)
            basis = tuple(r.decider.basis() for r in keep)
            if len(permit_only) == 1 or any(a.base is None for a in permit_only):
                # (When every one denies all but its exceptions, their own obligations below
                # say it all.)
                obligations.append(_obligation(RedactMode.ALL_EXCEPT, keep))
        # A consent that denies everything but what it permits (an unscoped deny with permitted
        # exceptions) keeps only that content whatever the others permit: deny overrides. Each
        # such consent gets its own obligation (obligations add up: content must pass them all),
        # unless it alone made the one above.
        if permit_all or len(permit_only) > 1:
            obligations.extend(
                _obligation(RedactMode.ALL_EXCEPT, _one_period(a.permit_only, notes))
                for a in permit_only
                if a.base is not None
            )
        explicit: set[_CodeKey] = set()
        as_written: set[_CodeKey] = set()
        for answer in answers:
            explicit |= answer.explicit
            as_written |= answer.as_written
            obligations.extend(_obligation(RedactMode.MATCHING, [r]) for r in answer.redact)
        for answer in restrictions:  # what they deny, never what they permit
            obligations.extend(_obligation(RedactMode.MATCHING, [r]) for r in answer.redact)
            if answer.kind == "permit-only" and answer.base is not None:
                keep = _one_period(answer.permit_only, notes)
                obligations.append(_obligation(RedactMode.ALL_EXCEPT, keep))
        if as_written:
            # Released after all where an obligation keeps only content carrying that label as
            # written: content labelled so under another system alone does not get through.
            explicit |= as_written & _kept_only(obligations)
        redacted = {_key(c) for o in obligations if o.mode is RedactMode.MATCHING for c in o.labels}
        only_as_written = sorted(as_written - explicit - redacted)
        if only_as_written:
            notes.append(
                f"{', '.join(c for _, c in only_as_written)}: permitted explicitly only as labelled "
                "under HL7's code system, which a redaction cannot tell from the same code under "
                "another system: still redacted; ask about the resource itself"
            )
        if explicit or redacted:
            missing = sorted(self.explicit_labels - explicit - redacted)
            if missing:
                obligation, note = _explicit_label_obligation(missing)
                obligations.append(obligation)
                notes.append(note)
        elif self._all_explicit_redacted is not None:
            obligations.append(self._all_explicit_redacted[0])
            notes.append(self._all_explicit_redacted[1])
        if q.content_classes:
            removing = _removing_everything(obligations, q)
            if removing is not None:
                # A permit whose redactions leave nothing of what was asked for is a deny.
                asked = ", ".join(sorted({code for _, _, code in q.content_classes}))
                notes.append(f"the redactions would remove all content asked for ({asked})")
                return (
                    DecisionOutcome.DENY,
                    tuple(dict.fromkeys(b for o in removing for b in o.basis)),
                    (),
                )
        return (DecisionOutcome.PERMIT, basis, tuple(obligations))


def _one_period(keep: list[_Scoped], notes: list[str]) -> list[_Scoped]:
    """``keep`` as rules for one ``redact-all-except`` obligation. One obligation cannot keep
    content from two separate data periods (a hull would keep what lies between): the first
    period's content only is kept, and a note says so."""
    periods = {r.scope.provision.data_period for r in keep} - {None}
    if len(periods) <= 1:
        return keep
    first = next(r for r in keep if r.scope.provision.data_period is not None)
    left_out = [
        r
        for r in keep
        if r.scope.provision.data_period not in (None, first.scope.provision.data_period)
    ]
    notes.append(
        f"{len(left_out)} permit(s) by another data period left out: one answer "
        "keeps content from one period; ask about the resource itself"
    )
    return [r for r in keep if r not in left_out]


def _kept_only(obligations: list[RedactObligation]) -> set[_CodeKey]:
    """The labels ``L`` such that one of ``obligations`` keeps only content carrying ``L`` as
    written (a ``redact-all-except`` listing ``L`` alone, in whatever spellings, and nothing else)."""
    kept: set[_CodeKey] = set()
    for o in obligations:
        if o.mode is RedactMode.ALL_EXCEPT and not (
            o.codes or o.classes or o.data_period or o.data
        ):
            keys = {_key(c) for c in o.labels}
            if len(keys) == 1:
                kept |= keys
    return kept


def _removing_everything(
    obligations: list[RedactObligation], q: _Request
) -> list[RedactObligation] | None:
    """The obligations that together remove every content class the request names, or ``None``
    when some of that content may be released. A class is removed whole by a ``redact-matching``
    obligation listing it, or by a ``redact-all-except`` one that keeps only other classes."""
    removing: list[RedactObligation] = []
    for asked in sorted(q.content_classes, key=_asked_order):
        for o in obligations:
            listed = any(_class_id(c) == asked for c in o.classes)
            if o.mode is RedactMode.MATCHING:
                removed = listed
            else:
                only_classes = not (o.labels or o.codes or o.data_period or o.data)
                removed = only_classes and not listed
            if removed:
                if o not in removing:
                    removing.append(o)
                break
        else:
            return None
    return removing


_KIND_ORDER = {_ClassKind.TYPE: 0, _ClassKind.PROFILE: 1, _ClassKind.DOCUMENT: 2}


def _asked_order(asked: tuple[_ClassKind, str, str]) -> tuple[int, str, str]:
    """Resource types, then profiles, then document types; each by code: the basis of a deny
    for redacting everything asked lists the obligations in this order, whatever the request's."""
    kind, system, code = asked
    return (_KIND_ORDER[kind], code, system)


def _inactive_reason(c: _Consent, at: float) -> str:
    """Why a consent was not active at ``at``, from its history when it has one."""
    record = c.record
    if record.status is ConsentStatus.ENTERED_IN_ERROR:
        return "entered in error"
    before = [h for h in record.history if h.at.timestamp() <= at]
    if before:
        last = before[-1]
        if last.status is ConsentStatus.REVOKED:
            return f"revoked on {last.at.isoformat()}"
        return f"{last.status.value} since {last.at.isoformat()}"
    if record.history:
        return f"not yet active (first recorded {record.history[0].at.isoformat()})"
    return f"not active (status {record.status.value})"


def _no_consent_reasons(
    consents: Sequence[_Consent],
    q: _Request,
    patient_keys: frozenset[RefKey],
    categories: frozenset[_CodeKey],
) -> tuple[str, ...]:
    """Each consent of the patient and why it did not decide (for a ``no-consent`` answer)."""
    reasons: list[str] = []
    at = q.at
    for c in consents:
        if c.patient_keys.isdisjoint(patient_keys):
            continue
        if not (c.active_start <= at < c.active_end or _active_at(c.active_more, at)):
            why = _inactive_reason(c, at)
        elif (c.start is not None and at < c.start) or (c.end is not None and at >= c.end):
            why = "outside its period"
        elif categories and categories.isdisjoint(c.categories):
            why = "other category"
        elif not _context_matches(c.root, q) or (q.has_resource and not _data_matches(c.root, q)):
            why = f"does not apply to this request ({_first_mismatch(c.root, q)})"
        else:
            why = "applies, but decides nothing for this request"
        reasons.append(f"consent {c.id_text}: {why}")
    return tuple(reasons) or ("no consent of this patient was given to the engine",)


def _explicit_label_obligation(labels: list[_CodeKey]) -> tuple[RedactObligation, str]:
    obligation = RedactObligation(
        RedactMode.MATCHING, labels=tuple(Coding(system=s, code=c) for s, c in labels)
    )
    note = (
        f"{', '.join(c for _, c in labels)}: never released without a provision that "
        "permits the label explicitly"
    )
    return obligation, note


def _obligation(mode: RedactMode, rules: list[_Scoped]) -> RedactObligation:
    if len(rules) == 1:
        rule = rules[0]
        if mode is RedactMode.MATCHING and rule.decider is rule.scope:
            return rule.scope.own_redact
        return RedactObligation(mode, *rule.scope.filter_parts, (rule.decider.basis_value,))
    labels: dict[tuple[str, str], Coding] = {}
    codes: dict[tuple[str, str], Coding] = {}
    classes: dict[tuple[str, str], Coding] = {}
    data: list[DataRef] = []
    period: Period | None = None
    for rule in rules:
        p = rule.scope.provision
        labels.update(((c.system, c.code), c) for c in p.security_labels)
        codes.update(((c.system, c.code), c) for c in p.codes)
        classes.update(((c.system, c.code), c) for c in p.classes)
        data.extend(d for d in p.data if d not in data)
        if p.data_period is not None:
            period = p.data_period  # at most one distinct period gets here (see _decide_general)
    return RedactObligation(
        mode=mode,
        labels=tuple(labels.values()),
        codes=tuple(codes.values()),
        classes=tuple(classes.values()),
        data_period=period,
        data=tuple(data),
        basis=tuple(r.decider.basis() for r in rules),
    )


def _where(n: _Node) -> str:
    return "base decision" if n.path == "root" else f"provision {n.path}"


def _recency(n: _Node) -> tuple[float, int, str]:
    """Most recent first; on equal dates deny before permit; then the consent identifier."""
    return (-n.consent.date, 1 if n.permit else 0, n.consent.id_text)


def _general_recency(a: _General) -> tuple[float, int, str]:
    permits = a.kind in ("permit-all", "permit-only")
    return (-a.consent.date, 1 if permits else 0, a.consent.id_text)


def _first_mismatch(n: _Node, q: _Request) -> str:
    if (n.start is not None and q.at < n.start) or (n.end is not None and q.at >= n.end):
        return "period"
    if n.actions is not None and q.action not in n.actions:
        return "action"
    if n.purposes is not None and n.purposes.isdisjoint(q.purposes):
        return "purpose"
    if n.actors is not None and not _context_matches(n, q):
        return "actor"
    return "data: label, class, code, data period or data reference"


def _describe(ref: Ref) -> str:
    """An actor as a note may name it: its literal reference, or only the system of its identifier
    (notes may be logged; a reference names a party, never a patient's identifier or name)."""
    if ref.reference is not None:
        return ref.reference
    system = ref.identifier.system if ref.identifier is not None else "?"
    return f"named by identifier (system {system})"


def _unknown_code_notes(request: DecisionRequest) -> list[str]:
    """Say which action or purpose of the request is missing or unknown (shortened: it is input)."""
    notes: list[str] = []
    action = request.action
    if action is None:
        notes.append("the request names no action: it matches deny provisions only")
    elif _key(action) not in KNOWN_ACTIONS:
        notes.append(
            f"action {action.code[:40]} is not a consentaction code: it matches deny provisions only"
        )
    if not request.purposes:
        notes.append("the request names no purpose: it matches deny provisions only")
    notes.extend(
        f"purpose {p.code[:40]} is not a v3 PurposeOfUse code: it matches deny provisions only"
        for p in request.purposes
        if _key(p) not in KNOWN_PURPOSES
    )
    return notes


def _unresolved_notes(
    group: _PatientGroup, q: _Request, patient_keys: frozenset[RefKey]
) -> list[str]:
    """Say which actor could not be compared with the request's: named by reference in one place
    and by identifier in the other, and the directory does not link them. Such an actor is a
    missing fact: it matches deny provisions and never permit provisions. Only consents of the
    patient in force at the request's time are named."""
    found: dict[int, tuple[_Consent, str]] = {}
    for role, request_facets in q.incomparable.items():
        for kind, request_type in request_facets:
            other = "id" if kind == "ref" else "ref"
            for order, c, actor in group.unresolved.get((role, other), ()):
                actor_type = actor.facet[1]
                if request_type is None or actor_type is None or request_type == actor_type:
                    found[order] = (c, actor.note)
    at = q.at
    in_force: dict[_Consent, bool] = {}
    notes: list[str] = []
    for order in sorted(found):
        c, note = found[order]
        counted = in_force.get(c)
        if counted is None:
            counted = in_force[c] = (
                (c.active_start <= at < c.active_end or _active_at(c.active_more, at))
                and (c.start is None or c.start <= at)
                and (c.end is None or at < c.end)
                and not c.patient_keys.isdisjoint(patient_keys)
            )
        if counted:
            notes.append(note)
    return notes


def decide(
    consents: Iterable[ConsentRecord],
    request: DecisionRequest,
    *,
    directory: ActorDirectory | None = None,
    combining: CombiningRule = CombiningRule.DENY_OVERRIDES,
    trace: bool = False,
) -> ConsentDecision:
    """One-off decision (compiles the consents each time; keep a :class:`ConsentEngine` for many)."""
    engine = ConsentEngine(consents, directory=directory, combining=combining)
    return engine.decide(request, trace=trace)
