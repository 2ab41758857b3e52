"""AuditEvent and Provenance builders (pure): what intake and the worker record about each record.

The shapes follow the IHE Basic Audit Log Patterns (BALP) for FHIR R4: a *privacy disclosure at the
source* (``type`` DICOM 110106 Export, ``subtype`` ISO 21089 ``disclose``, ``action`` R) for every
disclosure and, with a failure outcome, for every disclosure the consent gate held back; a RESTful
*create*/*update* with a patient entity for every record taken in. Every event names the sync service
as a Device agent (the audit source), the patient as a Person/Patient entity, and the record by its
opaque ``record_id``. A Provenance per resource version the service writes on the server (a send,
a retraction's entered-in-error mark, a ``reconcile --fix`` repair) names the service as the
assembler and the source record as the entity; a delete writes no version and has its AuditEvent
only.

No free text, no names: the only words in these resources are fixed codes (a held decision carries
its machine reason code, never the plain-words reason). Ids are deterministic (the same event, the
same id): UUIDv5s of the event's kind, its record version and, for a decision or a step, the
millisecond it was made. Two different events can still be built under one id (a record version
sent twice, two holds of it in one millisecond); the store gives the one it stores later an id of
its own (``store/audit_queue.py``), and the row keeps the id it was stored under, so pushing it
again (``PUT``) writes the same resource.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from fhir_alliance.terminology import CANONICAL_BASE, IDENTIFIER_SYSTEM_BASE
from fhir_alliance_service.store.interface import AuditEntry, SentResource
from fhir_alliance_service.uuids import uuid5_text

__all__ = [
    "DEVICE_IDENTIFIER_SYSTEM",
    "RECORD_IDENTIFIER_SYSTEM",
    "SYNC_DEVICE",
    "TWO_WAY_STEPS",
    "WRITING_STEPS",
    "conflict_decision_event",
    "dead_letter_event",
    "disclosure_event",
    "hold_event",
    "intake_event",
    "provenance",
    "reference_for",
    "two_way_event",
    "write_provenance",
]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ISO_21089_LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PURPOSE_OF_USE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"

#: Identifier systems: the sync service as a device, and our records by their opaque id.
DEVICE_IDENTIFIER_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/device"
RECORD_IDENTIFIER_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/record"
#: The sync service, as every event's source and Provenance's agent (a logical reference).
SYNC_DEVICE: dict[str, Any] = {
    "type": "Device",
    "identifier": {"system": DEVICE_IDENTIFIER_SYSTEM, "value": "fhir-alliance-sync"},
}

# R4 AuditEvent.outcome codes.
_SUCCESS = "0"
_MINOR_FAILURE = "4"  # the disclosure was not made: the gate held it
_SERIOUS_FAILURE = "8"  # the disclosure failed for good: dead-lettered


def _instant(at: datetime) -> str:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _id(*parts: object) -> str:
    name = "|".join([CANONICAL_BASE, "audit", *(str(p) for p in parts)])
    return uuid5_text(uuid.NAMESPACE_URL, name)


def reference_for(key: str, *, resource_type: str | None = None) -> dict[str, Any]:
    """A FHIR Reference for a key as the service stores it: ``Type/id`` (a literal reference) or
    an identifier token ``system|value`` (a logical reference)."""
    if "|" in key:
        system, _, value = key.partition("|")
        ref: dict[str, Any] = {"identifier": {"system": system, "value": value}}
    else:
        ref = {"reference": key}
    if resource_type:
        ref["type"] = resource_type
    return ref


def _record_reference(record_id: str) -> dict[str, Any]:
    return {"identifier": {"system": RECORD_IDENTIFIER_SYSTEM, "value": record_id}}


def _coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def _agent(role_code: str, who: Mapping[str, Any], *, network: str | None = None) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, role_code)]},
        "who": dict(who),
        "requestor": False,
    }
    if network:
        agent["network"] = {"address": network, "type": "5"}  # 5 = URI
    return agent


def _source() -> dict[str, Any]:
    return {
        "observer": dict(SYNC_DEVICE),
        "type": [_coding(SECURITY_SOURCE_TYPE, "4")],  # 4 = application server
    }


def _patient_entity(patient: str) -> dict[str, Any]:
    return {
        "what": reference_for(patient, resource_type="Patient"),
        "type": _coding(AUDIT_ENTITY_TYPE, "1"),  # person
        "role": _coding(OBJECT_ROLE, "1"),  # patient
    }


def _record_entity(record_id: str, version: int, kind: str | None = None) -> dict[str, Any]:
    details = [{"type": "version", "valueString": str(version)}]
    if kind:
        details.insert(0, {"type": "kind", "valueString": kind})
    return {
        "what": _record_reference(record_id),
        "type": _coding(AUDIT_ENTITY_TYPE, "2"),  # system object
        "role": _coding(OBJECT_ROLE, "4"),  # domain resource
        "detail": details,
    }


def _resource_entity(resource: SentResource | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(resource, SentResource):
        rtype, rid = resource.resource_type, resource.id
    else:
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
    return {
        "what": {"reference": f"{rtype}/{rid}", "type": rtype},
        "type": _coding(AUDIT_ENTITY_TYPE, "2"),
        "role": _coding(OBJECT_ROLE, "4"),
    }


def _disclosure_shell(
    event_id: str,
    *,
    outcome: str,
    at: datetime,
    purpose: str,
    recipient: str,
    target_url: str | None,
) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": _coding(DCM, "110106"),  # Export
        "subtype": [_coding(ISO_21089_LIFECYCLE, "disclose")],
        "action": "R",
        "recorded": _instant(at),
        "outcome": outcome,
        "purposeOfEvent": [{"coding": [_coding(PURPOSE_OF_USE, purpose)]}],
        "agent": [
            _agent("110153", SYNC_DEVICE),  # source role: this service
            _agent("110152", reference_for(recipient), network=target_url),  # destination
        ],
        "source": _source(),
    }


def intake_event(record_id: str, patient: str, kind: str, version: int, at: datetime) -> AuditEntry:
    """A BALP-style RESTful create (version 1) or update (later versions) of one record, with its
    patient. ``action`` ``intake``."""
    interaction = "create" if version == 1 else "update"
    resource = {
        "resourceType": "AuditEvent",
        "id": _id("intake", record_id, version),
        "type": _coding(AUDIT_EVENT_TYPE, "rest"),
        "subtype": [_coding(RESTFUL_INTERACTION, interaction)],
        "action": "C" if version == 1 else "U",
        "recorded": _instant(at),
        "outcome": _SUCCESS,
        "agent": [_agent("110152", SYNC_DEVICE)],  # destination role: the service took it in
        "source": _source(),
        "entity": [_patient_entity(patient), _record_entity(record_id, version, kind)],
    }
    return AuditEntry(
        action="intake", record_id=record_id, patient=patient, resource=resource, at=at
    )


def disclosure_event(
    record_id: str,
    patient: str,
    version: int,
    resources: Sequence[SentResource | Mapping[str, Any]],
    at: datetime,
    *,
    recipient: str,
    purpose: str,
    target_url: str | None = None,
    step: str | None = None,
) -> AuditEntry:
    """One privacy disclosure (BALP PrivacyDisclosure at the source): the record version's
    ``resources`` went to ``recipient`` for ``purpose`` (a v3 PurposeOfUse code). ``action``
    ``disclose``. ``step``: a two-way sync step that wrote the record version's resources again
    (``reconcile-write``), after the send: the event's id then names the step, the resources and
    the time, so that it never takes the send's own id (pushed, a ``PUT`` to that id would
    replace the send's event on the server). The event is otherwise the send's."""
    parts: list[object] = [record_id, version]
    if step is not None:
        names = [
            f"{r.resource_type}/{r.id}"
            if isinstance(r, SentResource)
            else f"{r.get('resourceType')}/{r.get('id')}"
            for r in resources
        ]
        parts += [_writing_step(step), *names, _instant(at)]
    resource = _disclosure_shell(
        _id("disclose", *parts),
        outcome=_SUCCESS,
        at=at,
        purpose=purpose,
        recipient=recipient,
        target_url=target_url,
    )
    resource["entity"] = [
        _patient_entity(patient),
        _record_entity(record_id, version),
        *(_resource_entity(r) for r in resources),
    ]
    return AuditEntry(
        action="disclose", record_id=record_id, patient=patient, resource=resource, at=at
    )


def hold_event(
    record_id: str,
    patient: str,
    version: int,
    reason_code: str,
    at: datetime,
    *,
    recipient: str,
    purpose: str,
    step: str | None = None,
) -> AuditEntry:
    """A disclosure the consent gate held back: the BALP disclosure shape with outcome 4 (minor
    failure: nothing left) and the machine ``reason_code`` in ``outcomeDesc``. One per held
    decision (a re-evaluation that holds again is a new event). ``action`` ``hold``. ``step``: a
    two-way sync step whose write of the record version the gate held (``reconcile-write``),
    after the send: the event's id then names the step, so that it never takes the id of the
    worker's hold of the same version at the same instant. The event is otherwise the worker's."""
    parts: list[object] = [record_id, version]
    if step is not None:
        parts.append(_writing_step(step))
    resource = _disclosure_shell(
        _id("hold", *parts, _instant(at)),
        outcome=_MINOR_FAILURE,
        at=at,
        purpose=purpose,
        recipient=recipient,
        target_url=None,
    )
    resource["outcomeDesc"] = reason_code
    resource["entity"] = [_patient_entity(patient), _record_entity(record_id, version)]
    return AuditEntry(action="hold", record_id=record_id, patient=patient, resource=resource, at=at)


def dead_letter_event(
    record_id: str,
    patient: str,
    version: int,
    at: datetime,
    *,
    recipient: str,
    purpose: str,
    status: int | None = None,
) -> AuditEntry:
    """A disclosure that failed for good (the item is dead-lettered): outcome 8, the HTTP status
    (if any) in ``outcomeDesc``; the OperationOutcome stays on the outbox item. ``action``
    ``dead-letter``."""
    resource = _disclosure_shell(
        _id("dead-letter", record_id, version, _instant(at)),
        outcome=_SERIOUS_FAILURE,
        at=at,
        purpose=purpose,
        recipient=recipient,
        target_url=None,
    )
    resource["outcomeDesc"] = f"http-{status}" if status else "not-sendable"
    resource["entity"] = [_patient_entity(patient), _record_entity(record_id, version)]
    return AuditEntry(
        action="dead-letter", record_id=record_id, patient=patient, resource=resource, at=at
    )


def _assembler() -> dict[str, Any]:
    """Every Provenance's agent: the sync service, as the assembler of the version."""
    return {
        "type": {"coding": [_coding(PROVENANCE_PARTICIPANT_TYPE, "assembler")]},
        "who": dict(SYNC_DEVICE),
    }


