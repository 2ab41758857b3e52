"""The /v1 routes for alliance records and QuestionnaireResponses: intake, reading, listing by
patient, sync status, replay and a person's conflict decisions. Thin: parse → call a use case →
render an envelope from ``api/schemas.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from flask import Blueprint, current_app, g, request, url_for

from fhir_alliance.errors import InputError, Issue
from fhir_alliance.schemas.common import load_or_raise
from fhir_alliance_service.api.body import json_body, single_query_args
from fhir_alliance_service.api.openapi import describe
from fhir_alliance_service.api.schemas import (
    RECORD_BODY_SCHEMAS,
    ConflictDecisionSchema,
    IntakeResponseSchema,
    PageQuerySchema,
    QuestionnaireResponseBodySchema,
    RecordPageSchema,
    RecordSchema,
    SyncStatusSchema,
    dump,
    instance,
)
from fhir_alliance_service.auth import grants, require_scope
from fhir_alliance_service.errors import ApiError
from fhir_alliance_service.store.interface import (
    PutOutcome,
    SentResource,
    Store,
    StoredRecord,
    SyncState,
    SyncStatus,
)
from fhir_alliance_service.usecases.conflicts import (
    ConflictChanged,
    NotFlagged,
    ServerVersionsUnknown,
    decide_conflict,
)
from fhir_alliance_service.usecases.consents import patient_key
from fhir_alliance_service.usecases.decisions import parse_party
from fhir_alliance_service.usecases.intake import (
    RecordIntake,
    intake_questionnaire_response,
    intake_records,
)
from fhir_alliance_service.usecases.notes import NOTE_TEXT_WITHHELD
from fhir_alliance_service.usecases.status import (
    NotDeadLettered,
    RecordNotFound,
    record_status,
    replay_record,
)
from fhir_alliance_service.usecases.withholding import (
    PSYCHOTHERAPY_CONTENT_WITHHELD,
    Withheld,
    withheld_text,
    withhold_record_text,
)

__all__ = [
    "blueprint",
    "intake_response",
    "not_found",
    "record_json",
    "request_payloads",
    "valid_record_id",
]

blueprint = Blueprint("records", __name__, url_prefix="/v1")

#: Record ids are UUIDs (UUIDv5 of the business identifier); anything else names no record.
_RECORD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _service() -> Any:
    from fhir_alliance_service.app import current_service

    return current_service()


def _now() -> datetime:
    return datetime.now(UTC)


def not_found(what: str = "record") -> ApiError:
    # Never echo the id: it came from the URL and may hold anything.
    return ApiError(404, f"no such {what}")


def valid_record_id(record_id: str) -> str:
    if not _RECORD_ID.fullmatch(record_id):
        raise not_found()
    return record_id


def request_payloads(body: object, *, limit: int) -> tuple[list[object], list[str]]:
    """One object or a list of them → payloads and their error-path labels (``""`` for one object,
    the index for a list). Refuses an empty list and a list longer than ``limit`` (413)."""
    if isinstance(body, Mapping):
        return [body], [""]
    if isinstance(body, list):
        if not body:
            raise InputError(
                "the list is empty", issues=[Issue(path="", message="give at least one record")]
            )
        if len(body) > limit:
            raise ApiError(413, f"at most {limit} records per request")
        return list(body), [str(i) for i in range(len(body))]
    raise InputError(
        "expected a record object or a list of them",
        issues=[Issue(path="", message="expected a record object or a list of them")],
    )


#: ``records.get_status``'s path for a record id (a UUID: nothing in it needs quoting). Written
#: out rather than built by ``url_for`` per record, a tenth of intake's response time; a test
#: checks that both agree.
_STATUS_PATH: Final = "/v1/records/{}/status"


def _status_url(record_id: str) -> str:
    return request.script_root + _STATUS_PATH.format(record_id)


def intake_response(results: Sequence[RecordIntake]) -> tuple[Any, int]:
    """201 when any record was created or changed, else 200; one entry per record."""
    changed = any(r.outcome is not PutOutcome.UNCHANGED for r in results)
    # The envelope IntakeResponseSchema describes, built as plain JSON values directly (all
    # fields are strings and ints already; a test checks the schema renders it unchanged) and
    # serialised by orjson: marshmallow's dump and the json module cost as much as the rest of
    # the response.
    envelope = {
        "records": [
            {
                "id": r.record_id,
                "identifier": r.identifier,
                "kind": r.kind,
                "version": r.version,
                "outcome": r.outcome.value,
                "status_url": _status_url(r.record_id),
            }
            for r in results
        ]
    }
    body = orjson.dumps(envelope, option=orjson.OPT_APPEND_NEWLINE)
    return current_app.response_class(body, mimetype="application/json"), 201 if changed else 200


def _status_json(status: SyncStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    failed = status.state in (SyncState.FAILED, SyncState.DEAD_LETTERED)
    return {
        "id": status.record_id,
        "version": status.record_version,
        "state": status.state,
        "attempts": status.attempts,
        "lost_leases": status.lost_leases,
        "held_reason": status.held_reason if status.state is SyncState.HELD else None,
        "next_attempt_at": status.next_attempt_at if status.state is SyncState.FAILED else None,
        "outcome": dict(status.last_outcome) if failed and status.last_outcome else None,
        "sent": [
            {"resource_type": s.resource_type, "id": s.id, "version_id": s.version_id}
            for s in status.sent
        ],
        "updated_at": status.updated_at,
        "retraction": status.retraction,
        "conflict": status.conflict,
        "conflict_versions": [
            {"resource_type": s.resource_type, "id": s.id, "version_id": s.version_id}
            for s in status.conflict_versions
        ],
    }


#: The scope a key needs to read a session note's text through the API (see ``docs/notes.md``).
NOTE_TEXT_SCOPE: Final = "admin"

#: The marker that replaces withheld free text, by why it is withheld.
_WITHHELD_MARKERS: Final = {
    Withheld.PSYCHOTHERAPY_CONTENT: PSYCHOTHERAPY_CONTENT_WITHHELD,
    Withheld.NOTE_TEXT: NOTE_TEXT_WITHHELD,
}


def _may_read_note_text() -> bool:
    """Whether the request's key may read session-note text: deny by default (no key in the
    request context, or a key without :data:`NOTE_TEXT_SCOPE`, reads no text)."""
    key = g.get("api_key")
    return key is not None and grants(key.scopes, NOTE_TEXT_SCOPE)


def record_json(record: StoredRecord, status: SyncStatus | None) -> dict[str, Any]:
    """A stored record as the API returns it, its free text withheld by the one rule of
    ``usecases/withholding.py`` (``note_text_withheld`` true): psychotherapy-note content
    (PSYTHPN: a psychotherapy note, a rupture's or repair's narrative) from every key, ``admin``
    included; a session note's text unless the request's key has :data:`NOTE_TEXT_SCOPE`."""
    body = dict(record.body)
    withheld = withheld_text(record, note_text_readable=_may_read_note_text())
    if withheld is not None:
        body = withhold_record_text(body, _WITHHELD_MARKERS[withheld])
    return {
        "id": record.record_id,
        "identifier": record.identifier,
        "kind": record.kind,
        "family": record.family,
        "patient": record.patient,
        "version": record.version,
        "record": body,
        "note_text_withheld": withheld is not None,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "status": _status_json(status),
        "status_url": _status_url(record.record_id),
    }


def _store() -> Store:
    store: Store = _service().store
    return store


@blueprint.post("/records")
@require_scope("write")
@describe(body=list(RECORD_BODY_SCHEMAS.values()), response=IntakeResponseSchema, status=201)
def post_records() -> tuple[Any, int]:
    """Take in one record or a list (any record kind); all or nothing.

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
    results = intake_records(service.store, payloads, at=_now(), labels=labels)
    return intake_response(results)


