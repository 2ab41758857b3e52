"""Intake: records in our JSON form (any kind the library has) or a FHIR QuestionnaireResponse →
validated domain records → the store, all or nothing.

:func:`intake_records` loads every payload with its kind's mapper, runs the mapper's rules across
the batch (a repair names a rupture of the batch or of the store; a revocation names a consent of the
batch or of the store and is folded into it as a new version), and hands everything to
``store.put_records`` with one intake AuditEvent per record (naming the version the store gives
it), in one transaction. Errors of every payload are collected into one
:class:`~fhir_alliance.errors.InputError` whose issue paths start with the payload's label (its
index in a list: ``1.responses.3.value``). Identifiers, the patient
and every reference must also pass the service's stricter rules (``usecases/references.py``). Held
records of a patient whose consents changed are re-queued, and the store notes that patient for
a retraction check in the consent's own write (``Store.put_records``). An AI-drafted session note
is refused unless the client's recording/AI-notes consent permitted drafting it
(``usecases/notes.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from fhir_alliance.consent.identity import consent_identifier
from fhir_alliance.errors import InputError, Issue, MappingError
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.mapping.note import MAPPER as NOTE_MAPPER
from fhir_alliance.mapping.observation import MAPPER as OBSERVATION_MAPPER
from fhir_alliance.mapping.questionnaire import records_from_questionnaire_response
from fhir_alliance.mapping.registry import RecordMapper, mapper_for_kind
from fhir_alliance.model.common import Identifier
from fhir_alliance.model.consent import ConsentRecord, ConsentRevocation
from fhir_alliance.model.observations import RepairEvent
from fhir_alliance.schemas.observations import KIND_RUPTURE
from fhir_alliance_service import audit
from fhir_alliance_service.store.interface import (
    IntakeEvents,
    IntakeResult,
    KindChangeRefused,
    NewRecord,
    PatientChangeRefused,
    PutOutcome,
    Store,
    StoredRecord,
)
from fhir_alliance_service.usecases.consents import patient_key
from fhir_alliance_service.usecases.notes import FAMILY_NOTE, ai_drafting_issues
from fhir_alliance_service.usecases.references import (
    identifier_issues,
    patient_issues,
    reference_issues,
)

__all__ = [
    "FAMILY_CONSENT",
    "FAMILY_OBSERVATION",
    "RecordIntake",
    "content_hash",
    "intake_questionnaire_response",
    "intake_records",
]

log = logging.getLogger(__name__)

FAMILY_OBSERVATION = "observation"
FAMILY_CONSENT = "consent"


@dataclass(frozen=True, slots=True)
class RecordIntake(IntakeResult):
    """The store's :class:`IntakeResult` plus what the caller needs to answer about the record."""

    identifier: str
    kind: str
    label: str  # the payload the record came from (its index in a list; "" for one object)


def content_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``body`` (sorted keys, no spaces): same content, same hash."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _at(label: str, path: str) -> str:
    return ".".join(p for p in (label, path) if p)


def _prefixed(issues: Sequence[Issue], label: str) -> list[Issue]:
    return [Issue(path=_at(label, i.path), message=i.message, code=i.code) for i in issues]


def _tidy(issues: Sequence[Issue]) -> list[Issue]:
    """Batch rules join ``label.field``; a lone object's empty label leaves a leading dot."""
    return [Issue(path=i.path.lstrip("."), message=i.message, code=i.code) for i in issues]


def _family(mapper: RecordMapper) -> str:
    if mapper is NOTE_MAPPER:
        return FAMILY_NOTE
    return FAMILY_CONSENT if mapper is CONSENT_MAPPER else FAMILY_OBSERVATION


def _load_all(
    payloads: Sequence[object], labels: Sequence[str]
) -> tuple[list[tuple[str, RecordMapper, Any]], list[Issue]]:
    loaded: list[tuple[str, RecordMapper, Any]] = []
    issues: list[Issue] = []
    for label, payload in zip(labels, payloads, strict=True):
        if not isinstance(payload, Mapping):
            issues.append(Issue(path=label, message="expected a JSON object"))
            continue
        try:
            mapper = mapper_for_kind(payload.get("kind"), path=_at(label, "kind"))
        except InputError as exc:
            issues += exc.issues
            continue
        try:
            loaded.append((label, mapper, mapper.load(payload)))
        except InputError as exc:
            issues += _prefixed(exc.issues, label)
            continue
        issues += reference_issues(payload, label)
    return loaded, issues


