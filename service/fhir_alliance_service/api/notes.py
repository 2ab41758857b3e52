"""The /v1 routes for session notes: intake of notes and signing a draft. Reading a note and its
sync status use the record routes (``/v1/records/<id>``, ``/v1/records/<id>/status``). Thin:
parse → call a use case → render.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint
from marshmallow import fields

from fhir_alliance.errors import InputError, Issue
from fhir_alliance.schemas.common import AwareDateTime, RefSchema, StrictSchema, load_or_raise
from fhir_alliance.schemas.notes import KIND_SESSION_NOTE, SessionNoteSchema
from fhir_alliance_service.api.body import json_body
from fhir_alliance_service.api.openapi import describe
from fhir_alliance_service.api.records import (
    intake_response,
    not_found,
    request_payloads,
    valid_record_id,
)
from fhir_alliance_service.api.schemas import IntakeResponseSchema
from fhir_alliance_service.auth import require_scope
from fhir_alliance_service.errors import ApiError
from fhir_alliance_service.usecases.intake import intake_records
from fhir_alliance_service.usecases.notes import NotADraft, NoteNotFound, sign_note

__all__ = ["SignRequestSchema", "blueprint"]

blueprint = Blueprint("notes", __name__, url_prefix="/v1")


class SignRequestSchema(StrictSchema):
    """Who signs the draft, and when (not in the future)."""

    signed_by = fields.Nested(RefSchema, required=True)
    signed_at = AwareDateTime(required=True)


def _service() -> Any:
    from fhir_alliance_service.app import current_service

    return current_service()


def _now() -> datetime:
    return datetime.now(UTC)


def _only_notes(payloads: list[object], labels: list[str]) -> None:
    issues = [
        Issue(
            path=".".join(p for p in (label, "kind") if p),
            message=f"expected {KIND_SESSION_NOTE!r}",
        )
        for payload, label in zip(payloads, labels, strict=True)
        if isinstance(payload, dict) and payload.get("kind") != KIND_SESSION_NOTE
    ]
    if issues:
        raise InputError("only session notes are taken in here", issues=issues)


@blueprint.post("/notes")
@require_scope("write")
@describe(body=[SessionNoteSchema], response=IntakeResponseSchema, status=201)
def post_notes() -> tuple[Any, int]:
    """Take in one session note or a list; all or nothing. An AI-drafted note is refused (422)
    unless the client's recording/AI-notes consent permitted AI drafting at the session time.

    ---
    post:
      responses:
        200:
          description: every note was unchanged; nothing new was stored
          content:
            application/json:
              schema: IntakeResponseSchema
    """
    service = _service()
    payloads, labels = request_payloads(json_body(), limit=service.settings.max_records_per_request)
    _only_notes(payloads, labels)
    results = intake_records(service.store, payloads, at=_now(), labels=labels)
    return intake_response(results)


@blueprint.post("/notes/<record_id>/sign")
@require_scope("write")
@describe(body=SignRequestSchema, response=IntakeResponseSchema, status=201)
def sign(record_id: str) -> tuple[Any, int]:
    """Sign a draft note: its final version is queued as a new version of the same record and
    pushed as a new version of the same DocumentReference. 409 when the note is not a draft.

    ---
    post:
      responses:
        409:
          description: the note is not a draft
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    record_id = valid_record_id(record_id)
    signature = load_or_raise(SignRequestSchema(), json_body())
    try:
        result = sign_note(
            _service().store,
            record_id,
            signed_by=signature["signed_by"],
            signed_at=signature["signed_at"],
            at=_now(),
        )
    except NoteNotFound:
        raise not_found("note") from None
    except NotADraft as exc:
        raise ApiError(409, str(exc)) from None
    return intake_response([result])