def provenance(
    resources: Sequence[SentResource],
    record_id: str,
    at: datetime,
    *,
    patient: str,
    version: int,
    created: Collection[tuple[str, str]] = (),
) -> list[AuditEntry]:
    """One Provenance per pushed resource: ``target`` the resource (at its version when known),
    ``agent`` the sync service (a Device, assembler), ``entity`` the source record (role source).
    Activity ``CREATE`` for the record's first version and for the resources (type, id) the
    server says the send ``created`` (201: one deleted on the server written again), else
    ``UPDATE``. ``action`` ``provenance``."""
    entries = []
    for sent in resources:
        target = f"{sent.resource_type}/{sent.id}"
        if sent.version_id:
            target += f"/_history/{sent.version_id}"
        resource = {
            "resourceType": "Provenance",
            "id": _id("provenance", record_id, version, sent.resource_type, sent.id),
            "target": [{"reference": target}],
            "recorded": _instant(at),
            "activity": {"coding": [_coding(DATA_OPERATION, _activity(sent, version, created))]},
            "agent": [_assembler()],
            "entity": [{"role": "source", "what": _record_reference(record_id)}],
        }
        entries.append(
            AuditEntry(
                action="provenance", record_id=record_id, patient=patient, resource=resource, at=at
            )
        )
    return entries