@blueprint.post("/questionnaire-responses")
@require_scope("write")
@describe(body=QuestionnaireResponseBodySchema, response=IntakeResponseSchema, status=201)
def post_questionnaire_response() -> tuple[Any, int]:
    """Take in one FHIR QuestionnaireResponse: its alliance records are extracted and stored.

    ---
    post:
      responses:
        200:
          description: every record was unchanged; nothing new was stored
          content:
            application/json:
              schema: IntakeResponseSchema
    """
    results = intake_questionnaire_response(_store(), json_body(), at=_now())
    return intake_response(results)


@blueprint.get("/records/<record_id>")
@require_scope("read")
@describe(response=RecordSchema)
def get_record(record_id: str) -> Any:
    """One record's newest version, with its sync status."""
    store = _store()
    record = store.get_record(valid_record_id(record_id))
    if record is None:
        raise not_found()
    return dump(RecordSchema, record_json(record, store.sync_status(record.record_id)))


@blueprint.get("/patients/<path:ref>/records")
@require_scope("read")
@describe(query=PageQuerySchema, response=RecordPageSchema)
def list_patient_records(ref: str) -> Any:
    """A patient's records (observations and consents), keyset paged by record id.

    ---
    get:
      responses:
        422:
          description: a bad patient reference or paging parameter, or one given twice
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    key = patient_key(parse_party(ref, path="patient"))  # any spelling of the identifier
    query = load_or_raise(instance(PageQuerySchema), single_query_args())
    after = str(query["after"]) if query["after"] is not None else None
    store = _store()
    rows = store.list_records(patient=key, limit=query["limit"] + 1, after=after)
    page, more = rows[: query["limit"]], len(rows) > query["limit"]
    next_url = (
        url_for(
            "records.list_patient_records",
            ref=ref,
            after=page[-1].record_id,
            limit=query["limit"],
        )
        if more and page
        else None
    )
    envelope = {
        "records": [record_json(r, store.sync_status(r.record_id)) for r in page],
        "next": next_url,
    }
    return dump(RecordPageSchema, envelope)


@blueprint.get("/records/<record_id>/status")
@require_scope("read")
@describe(response=SyncStatusSchema)
def get_status(record_id: str) -> Any:
    """Queued; held with the reason; sent with server ids and versions; failed with the next
    attempt; dead-lettered with the OperationOutcome."""
    try:
        found = record_status(_store(), valid_record_id(record_id))
    except RecordNotFound:
        raise not_found() from None
    if found.sync is None:
        raise not_found("sync status")
    return dump(SyncStatusSchema, _status_json(found.sync))


@blueprint.post("/records/<record_id>/replay")
@require_scope("admin")
@describe(response=SyncStatusSchema)
def replay(record_id: str) -> Any:
    """Re-queue a dead-lettered record; 409 when it is not dead-lettered.

    ---
    post:
      responses:
        409:
          description: the record is not dead-lettered
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    try:
        found = replay_record(_store(), valid_record_id(record_id), at=_now())
    except RecordNotFound:
        raise not_found() from None
    except NotDeadLettered as exc:
        raise ApiError(409, str(exc)) from None
    assert found.sync is not None
    return dump(SyncStatusSchema, _status_json(found.sync))


