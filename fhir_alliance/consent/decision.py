"""What the consent engine is asked (:class:`DecisionRequest`) and what it answers (:class:`ConsentDecision`).

Plain frozen values: the engine compiles them into fast matchers; the CLI, the CDS Hooks adapter and
the service build them from their own input forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import DataRef, Decision, Period
from fhir_alliance.terminology import (
    CONSENT_ACTION,
    CONSENT_ACTION_CODES,
    PURPOSE_OF_USE_CODES,
    RESOURCE_LABEL_CODES,
    V3_ACT_REASON,
    V3_PARTICIPATION_TYPE,
)

__all__ = [
    "ACTION_MESSAGE",
    "DEFAULT_ACTOR_ROLE",
    "KNOWN_ACTIONS",
    "KNOWN_LABELS",
    "KNOWN_PURPOSES",
    "LABEL_MESSAGE",
    "LABEL_SYSTEMS",
    "PURPOSE_MESSAGE",
    "CombiningRule",
    "ConsentDecision",
    "DecisionBasis",
    "DecisionOutcome",
    "DecisionRequest",
    "RedactMode",
    "RedactObligation",
    "RequestActor",
    "RequestedResource",
]

#: The role a request actor plays when the request does not say: information recipient (IRCP),
#: the role IHE PCF gives to whoever a consent permits or denies.
DEFAULT_ACTOR_ROLE = Coding(system=V3_PARTICIPATION_TYPE, code="IRCP")

#: The actions a request may name: the consentaction codes (what consents can restrict).
KNOWN_ACTIONS: frozenset[tuple[str, str]] = frozenset(
    (CONSENT_ACTION, code) for code in CONSENT_ACTION_CODES
)
#: The purposes a request may name: v3-ActReason codes of the PurposeOfUse value set.
KNOWN_PURPOSES: frozenset[tuple[str, str]] = frozenset(
    (V3_ACT_REASON, code) for code in PURPOSE_OF_USE_CODES
)
#: The messages of the issues an unknown action or purpose gives (they never repeat the value).
ACTION_MESSAGE = "not a consentaction code: expected one of " + ", ".join(
    sorted(CONSENT_ACTION_CODES)
)
PURPOSE_MESSAGE = (
    "not a v3 PurposeOfUse code (http://terminology.hl7.org/CodeSystem/v3-ActReason), "
    "such as TREAT, ETREAT, HPAYMT, HOPERAT or HRESCH"
)
#: The HL7 code systems whose security labels the library knows (canonical URIs); a resource's
#: label of one of these must be one of :data:`KNOWN_LABELS` (labels of other systems pass as
#: they are; one whose code is a code of these systems counts as that label for deny provisions).
LABEL_SYSTEMS: frozenset[str] = frozenset(RESOURCE_LABEL_CODES)
#: The security labels a request's resource may carry: ``(system, code)``, case-sensitive.
KNOWN_LABELS: frozenset[tuple[str, str]] = frozenset(
    (system, code) for system, codes in RESOURCE_LABEL_CODES.items() for code in codes
)
#: The message of the issue an unknown label of one of :data:`LABEL_SYSTEMS` gives.
LABEL_MESSAGE = (
    "not a security label code the library knows (exact case, no spaces): v3-Confidentiality "
    "U, L, M, N, R, V; v3-ActCode sensitivity codes such as PSY, PSYTHPN, SUD, HIV; "
    "v3-ObservationValue AIAST; v3-ActReason PurposeOfUse codes such as HTEST"
)


class DecisionOutcome(StrEnum):
    """The answer, spelled as its value everywhere (text, JSON, docs): ``permit``, ``deny``,
    ``no-consent``. Only the CDS Hooks card uses LEAP's codes (``CONSENT_PERMIT`` …)."""

    PERMIT = "permit"
    DENY = "deny"
    #: No consent of this patient applies to the request (the caller's default policy decides;
    #: the sync service's gate holds the item).
    NO_CONSENT = "no-consent"


