"""The /v1 routes for consent records and decisions: post (consents and revocations), read, revoke,
and the decision for a patient. Thin: parse → call a use case → render an envelope from
``api/schemas.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint

from fhir_alliance.consent.request_form import decision_to_json
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.schemas.common import load_or_raise
from fhir_alliance.schemas.consent import (
    RECORD_KIND_CONSENT,
    RECORD_KIND_REVOCATION,
    ConsentRecordSchema,
    ConsentRevocationSchema,
)
from fhir_alliance_service.api.body import json_body, single_query_args
from fhir_alliance_service.api.openapi import describe
from fhir_alliance_service.api.records import (
    intake_response,
    not_found,
    record_json,
    request_payloads,
    valid_record_id,
)
from fhir_alliance_service.api.schemas import (
    DecisionQuerySchema,
    DecisionSchema,
    IntakeResponseSchema,
    RecordSchema,
    RevokeRequestSchema,
    dump,
    instance,
)
from fhir_alliance_service.auth import require_scope
from fhir_alliance_service.errors import ApiError
from fhir_alliance_service.store.interface import Store, StoredRecord
from fhir_alliance_service.usecases.consents import AlreadyRevoked, revoke_stored_consent
from fhir_alliance_service.usecases.decisions import decide_for_patient
from fhir_alliance_service.usecases.intake import FAMILY_CONSENT, intake_records

__all__ = ["blueprint"]

blueprint = Blueprint("consents", __name__, url_prefix="/v1")

_CONSENT_KINDS = frozenset({RECORD_KIND_CONSENT, RECORD_KIND_REVOCATION})


def _service() -> Any:
    from fhir_alliance_service.app import current_service

    return current_service()


def _store() -> Store:
    store: Store = _service().store
    return store


def _now() -> datetime:
    return datetime.now(UTC)


def _stored_consent(store: Store, record_id: str) -> StoredRecord:
    record = store.get_record(valid_record_id(record_id))
    if record is None or record.family != FAMILY_CONSENT:
        raise not_found("consent")
    return record


@blueprint.post("/consents")
@require_scope("write")
@describe(
    body=[ConsentRecordSchema, ConsentRevocationSchema], response=IntakeResponseSchema, status=201
)
def post_consents() -> tuple[Any, int]:
    """Take in one consent or a list (revocations of stored or listed consents too).

    ---
    post:
      responses:
        200:
          description: every record was unchanged; nothing new was stored
          content:
            application/json:
              schema: IntakeResponseSchema
    """
    service = _service()
    payloads, labels = request_payloads(json_body(), limit=service.settings.max_records_per_request)
    wrong = [
        Issue(
            path=".".join(p for p in (label, "kind") if p),
            message="expected consent or consent-revocation",
        )
        for label, payload in zip(labels, payloads, strict=True)
        if isinstance(payload, Mapping) and payload.get("kind") not in _CONSENT_KINDS
    ]
    if wrong:
        raise InputError(f"invalid input at {', '.join(i.path for i in wrong)}", issues=wrong)
    results = intake_records(service.store, payloads, at=_now(), labels=labels)
    return intake_response(results)


@blueprint.get("/consents/<record_id>")
@require_scope("read")
@describe(response=RecordSchema)
def get_consent(record_id: str) -> Any:
    """One consent record's newest version, with its sync status."""
    store = _store()
    record = _stored_consent(store, record_id)
    return dump(RecordSchema, record_json(record, store.sync_status(record.record_id)))


@blueprint.post("/consents/<record_id>/revoke")
@require_scope("write")
@describe(body=RevokeRequestSchema, response=RecordSchema)
def revoke_consent(record_id: str) -> Any:
    """Revoke a stored consent: a new version with status revoked; the patient's held records are
    re-evaluated. Idempotent: the same revocation posted again (a retry after a lost answer) is
    200 with the consent as it is, nothing stored; another revocation of a revoked consent is 409.

    ---
    post:
      responses:
        409:
          description: the consent is already revoked by another revocation (another at, by or
            reason); the same revocation posted again is 200 with the consent as it is
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    store = _store()
    record = _stored_consent(store, record_id)
    body = json_body()
    load_or_raise(instance(RevokeRequestSchema), body)  # field paths of the body itself
    try:
        revoke_stored_consent(store, record, body, at=_now())
    except AlreadyRevoked as exc:
        raise ApiError(409, str(exc)) from None
    revoked = _stored_consent(store, record_id)
    return dump(RecordSchema, record_json(revoked, store.sync_status(revoked.record_id)))


#: Why a parameter of the decision may not repeat. Several recipients are not several ways one
#: recipient is known: answering for all of them could disclose to a party the consent does not
#: name, and answering for the first alone would mislead about the others.
_ONE_VALUE = {
    "recipient": "give one recipient per question",
    "purpose": "give one purpose per question",
    "action": "give one action per question",
    "at": "give one time per question",
}


@blueprint.get("/patients/<path:ref>/decision")
@require_scope("read")
@describe(query=DecisionQuerySchema, response=DecisionSchema)
def patient_decision(ref: str) -> Any:
    """The consent decision for a patient: outcome, deciding consent and provision, obligations
    and the explanation.

    One question per request: a parameter given twice (two recipients, two purposes, …) is
    refused with 422 at that parameter, never answered for its first value alone.

    ---
    get:
      responses:
        422:
          description: a bad patient, recipient, purpose, action or time, or a parameter given twice
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    query = load_or_raise(instance(DecisionQuerySchema), single_query_args(_ONE_VALUE))
    answer = decide_for_patient(
        _store(),
        ref,
        query["recipient"],
        query["purpose"],
        action=query["action"],
        at=query["at"] or _now(),
    )
    envelope = {
        **decision_to_json(answer.decision),
        "explanation": answer.explanation,
        "unreadable_consents": len(answer.unreadable),
    }
    return dump(DecisionSchema, envelope)