@blueprint.post("/records/<record_id>/conflict")
@require_scope("admin")
@describe(body=ConflictDecisionSchema, response=SyncStatusSchema)
def decide_record_conflict(record_id: str) -> Any:
    """Decide a conflict flagged for a person (``CONFLICT_POLICY=flag``): ``overwrite`` queues
    our version again (gated as any send; If-Match the server's version the conflict was flagged
    against), ``keep-remote`` records the server's version as sent. ``against`` names the
    conflict decided: the status's ``conflict_versions`` as read, and ``record_version`` the
    version of our record (the status's ``version``), as read. Audited (by the API key's id); 409 when the record has no
    flagged conflict, or one against other versions or on another record version.

    ---
    post:
      responses:
        409:
          description: the record has no conflict flagged for a person to decide, or it is
            flagged against other server versions than ``against`` (decided and flagged again
            meanwhile; read the status again), or on another version of our record than
            ``record_version`` (a newer one was flagged), or, for keep-remote, the server's version at the
            conflict was not noted; nothing changed
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    valid_id = valid_record_id(record_id)
    body = load_or_raise(instance(ConflictDecisionSchema), json_body())
    against = [SentResource(v["resource_type"], v["id"], v["version_id"]) for v in body["against"]]
    try:
        found = decide_conflict(
            _store(),
            valid_id,
            body["decision"],
            against=against,
            record_version=body["record_version"],
            decided_by=g.api_key.key_id,
            at=_now(),
        )
    except RecordNotFound:
        raise not_found() from None
    except ConflictChanged as exc:  # ``against`` or ``record_version`` no longer holds
        issue = Issue(path=exc.path, message=str(exc), code="conflict")
        raise ApiError(409, str(exc), issues=[issue]) from None
    except (NotFlagged, ServerVersionsUnknown) as exc:
        raise ApiError(409, str(exc)) from None
    assert found.sync is not None
    return dump(SyncStatusSchema, _status_json(found.sync))