def _stored_consent(store: Store, identifier: Identifier) -> ConsentRecord | None:
    row = store.get_record(resource_id(identifier))
    if row is None or row.family != FAMILY_CONSENT:
        return None
    try:
        record = CONSENT_MAPPER.load(row.body)
    except InputError:
        return None
    return record if isinstance(record, ConsentRecord) else None


def _observations(
    store: Store, labelled: list[tuple[str, Any]]
) -> tuple[list[tuple[str, Any]], list[Issue]]:
    in_batch = {r.id for _, r in labelled}
    known = [
        r.rupture
        for _, r in labelled
        if isinstance(r, RepairEvent)
        and r.rupture not in in_batch
        and (row := store.get_record(resource_id(r.rupture))) is not None
        and row.kind == KIND_RUPTURE
    ]
    return labelled, _tidy(OBSERVATION_MAPPER.check_batch(labelled, known_ruptures=known))


def _consents(
    store: Store, labelled: list[tuple[str, ConsentRecord | ConsentRevocation]]
) -> tuple[list[tuple[str, Any]], list[Issue]]:
    in_batch = {r.id for _, r in labelled if isinstance(r, ConsentRecord)}
    known: dict[Identifier, ConsentRecord] = {}
    for _, record in labelled:
        if isinstance(record, ConsentRevocation) and record.consent not in in_batch:
            stored = _stored_consent(store, record.consent)
            if stored is not None:
                known[record.consent] = stored
    try:
        return CONSENT_MAPPER.apply_batch(labelled, known=known), []
    except InputError as exc:
        return [], _tidy(exc.issues)


def _posted_spellings(store: Store, patient: str) -> dict[Identifier, Identifier]:
    """The consents posted here of ``patient`` (under every key of the patient): each one's
    identifier in the form identifiers are compared in → the identifier as it was posted. A
    consent posted here is filed under the record id of its identifier as posted; a pulled one
    is not, and is left out. Identifiers alone are read (``Store.consent_identifiers``), no
    bodies: the patient's keys in their order, each key's consents by record id."""
    keys = store.patient_keys(patient)
    order = {key: n for n, key in enumerate(keys)}
    rows = sorted(store.consent_identifiers(None, keys), key=lambda row: (order[row[1]], row[0]))
    found: dict[Identifier, Identifier] = {}
    for record_id, _, text, _ in rows:
        try:
            identifier = Identifier.parse(text)
        except InputError:
            continue
        if resource_id(identifier) == record_id:
            found.setdefault(consent_identifier(identifier), identifier)
    return found


