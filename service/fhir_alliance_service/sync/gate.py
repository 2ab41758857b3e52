"""The consent gate of the sync: map one claimed record to FHIR and decide whether it may leave.

Every resource made from an alliance record is put to the patient's consent engine (disclose to
the clinic's EHR, ``settings.recipients``, for ``settings.purpose``, now). The record goes only if
**every** resource is PERMIT; otherwise it is held with a reason in plain words and a machine code
(:class:`HoldReason`). A patient with a stored consent that cannot be read is held, never treated as
"no consent".

Consent records themselves are not put to the engine: they are the patient's own instructions
about their data, and the EHR needs every one of them, a revoked or denying one most of all (a
revocation the EHR never hears of would let it keep sharing). They are pushed as Consent resources
when ``settings.push_consents``, and held ("pushing consent records is turned off") otherwise.

Session notes: a note that no person has signed (``signed_at`` unset: a draft, or a note marked
entered-in-error without a signature) never leaves as it is unless ``settings.push_draft_notes``.
A draft is held until the therapist signs it. An unsigned entered-in-error note is held when the
server holds nothing of it to correct (no earlier version was sent, or the one it holds is already
entered-in-error or was retracted); otherwise what goes is the version the server last got from us,
marked entered-in-error: the EHR learns the note is void, and the unsigned text never leaves. An
AI-drafted note is held once the recording/AI-notes consent that permitted it is revoked.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fhir_alliance.consent import ConsentDecision, DecisionOutcome
from fhir_alliance.consent.decision import RequestedResource
from fhir_alliance.consent.engine import deny_label_keys
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.errors import FhirAllianceError
from fhir_alliance.mapping.note import ai_disclosure_permitted
from fhir_alliance.mapping.registry import mapper_for_kind
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.notes import NoteStatus, SessionNote
from fhir_alliance.terminology import V3_ACT_REASON
from fhir_alliance_service.config import Settings
from fhir_alliance_service.metrics import DECISIONS, HELD
from fhir_alliance_service.store.interface import (
    RETRACTION_DELETED,
    RETRACTION_ENTERED_IN_ERROR,
    OutboxItem,
    Store,
    StoredRecord,
)
from fhir_alliance_service.usecases.consents import engine_for_patient

__all__ = [
    "FAMILY_CONSENT",
    "GateResult",
    "HoldReason",
    "gate_item",
    "copy_content",
    "ref_for_key",
    "sendable_forms",
    "server_version",
]

FAMILY_CONSENT = "consent"


class HoldReason(enum.Enum):
    """Why an item was held: a machine code (audit, metrics) and plain words (API, console)."""

    NO_CONSENT = ("no-consent", "no consent to share with the clinic's EHR")
    DENIED = ("denied", "a consent denies sharing this with the clinic's EHR")
    NEEDS_EXPLICIT_PERMIT = (
        "needs-explicit-permit",
        "psychotherapy-note (PSYTHPN) or very restricted (V) content needs a permit naming it",
    )
    CONSENT_UNREADABLE = ("consent-unreadable", "a consent for this patient could not be read")
    CONSENT_PUSH_OFF = ("consent-push-off", "pushing consent records is turned off")
    DRAFT_NOTE = ("draft-note", "a draft note is not sent before the therapist signs it")
    UNSIGNED_NOTE = (
        "unsigned-note",
        "a note nobody signed is not sent, and the server holds nothing of it to correct",
    )
    AI_NOTES_NOT_PERMITTED = (
        "ai-notes-not-permitted",
        "the client's recording/AI-notes consent no longer permits this AI-drafted note",
    )

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def words(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class GateResult:
    """What the gate made of one item: the FHIR resources, and a hold reason unless all may go."""

    item: OutboxItem
    resources: tuple[dict[str, Any], ...]
    hold: HoldReason | None = None
    decisions: tuple[ConsentDecision, ...] = field(default=(), compare=False)
    #: ``store.patient_consents_stamp`` of the consents the decision read (None: it read none,
    #: e.g. a consent record or a draft note): a later stamp that differs makes it stale.
    consents_stamp: str | None = None

    @property
    def permitted(self) -> bool:
        return self.hold is None


def ref_for_key(key: str, *, resource_type: str | None = None) -> Ref:
    """A key as the service stores it (``Type/id`` or ``system|value``) as a domain :class:`Ref`."""
    if "|" in key:
        return Ref(identifier=Identifier.parse(key, path="key"), type=resource_type)
    return Ref(reference=key, type=resource_type)


def _hold_for(
    decision: ConsentDecision,
    resource: RequestedResource | None,
    explicit: frozenset[tuple[str, str]],
) -> HoldReason:
    # A consent that denies decides (``basis``); a permit that does not name an explicit label
    # (PSYTHPN) gives a DENY without a deciding consent. The labels are read as the engine reads
    # them for that rule: a PSYTHPN of another code system counts too (``deny_label_keys``).
    if decision.outcome is DecisionOutcome.DENY and decision.basis:
        return HoldReason.DENIED
    if resource is not None and not deny_label_keys(resource.labels).isdisjoint(explicit):
        return HoldReason.NEEDS_EXPLICIT_PERMIT
    if decision.outcome is DecisionOutcome.DENY:
        return HoldReason.DENIED
    return HoldReason.NO_CONSENT


def _entered_in_error_correction(item: OutboxItem, store: Store) -> SessionNote | None:
    """What an unsigned entered-in-error note may send: the note's version that the server last
    got from us (an earlier record version than ``item``'s), marked entered-in-error. Its content
    has been on the server already; the unsigned version's own text is never sent. ``None`` when
    the server holds nothing of it to correct: no earlier version was sent, the one sent is
    already entered-in-error, or the retraction policy marked or deleted it since."""
    sent = store.last_sent(item.record_id, before_version=item.record_version)
    if sent is None or sent.retraction in (RETRACTION_ENTERED_IN_ERROR, RETRACTION_DELETED):
        return None
    earlier = store.get_record(item.record_id, version=sent.record_version)
    note = None if earlier is None else mapper_for_kind(earlier.kind).load(earlier.body)
    if not isinstance(note, SessionNote) or note.status is NoteStatus.ENTERED_IN_ERROR:
        return None
    return replace(note, status=NoteStatus.ENTERED_IN_ERROR)


def gate_item(
    item: OutboxItem, *, settings: Settings, store: Store, version: str, at: datetime
) -> GateResult:
    """Map ``item`` to FHIR ``version`` and decide. Mapping errors (``InputError``,
    ``MappingError``) propagate: they are permanent, the worker dead-letters them."""
    mapper = mapper_for_kind(item.kind)
    record = mapper.load(item.body)
    resources = tuple(mapper.to_fhir(record, version=version))
    if item.family == FAMILY_CONSENT:
        if settings.push_consents:
            return GateResult(item, resources)
        HELD.inc()
        return GateResult(item, resources, HoldReason.CONSENT_PUSH_OFF)

    if (
        isinstance(record, SessionNote)
        and record.signed_at is None
        and not settings.push_draft_notes
    ):
        # Nobody signed it: its own text stays home (a draft waits for its signature; an
        # entered-in-error note goes only as the correction of what the server holds).
        correction = None
        if record.status is not NoteStatus.DRAFT:
            correction = _entered_in_error_correction(item, store)
        if correction is None:
            HELD.inc()
            draft = record.status is NoteStatus.DRAFT
            return GateResult(
                item, resources, HoldReason.DRAFT_NOTE if draft else HoldReason.UNSIGNED_NOTE
            )
        record = correction
        resources = tuple(mapper.to_fhir(record, version=version))

    consents = engine_for_patient(store, item.patient)
    stamp = consents.stamp
    if consents.unreadable:
        HELD.inc()
        return GateResult(item, resources, HoldReason.CONSENT_UNREADABLE, consents_stamp=stamp)
    if isinstance(record, SessionNote) and not ai_disclosure_permitted(consents.records, record):
        HELD.inc()  # drafted by AI, and the consent that permitted it was revoked since
        return GateResult(item, resources, HoldReason.AI_NOTES_NOT_PERMITTED, consents_stamp=stamp)
    engine = consents.engine
    recipient = [ref_for_key(r) for r in settings.recipients]
    purposes = [Coding(system=V3_ACT_REASON, code=settings.purpose)]
    patient = [ref_for_key(item.patient, resource_type="Patient")]
    decisions: list[ConsentDecision] = []
    hold: HoldReason | None = None
    for resource in resources:
        request = disclosure_request(
            resource, patient=patient, recipient=recipient, purposes=purposes, at=at
        )
        decision = engine.decide(request)
        DECISIONS.labels(decision.outcome.value).inc()
        decisions.append(decision)
        if decision.outcome is not DecisionOutcome.PERMIT:
            hold = _hold_for(decision, request.resource, engine.explicit_labels)
            break  # one resource that may not go holds the whole record
    if hold:
        HELD.inc()
    return GateResult(item, resources, hold, tuple(decisions), consents_stamp=stamp)


def sendable_forms(
    item: OutboxItem, *, store: Store, version: str
) -> list[tuple[dict[str, Any], ...]]:
    """What a send of ``item`` may have carried, without asking the consents (the worker's check
    of a send whose landing is unknown compares the server's copy with each): the item's own
    mapping to FHIR ``version``, and for an unsigned note that is not a draft also the
    entered-in-error correction :func:`gate_item` sends in its stead while drafts are not
    pushed. Mapping errors propagate, as from :func:`gate_item`."""
    mapper = mapper_for_kind(item.kind)
    record = mapper.load(item.body)
    forms = [tuple(mapper.to_fhir(record, version=version))]
    if (
        isinstance(record, SessionNote)
        and record.signed_at is None
        and record.status is not NoteStatus.DRAFT
    ):
        correction = _entered_in_error_correction(item, store)
        if correction is not None:
            forms.append(tuple(mapper.to_fhir(correction, version=version)))
    return forms


def regate_stored(
    record: StoredRecord,
    *,
    item_id: int,
    owner: str,
    settings: Settings,
    store: Store,
    version: str,
    at: datetime,
) -> GateResult | None:
    """:func:`gate_item` for a stored record outside a worker's claim (a retraction or reconcile
    pass, named by ``owner``); ``None`` when the record no longer maps (the worker dead-letters
    such records)."""
    item = OutboxItem(
        item_id=item_id,
        record_id=record.record_id,
        record_version=record.version,
        kind=record.kind,
        family=record.family,
        patient=record.patient,
        body=record.body,
        attempts=0,
        lease_owner=owner,
        lease_until=at,
    )
    try:
        return gate_item(item, settings=settings, store=store, version=version, at=at)
    except (FhirAllianceError, ValueError, TypeError, LookupError):
        return None


def server_version(resource: Mapping[str, Any]) -> str | None:
    """The ``meta.versionId`` of a copy read from the server, as text; None when it has none,
    or its ``meta`` is not an object (a malformed answer: its content may still be ours)."""
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return str(version) if version else None


def copy_content(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A resource without what the server stamps on it (``meta``, ``text``), but with its
    security labels (as a set of system and code): a label someone else added narrows who may
    see the resource, so a copy carrying it is not ours, however equal the rest."""
    content = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    meta = resource.get("meta")
    labels = meta.get("security") if isinstance(meta, Mapping) else None
    content["meta.security"] = sorted(
        {
            (str(label.get("system")), str(label.get("code")))
            for label in labels or ()
            if isinstance(label, Mapping)
        }
    )
    return content