def _activity(sent: SentResource, version: int, created: Collection[tuple[str, str]]) -> str:
    if version == 1 or (sent.resource_type, sent.id) in created:
        return "CREATE"
    return "UPDATE"


#: The two-way sync steps that write a resource version on the server (each write gets a
#: :func:`write_provenance`); the others read, delete or write nothing.
WRITING_STEPS: Final = ("retract-entered-in-error", "reconcile-write")


def _writing_step(step: str) -> str:
    """``step``, one of :data:`WRITING_STEPS` (a ValueError otherwise)."""
    if step not in WRITING_STEPS:
        raise ValueError(f"{step!r} writes no resource version")
    return step


def write_provenance(
    step: str,
    written: SentResource,
    record_id: str,
    at: datetime,
    *,
    patient: str,
    version: int,
    activity: str,
    revises: str | None = None,
) -> AuditEntry:
    """The Provenance of one resource version a two-way sync step (:data:`WRITING_STEPS`) wrote
    on the server: ``target`` the version written (``Type/id/_history/n`` when the server named
    it), ``activity`` a v3 DataOperation code (``CREATE``, ``UPDATE``), ``agent`` the sync
    service as :func:`provenance` names it, ``entity`` the source record and, when known, the
    server's version it replaced (``revises``, role ``revision``). ``action`` ``provenance``, as
    a disclosure's; its id differs from theirs (the step and the server's version are in it)."""
    _writing_step(step)
    target = f"{written.resource_type}/{written.id}"
    if written.version_id:
        target += f"/_history/{written.version_id}"
    entity: list[dict[str, Any]] = [{"role": "source", "what": _record_reference(record_id)}]
    if revises:
        entity.append(
            {
                "role": "revision",
                "what": {"reference": f"{written.resource_type}/{written.id}/_history/{revises}"},
            }
        )
    resource = {
        "resourceType": "Provenance",
        "id": _id(
            "provenance",
            step,
            record_id,
            version,
            written.resource_type,
            written.id,
            written.version_id or _instant(at),
        ),
        "target": [{"reference": target}],
        "recorded": _instant(at),
        "activity": {"coding": [_coding(DATA_OPERATION, activity)]},
        "agent": [_assembler()],
        "entity": entity,
    }
    return AuditEntry(
        action="provenance", record_id=record_id, patient=patient, resource=resource, at=at
    )