class CombiningRule(StrEnum):
    """How the answers of several applicable consents combine into one."""

    #: Any applicable consent that denies wins; else any that permits; else no consent.
    DENY_OVERRIDES = "deny-overrides"
    #: The applicable consent with the latest ``date`` wins (LEAP's rule). Ties: deny before permit,
    #: then the lower consent identifier (``system|value``, compared as text). Never search order.
    MOST_RECENT_WINS = "most-recent-wins"


class RedactMode(StrEnum):
    #: Remove content matching the filter; release the rest (LEAP ``codes``).
    MATCHING = "redact-matching"
    #: Release only content matching the filter; remove everything else (LEAP ``exceptAnyOfCodes``).
    ALL_EXCEPT = "redact-all-except"


@dataclass(frozen=True, slots=True)
class RequestActor:
    """Who asks, named by literal reference, by identifier, or both; ``role`` defaults to IRCP."""

    reference: Ref
    role: Coding = DEFAULT_ACTOR_ROLE


@dataclass(frozen=True, slots=True)
class RequestedResource:
    """What is asked for. Leave the request's ``resource`` empty to ask about the patient's data in
    general (then data-scoped provisions become :class:`RedactObligation` entries).

    ``codes`` say what it is: ``code.coding``, or for a document (DocumentReference, Composition)
    the codings of its ``type`` and ``category``; empty means unknown (a deny scoped by code or
    document type applies, a permit so scoped does not).

    ``refers_to`` are the references the resource holds (its subject's encounter, the
    QuestionnaireResponse it was derived from, …); ``referenced_by`` are resources known to point at it;
    ``authors`` who wrote it. They serve ``provision.data`` meanings related / dependents / authoredby.

    ``aliases`` are the other ways the same resource is known, beside ``reference`` (which they
    need): ``Type/id`` paired with each further identifier, as the gate gives them. A data
    reference naming the resource any of these ways matches it (instance, related, dependents),
    for permits and denies alike. Named both ways (by reference and by identifier, in one
    :class:`Ref` or across several), the resource is taken to be known completely: a data
    reference naming none of its ways names another resource.
    """

    type: str | None = None
    reference: Ref | None = None
    profiles: tuple[str, ...] = ()
    codes: tuple[Coding, ...] = ()
    labels: tuple[Coding, ...] = ()
    date: datetime | None = None
    refers_to: tuple[Ref, ...] = ()
    referenced_by: tuple[Ref, ...] = ()
    authors: tuple[Ref, ...] = ()
    aliases: tuple[Ref, ...] = ()


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One question to the engine: may these actors do ``action`` for ``purposes`` with this patient's
    data (or this one ``resource``) at instant ``at``?

    ``patient`` lists every way the one patient is known (reference, identifiers); a consent counts
    when its patient matches any of them. ``categories``, when given, narrows the consents to those
    with a matching category (LEAP's ``category``).
    """

    patient: tuple[Ref, ...]
    actors: tuple[RequestActor, ...]
    at: datetime
    purposes: tuple[Coding, ...] = ()
    action: Coding | None = None
    resource: RequestedResource | None = None
    categories: tuple[Coding, ...] = ()
    #: Without a ``resource``: the content classes asked about (resource types, profiles or
    #: document types, as in ``provision.class``; LEAP's ``class``). Provisions scoped to other
    #: classes are then left out.
    content_classes: tuple[Coding, ...] = ()

    def __post_init__(self) -> None:
        issues: list[Issue] = []
        if not self.patient:
            issues.append(Issue(path="patient", message="name the patient"))
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            issues.append(Issue(path="at", message="the request time needs a UTC offset"))
        resource = self.resource
        if resource is not None and resource.date is not None and resource.date.tzinfo is None:
            issues.append(Issue(path="resource.date", message="the date needs a UTC offset"))
        if resource is not None and resource.aliases and resource.reference is None:
            issues.append(
                Issue(path="resource.aliases", message="aliases need the resource's reference")
            )
        if issues:
            paths = ", ".join(i.path for i in issues)
            raise InputError(f"invalid decision request at {paths}", issues=issues)


@dataclass(frozen=True, slots=True)
class DecisionBasis:
    """Which consent and which provision decided. ``path`` is ``root`` for the base decision
    (R4 root ``provision``, R5 ``Consent.decision``), else dotted 0-based indices of nested provisions:
    ``0.1`` is ``provision[0].provision[1]`` below the root."""

    consent: Identifier
    path: str
    decision: Decision
    consent_date: datetime

    def __str__(self) -> str:
        where = "base decision" if self.path == "root" else f"provision {self.path}"
        return f"consent {self.consent}, {where} ({self.decision.value})"


@dataclass(frozen=True, slots=True)
class RedactObligation:
    """Content the recipient must remove before use.

    In :attr:`RedactMode.MATCHING` mode content matches when it carries *any* of ``labels`` (a label
    of a code system other than the HL7 label systems counts as its code in each of them that has
    it: :func:`~fhir_alliance.consent.engine.deny_label_keys`), has any of
    ``codes``, is of any of ``classes``, was dated inside ``data_period`` or is one of ``data``
    (the filter of the provision, widened never narrowed). In :attr:`RedactMode.ALL_EXCEPT` mode only
    content matching the filter may be kept.

    A class of ``http://hl7.org/fhir/resource-types`` is a resource type; one whose code is a
    canonical URL is a profile (``meta.profile``); any other is a document type, which content is
    of when it has that code (a document's ``type`` or ``category``, others' ``code``). Content
    whose codes are unknown is redacted by a ``redact-matching`` filter on codes or document types
    and never kept by a ``redact-all-except`` one.
    """

    mode: RedactMode
    labels: tuple[Coding, ...] = ()
    codes: tuple[Coding, ...] = ()
    classes: tuple[Coding, ...] = ()
    data_period: Period | None = None
    data: tuple[DataRef, ...] = ()
    basis: tuple[DecisionBasis, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """The engine's answer: the outcome, obligations that come with it, and why.

    ``basis`` lists the consents (and their provisions) that decided, most recent first; ``notes``
    say what else shaped the answer (an actor that could not be resolved, a label that needs an
    explicit permit, with ``trace`` each consent that did not count and why). Notes never hold patient
    identifiers, names or free text. A ``no-consent`` answer says why through
    :meth:`no_consent_reasons` (worked out only when asked: ``explain()`` and the JSON form do).
    """

    outcome: DecisionOutcome
    combining: CombiningRule
    basis: tuple[DecisionBasis, ...] = ()
    obligations: tuple[RedactObligation, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: Works out :meth:`no_consent_reasons` (set by the engine on ``no-consent`` answers).
    why_no_consent: Callable[[], tuple[str, ...]] | None = field(
        default=None, compare=False, repr=False
    )

    def no_consent_reasons(self) -> tuple[str, ...]:
        """Why no consent applied: each consent of the patient and why it did not count (e.g.
        ``revoked on …``), or that the engine holds none for this patient. Empty unless the
        outcome is ``no-consent``."""
        if self.outcome is not DecisionOutcome.NO_CONSENT or self.why_no_consent is None:
            return ()
        return self.why_no_consent()

    def explain(self) -> str:
        """A few human-readable lines: outcome, deciding consent and provision, obligations, notes,
        and for a ``no-consent`` answer the reasons."""
        lines = [f"decision: {self.outcome.value} ({self.combining.value})"]
        lines.extend(f"  decided by {b}" for b in self.basis)
        for obligation in self.obligations:
            what = ", ".join(
                [f"{c.system}|{c.code}" for c in (*obligation.labels, *obligation.codes)]
                + [f"class {c.code}" for c in obligation.classes]
                + (
                    [f"data dated in {_period_text(obligation.data_period)}"]
                    if obligation.data_period
                    else []
                )
                + [
                    f"{d.meaning.value} {d.reference.reference or d.reference.identifier}"
                    for d in obligation.data
                ]
            )
            verb = "redact" if obligation.mode is RedactMode.MATCHING else "redact all except"
            lines.append(f"  obligation: {verb} {what}")
            lines.extend(f"    from {b}" for b in obligation.basis)
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.extend(f"  reason: {r}" for r in self.no_consent_reasons())
        return "\n".join(lines)


def _period_text(period: Period | None) -> str:
    if period is None:
        return "any time"
    start = period.start.isoformat() if period.start else "…"
    end = period.end.isoformat() if period.end else "…"
    return f"[{start}, {end})"
