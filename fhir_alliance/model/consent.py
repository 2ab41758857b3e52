"""Consent records: what a client allowed, limited, declined or withdrew, independent of FHIR version.

A :class:`ConsentRecord` holds a base :attr:`~ConsentRecord.decision` and a tree of
:class:`Provision` exceptions (each nested level negates or refines the level above, to any depth),
as FHIR Consent does. The status lifecycle is append-only: revoking adds a :class:`StatusChange`
to :attr:`~ConsentRecord.history` and never erases the earlier states.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier, Ref

__all__ = [
    "REVOCABLE_STATUSES",
    "Attachment",
    "ConsentKind",
    "ConsentRecord",
    "ConsentRevocation",
    "ConsentStatus",
    "DataMeaning",
    "DataRef",
    "Decision",
    "Period",
    "PolicyBasis",
    "Provision",
    "ProvisionActor",
    "StatusChange",
    "Verification",
    "VerificationMethod",
    "apply_revocation",
]


class ConsentKind(StrEnum):
    """What the consent is about; decides FHIR scope/category and which profile it claims."""

    #: Sharing alliance data with the EHR, the organisation or other providers, for stated purposes.
    SHARING = "sharing"
    #: An intervention proposed and accepted (decision permit) or declined (decision deny).
    TREATMENT = "treatment"
    #: Session recording and AI-drafted notes: collect and use, with the AI tool named as an actor.
    RECORDING = "recording"
    #: Who must not receive the data (base decision deny, or permit with deny exceptions).
    RESTRICTION = "restriction"


class ConsentStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    ENTERED_IN_ERROR = "entered-in-error"


class Decision(StrEnum):
    PERMIT = "permit"
    DENY = "deny"


class DataMeaning(StrEnum):
    INSTANCE = "instance"
    RELATED = "related"
    DEPENDENTS = "dependents"
    AUTHOREDBY = "authoredby"


class VerificationMethod(StrEnum):
    VERBAL = "verbal"
    WRITTEN = "written"
    ELECTRONIC = "electronic"


@dataclass(frozen=True, slots=True)
class Period:
    """A closed-open interval of instants; either end may be open (``None``)."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, instant: datetime) -> bool:
        return (self.start is None or self.start <= instant) and (
            self.end is None or instant < self.end
        )


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One step of the lifecycle. ``by`` is who made the change (client, clinician, system)."""

    status: ConsentStatus
    at: datetime
    by: Ref | None = None
    reason: Coding | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """How and when the consent was obtained, and who witnessed it."""

    method: VerificationMethod
    verified_at: datetime
    witness: Ref | None = None
    verified_with: Ref | None = None  # the person who confirmed (client or representative)


@dataclass(frozen=True, slots=True)
class PolicyBasis:
    """The policy the consent rests on: a URI (e.g. a clinic's policy) and/or a code (42CFRPart2)."""

    uri: str | None = None
    code: Coding | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class ProvisionActor:
    """Who a provision is about, in which role (v3-ParticipationType, e.g. IRCP = recipient)."""

    role: Coding
    reference: Ref


@dataclass(frozen=True, slots=True)
class DataRef:
    """A specific resource a provision is about, and how far it reaches (``meaning``)."""

    meaning: DataMeaning
    reference: Ref


@dataclass(frozen=True, slots=True)
class Attachment:
    """The source document of a consent carried inline or by URL (FHIR ``sourceAttachment``):
    ``data`` is base64 as in FHIR. Size and hash are derived from the content and not kept."""

    content_type: str | None = None
    url: str | None = None
    title: str | None = None
    data: str | None = None
    creation: datetime | None = None


@dataclass(frozen=True, slots=True)
class Provision:
    """One rule. The root provision's ``type`` is the consent's base decision; every nested provision
    must have a ``type`` and is an exception to its parent. Empty tuples mean "no restriction on that
    dimension". ``classes`` are resource types, profiles or document types (R4 ``class``, R5
    ``resourceType`` and ``documentType``); ``codes`` are content codes (e.g. an instrument code)."""

    type: Decision | None = None
    period: Period | None = None
    actors: tuple[ProvisionActor, ...] = ()
    actions: tuple[Coding, ...] = ()
    security_labels: tuple[Coding, ...] = ()
    purposes: tuple[Coding, ...] = ()
    classes: tuple[Coding, ...] = ()
    codes: tuple[Coding, ...] = ()
    data_period: Period | None = None
    data: tuple[DataRef, ...] = ()
    provisions: tuple[Provision, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """A client's consent, permission or refusal, with its full lifecycle history.

    ``status`` is the current state and always equals ``history[-1].status`` when history is given.
    ``decision`` is the base decision (R4 root ``provision.type``, R5 ``Consent.decision``);
    ``provision`` holds the root's conditions and its nested exceptions (its ``type`` is ``decision``).
    ``intervention`` is the proposed intervention of a treatment permission.
    """

    id: Identifier
    kind: ConsentKind
    patient: Ref
    status: ConsentStatus
    decision: Decision
    date: datetime
    grantor: Ref | None = None
    grantees: tuple[Ref, ...] = ()
    manager: Ref | None = None  # the organisation that holds the consent (R4 organization)
    period: Period | None = None
    history: tuple[StatusChange, ...] = ()
    verification: tuple[Verification, ...] = ()
    source: Ref | None = None  # the signed form or recording of the consent (DocumentReference, …)
    policy_basis: tuple[PolicyBasis, ...] = ()
    categories: tuple[Coding, ...] = ()
    intervention: Coding | None = None
    provision: Provision = field(default_factory=Provision)
    # Added for the FHIR mappings (R5 ``controller``, R4/R5 ``sourceAttachment``):
    controller: Ref | None = None  # the party legally responsible for the data (R5 controller)
    source_attachment: Attachment | None = None  # the signed form itself, when not a reference


#: States a consent may be revoked from (a draft can be withdrawn before it is in force).
REVOCABLE_STATUSES = frozenset({ConsentStatus.DRAFT, ConsentStatus.ACTIVE})


@dataclass(frozen=True, slots=True)
class ConsentRevocation:
    """The client (or their representative) withdraws consent ``consent`` at ``at``.

    Applying it (:func:`apply_revocation`) appends a :class:`StatusChange`; nothing is erased.
    """

    consent: Identifier
    at: datetime
    by: Ref | None = None
    reason: Coding | None = None


def apply_revocation(record: ConsentRecord, revocation: ConsentRevocation) -> ConsentRecord:
    """``record`` with ``revocation`` applied: status ``revoked`` and one more history entry.

    An ``active`` consent without a history has been active since it was given (its ``date``): that
    span is recorded first (``active`` at ``date``), so the consent still counts as in force from
    its ``date`` up to the revocation, and not as never active. Before its ``date`` it no longer
    counts (fail-closed: nothing says it was in force before it was given).

    Raises :class:`InputError` (paths ``consent``, ``at``) if the revocation is for another consent,
    the consent is not in a revocable state, or it predates the last recorded change (or, without
    a history, the consent's ``date``).
    """
    if revocation.consent != record.id:
        raise InputError(
            "revocation names another consent",
            issues=[Issue(path="consent", message="revocation names another consent")],
        )
    if record.status not in REVOCABLE_STATUSES:
        message = f"a consent in state {record.status.value} cannot be revoked"
        raise InputError(message, issues=[Issue(path="consent", message=message)])
    last = record.history[-1].at if record.history else record.date
    if revocation.at < last:
        message = "revocation predates the consent's last status change"
        raise InputError(message, issues=[Issue(path="at", message=message)])
    history = record.history
    if not history and record.status is ConsentStatus.ACTIVE:
        history = (StatusChange(status=ConsentStatus.ACTIVE, at=record.date),)
    change = StatusChange(
        status=ConsentStatus.REVOKED, at=revocation.at, by=revocation.by, reason=revocation.reason
    )
    return replace(record, status=ConsentStatus.REVOKED, history=(*history, change))