#: What each two-way sync step is recorded as: (RESTful interaction, AuditEvent.action).
TWO_WAY_STEPS: Final = {
    "pull": ("read", "R"),  # a remote change read and merged (sync/pull.py)
    "retract-entered-in-error": ("update", "U"),  # a shared resource marked entered-in-error
    "retract-delete": ("delete", "D"),  # a shared resource deleted
    "retract-kept": ("read", "R"),  # retraction policy none: noted, nothing changed remotely
    "retract-failed": ("update", "U"),  # the server refused; retried on the next pass
    "conflict": ("update", "U"),  # a 412 on If-Match, and how the policy settled it
    "reconcile-write": ("update", "U"),  # reconcile --fix wrote a missing or drifted resource
    "reconcile-delete": ("delete", "D"),  # reconcile --fix deleted a duplicate
}


def two_way_event(
    step: str,
    record_id: str | None,
    patient: str,
    at: datetime,
    *,
    version: int | None = None,
    resources: Sequence[SentResource | Mapping[str, Any]] = (),
    outcome_code: str | None = None,
    failed: bool = False,
) -> AuditEntry:
    """A BALP-style RESTful event for one two-way sync step (:data:`TWO_WAY_STEPS`) about a
    patient, a record (when there is one) and the remote resources it touched. ``outcome_code`` is
    a machine word for ``outcomeDesc`` (never free text). ``action`` is the step's name."""
    interaction, action = TWO_WAY_STEPS[step]
    entity = [_patient_entity(patient)]
    if record_id is not None and version is not None:
        entity.append(_record_entity(record_id, version))
    entity += [_resource_entity(r) for r in resources]
    names = [
        f"{r.resource_type}/{r.id}" if isinstance(r, SentResource) else str(r.get("id"))
        for r in resources
    ]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": _id(step, record_id, version, *names, _instant(at)),
        "type": _coding(AUDIT_EVENT_TYPE, "rest"),
        "subtype": [_coding(RESTFUL_INTERACTION, interaction)],
        "action": action,
        "recorded": _instant(at),
        "outcome": _MINOR_FAILURE if failed else _SUCCESS,
        "agent": [_agent("110153", SYNC_DEVICE)],
        "source": _source(),
        "entity": entity,
    }
    if outcome_code:
        resource["outcomeDesc"] = outcome_code
    return AuditEntry(action=step, record_id=record_id, patient=patient, resource=resource, at=at)


#: Who decided a conflict: an API key by its public id, or the command line (never a name).
DECIDER_IDENTIFIER_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/decided-by"


def conflict_decision_event(
    record_id: str,
    patient: str,
    version: int,
    decision: str,
    at: datetime,
    *,
    decided_by: str,
    against: Sequence[SentResource],
) -> AuditEntry:
    """A person's decision on a conflict flagged for them (``overwrite`` or ``keep-remote``): a
    BALP-style RESTful update by the requestor ``decided_by`` (an API key id, or ``cli``; never a
    name), about the record version and the server's versions it was decided against
    (``against``, each with its version when known). ``action``: ``conflict-decision``."""
    entity = [_patient_entity(patient), _record_entity(record_id, version)]
    for theirs in against:
        entry = _resource_entity(theirs)
        if theirs.version_id:
            entry["detail"] = [{"type": "version", "valueString": theirs.version_id}]
        entity.append(entry)
    requestor = {
        "type": {"coding": [_coding(DCM, "110150")]},  # application (an API key, the CLI)
        "who": {"identifier": {"system": DECIDER_IDENTIFIER_SYSTEM, "value": decided_by}},
        "requestor": True,
    }
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": _id("conflict-decision", record_id, version, decision, _instant(at)),
        "type": _coding(AUDIT_EVENT_TYPE, "rest"),
        "subtype": [_coding(RESTFUL_INTERACTION, "update")],
        "action": "U",
        "recorded": _instant(at),
        "outcome": _SUCCESS,
        "outcomeDesc": decision,
        "agent": [requestor, _agent("110153", SYNC_DEVICE)],
        "source": _source(),
        "entity": entity,
    }
    return AuditEntry(
        action="conflict-decision", record_id=record_id, patient=patient, resource=resource, at=at
    )