def _as_first_posted(store: Store, consents: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``consents`` with each identifier that is another spelling (compared as URIs:
    :func:`consent_identifier`) of a consent's identifier as first posted, to the store or
    earlier in the batch, replaced by that one: a new version of that consent's record, never a
    second record beside it (an older, active version beside the newer, revoked one let the
    permit answer). A consent stored under the identifier as given stays as it is (record ids
    are derived from the identifier as posted, and were always; they do not change). The
    stored consents of a patient are read only for a consent that is not stored as given."""
    records = [r for _, r in consents if isinstance(r, ConsentRecord)]
    if not records:
        return consents
    stored = store.get_records([resource_id(r.id) for r in records])
    first_posted: dict[Identifier, Identifier] = {}
    posted_of: dict[str, dict[Identifier, Identifier]] = {}
    out: list[tuple[str, Any]] = []
    for label, record in consents:
        if not isinstance(record, ConsentRecord):
            out.append((label, record))
            continue
        key = consent_identifier(record.id)
        if key not in first_posted:
            if resource_id(record.id) in stored:
                first_posted[key] = record.id
            else:
                patient = patient_key(record.patient)
                if patient not in posted_of:
                    posted_of[patient] = _posted_spellings(store, patient)
                first_posted[key] = posted_of[patient].get(key, record.id)
        spelling = first_posted[key]
        out.append((label, record if spelling == record.id else replace(record, id=spelling)))
    return out


def _history_kept(stored: StoredRecord, record: ConsentRecord, label: str) -> list[Issue]:
    """A consent's lifecycle is append-only: a new version must keep every recorded change."""
    try:
        before = CONSENT_MAPPER.load(stored.body)
    except InputError:
        return []  # an unreadable stored version is replaced; the gate held it meanwhile
    if not isinstance(before, ConsentRecord):
        return []
    if record.history[: len(before.history)] != before.history:
        return [
            Issue(
                path=_at(label, "history"),
                message="a new version must keep the consent's recorded status changes",
                code="business-rule",
            )
        ]
    return []


#: How often intake starts again when a concurrent request created the same record first.
MAX_INTAKE_ATTEMPTS = 10

#: Why a record is refused whose id belongs to a stored record of another kind (or family).
KIND_CHANGE_REFUSED = "this id belongs to a record of another kind"

#: Why a new version naming another patient than the stored record is refused: the copy already
#: sent for the first patient would stay on the FHIR server, no longer tracked (privacy).
PATIENT_CHANGE_REFUSED = (
    "a record's patient cannot change: this id already belongs to a record of another patient. "
    "Correct that record under its own patient (a new version with status amended), or mark it "
    "entered-in-error under its own patient and post this one under a new identifier"
)


def intake_records(
    store: Store,
    payloads: Sequence[object],
    *,
    at: datetime,
    labels: Sequence[str] | None = None,
) -> list[RecordIntake]:
    """Validate and store ``payloads`` (our JSON form, any record kind) all or nothing.

    ``labels`` prefix each payload's error paths (default: its index; give ``[""]`` for one object
    posted on its own). Returns one entry per stored record, in payload order; a revocation comes
    back as its consent's new version. Raises :class:`InputError` naming every bad field path; then
    nothing was stored.

    When a concurrent request stored one of the same new records first (PostgreSQL refuses the
    second insert), the whole intake runs again against the store as it now is.
    """
    labels = [str(i) for i in range(len(payloads))] if labels is None else list(labels)
    if len(labels) != len(payloads):
        raise ValueError("one label per payload")
    for attempt in range(1, MAX_INTAKE_ATTEMPTS + 1):
        try:
            return _intake_once(store, payloads, labels, at)
        except IntegrityError:
            if attempt == MAX_INTAKE_ATTEMPTS:
                raise
            log.info("intake raced a concurrent intake; trying again", extra={"attempt": attempt})
            time.sleep(random.uniform(0.002, 0.01) * attempt)  # noqa: S311 (jitter, not secrets)
    raise AssertionError("unreachable")


def _intake_once(
    store: Store, payloads: Sequence[object], labels: list[str], at: datetime
) -> list[RecordIntake]:
    loaded, issues = _load_all(payloads, labels)

    by_family: dict[str, list[tuple[str, Any]]] = {
        FAMILY_OBSERVATION: [],
        FAMILY_CONSENT: [],
        FAMILY_NOTE: [],
    }
    mapper_of: dict[str, RecordMapper] = {}
    for label, mapper, record in loaded:
        family = _family(mapper)
        by_family[family].append((label, record))
        mapper_of[family] = mapper
    observations, more = _observations(store, by_family[FAMILY_OBSERVATION])
    issues += more
    consents, more = _consents(store, by_family[FAMILY_CONSENT])
    issues += more
    consents = _as_first_posted(store, consents)
    # An AI-drafted note needs the client's recording/AI-notes consent (usecases/notes.py).
    notes = by_family[FAMILY_NOTE]
    issues += ai_drafting_issues(
        store, notes, [r for _, r in consents if isinstance(r, ConsentRecord)]
    )

    order = {label: n for n, label in enumerate(labels)}
    ready = sorted(
        [(label, FAMILY_OBSERVATION, r) for label, r in observations]
        + [(label, FAMILY_CONSENT, r) for label, r in consents]
        + [(label, FAMILY_NOTE, r) for label, r in notes],
        key=lambda item: order[item[0]],
    )
    new_records: list[NewRecord] = []
    entries: list[tuple[str, NewRecord, int]] = []
    seen: dict[str, str] = {}
    # Each record's id (a UUIDv5: computed once), and the stored newest versions of the whole
    # batch in one read (was one read per record).
    record_ids = [resource_id(record.id) for _, _, record in ready]
    stored_of = store.get_records(record_ids)
    for (label, family, record), record_id in zip(ready, record_ids, strict=True):
        mapper = mapper_of[family]
        body = mapper.dump(record)
        new = NewRecord(
            record_id=record_id,
            identifier=str(record.id),
            kind=str(body["kind"]),
            family=family,
            patient=patient_key(record.patient),
            body=body,
            content_hash=content_hash(body),
        )
        identity = identifier_issues(record.id, _at(label, "id")) + patient_issues(
            record.patient, _at(label, "patient")
        )
        if identity:
            issues += identity
            continue
        if new.record_id in seen:
            repeat = Issue(_at(label, "id"), "the same record id appears twice")
            if repeat not in issues:  # the observations' batch rule names every repeat already
                issues.append(repeat)
            continue
        seen[new.record_id] = label
        stored = stored_of.get(new.record_id)
        if stored is not None and (stored.kind, stored.family) != (new.kind, new.family):
            issues.append(Issue(_at(label, "id"), KIND_CHANGE_REFUSED))
            continue
        if stored is not None and family == FAMILY_CONSENT:
            issues += _history_kept(stored, record, label)
        next_version = 1 if stored is None else stored.version + 1
        new_records.append(new)
        entries.append((label, new, next_version))
    if issues:
        paths = ", ".join(sorted({i.path or "(root)" for i in issues}))
        raise InputError(f"invalid input at {paths}", issues=issues)

    # Each event is built for the version read above; the store builds it again, in its write,
    # for a record another intake wrote since (``IntakeEvents``), so that it names the version
    # this intake wrote.
    events = IntakeEvents(
        entries=[
            audit.intake_event(new.record_id, new.patient, new.kind, version, at)
            for _, new, version in entries
        ],
        versions=[version for _, _, version in entries],
        build=audit.intake_event,
    )
    try:
        results = store.put_records(new_records, audit=events, at=at)
    except (KindChangeRefused, PatientChangeRefused) as exc:
        # The store checks in its write transaction that a new version is of the record's kind
        # and names the record's patient (or an alias of it), so a concurrent intake of another
        # kind or for another patient cannot slip past.
        refused = set(exc.record_ids)
        field, message = (
            ("id", KIND_CHANGE_REFUSED)
            if isinstance(exc, KindChangeRefused)
            else ("patient", PATIENT_CHANGE_REFUSED)
        )
        issues = [
            Issue(_at(label, field), message)
            for label, new, _ in entries
            if new.record_id in refused
        ]
        paths = ", ".join(sorted({i.path or "(root)" for i in issues}))
        raise InputError(f"invalid input at {paths}", issues=issues) from None
    for patient in sorted(
        {
            new.patient
            for (_, new, _), result in zip(entries, results, strict=True)
            if new.family == FAMILY_CONSENT and result.outcome is not PutOutcome.UNCHANGED
        }
    ):
        store.release_held(patient, at=at)
    return [
        RecordIntake(
            record_id=result.record_id,
            version=result.version,
            outcome=result.outcome,
            identifier=new.identifier,
            kind=new.kind,
            label=label,
        )
        for (label, new, _), result in zip(entries, results, strict=True)
    ]


def intake_questionnaire_response(
    store: Store, response: object, *, at: datetime
) -> list[RecordIntake]:
    """Extract the alliance records of one FHIR QuestionnaireResponse (R4 or R5) and take them in.
    Problems with the response raise :class:`InputError` at its element path."""
    if not isinstance(response, Mapping):
        raise InputError(
            "expected a QuestionnaireResponse object",
            issues=[Issue(path="", message="expected a QuestionnaireResponse object")],
        )
    try:
        records = records_from_questionnaire_response(response)
    except MappingError as exc:
        raise InputError(
            f"invalid QuestionnaireResponse at {exc.element}", issues=exc.issues
        ) from None
    if not records:
        raise InputError(
            "the QuestionnaireResponse has no answers to extract",
            issues=[
                Issue(
                    path="QuestionnaireResponse.item",
                    message="no answered item of a known questionnaire",
                )
            ],
        )
    payloads = [OBSERVATION_MAPPER.dump(record) for record in records]
    try:
        return intake_records(store, payloads, at=at)
    except InputError as exc:
        issues = [Issue(_qr_path(i.path), i.message, i.code) for i in exc.issues]
        raise InputError(
            f"invalid QuestionnaireResponse at {issues[0].path}", issues=issues
        ) from None


#: Fields of the extracted records → the QuestionnaireResponse elements they came from.
_QR_ELEMENTS = {
    "id": "identifier",
    "patient": "subject",
    "effective": "authored",
    "rater": "author",
    "encounter": "encounter",
    "questionnaire_response": "identifier",
}


def _qr_path(path: str) -> str:
    """``0.patient.reference`` (an extracted record's field) → ``QuestionnaireResponse.subject.reference``;
    an answer (``0.responses.3``) → ``QuestionnaireResponse.item.where(linkId='3')``."""
    parts = path.split(".")[1:]  # drop the record's index
    if not parts:
        return "QuestionnaireResponse"
    if parts[0] == "responses" and len(parts) > 1:
        return f"QuestionnaireResponse.item.where(linkId='{parts[1]}')"
    element = _QR_ELEMENTS.get(parts[0])
    if element is None:
        return "QuestionnaireResponse"
    return ".".join(["QuestionnaireResponse", element, *parts[1:]])
