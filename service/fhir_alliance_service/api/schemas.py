"""Marshmallow schemas of the /v1 records and consents API: the response envelopes the views dump,
the small request forms they load (query strings, the revoke body), and the request bodies as the
library defines them. The OpenAPI document is generated from these same classes.

Request bodies of records and consents are the library's own schemas (``fhir_alliance.schemas``);
:data:`RECORD_BODY_SCHEMAS` names them so the OpenAPI document can reference them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from marshmallow import INCLUDE, Schema, fields, validate

from fhir_alliance.schemas.common import AwareDateTime, CodingSchema, RefSchema, StrictSchema
from fhir_alliance.schemas.consent import ConsentRecordSchema, ConsentRevocationSchema
from fhir_alliance.schemas.notes import SessionNoteSchema
from fhir_alliance.schemas.observations import (
    DimensionRatingSchema,
    InstrumentAdministrationSchema,
    RepairEventSchema,
    RuptureEventSchema,
)
from fhir_alliance_service.store.interface import PutOutcome, SyncState

__all__ = [
    "RECORD_BODY_SCHEMAS",
    "ConflictDecisionSchema",
    "ConflictVersionSchema",
    "DecisionQuerySchema",
    "DecisionSchema",
    "IntakeResponseSchema",
    "PageQuerySchema",
    "QuestionnaireResponseBodySchema",
    "RecordIntakeSchema",
    "RecordPageSchema",
    "RecordSchema",
    "RevokeRequestSchema",
    "SentResourceSchema",
    "SyncStatusSchema",
]

#: The library's schema of each record kind a body may carry (the OpenAPI request bodies).
RECORD_BODY_SCHEMAS: dict[str, type[Schema]] = {
    "instrument-administration": InstrumentAdministrationSchema,
    "dimension-rating": DimensionRatingSchema,
    "rupture": RuptureEventSchema,
    "repair": RepairEventSchema,
    "consent": ConsentRecordSchema,
    "consent-revocation": ConsentRevocationSchema,
    "session-note": SessionNoteSchema,
}

#: Largest page of records a client may ask for.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


# --- requests ----------------------------------------------------------------------------------


class PageQuerySchema(StrictSchema):
    """``?after=<record id>&limit=<1..1000>``: keyset paging over record ids."""

    after = fields.UUID(load_default=None)
    limit = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1, max=MAX_PAGE_SIZE)
    )


class DecisionQuerySchema(StrictSchema):
    """``?recipient=…&purpose=…[&action=…&at=…]``; ``recipient`` is ``Type/id`` or ``system|value``,
    ``purpose`` a v3 PurposeOfUse code, ``action`` a consentaction code (default ``disclose``),
    ``at`` an instant with a UTC offset (default now)."""

    recipient = fields.String(required=True, validate=validate.Length(min=1, max=512))
    purpose = fields.String(required=True, validate=validate.Length(min=1, max=64))
    action = fields.String(load_default="disclose", validate=validate.Length(min=1, max=64))
    at = AwareDateTime(future_tolerance=None, load_default=None)


class RevokeRequestSchema(StrictSchema):
    """The body of ``POST /v1/consents/<id>/revoke``: when, and optionally who and why."""

    at = AwareDateTime(required=True)
    by = fields.Nested(RefSchema, load_default=None)
    reason = fields.Nested(CodingSchema, load_default=None)


class ConflictVersionSchema(StrictSchema):
    """One server version a conflict decision is made against, as the status's
    ``conflict_versions`` lists it."""

    resource_type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    version_id = fields.String(required=True, allow_none=True, validate=validate.Length(max=64))


class ConflictDecisionSchema(StrictSchema):
    """The body of ``POST /v1/records/<id>/conflict``: a person's decision on a conflict flagged
    for them (``CONFLICT_POLICY=flag``)."""

    decision = fields.String(
        required=True,
        validate=validate.OneOf(["overwrite", "keep-remote"]),
        metadata={
            "description": "overwrite: our version is sent again (gated; If-Match the server's "
            "version the conflict was flagged against, so a later change is flagged again); "
            "keep-remote: the server's version is kept and recorded as sent"
        },
    )
    against = fields.List(
        fields.Nested(ConflictVersionSchema),
        required=True,
        validate=validate.Length(max=100),
        metadata={
            "description": "the conflict this decision is made on: the status's "
            "conflict_versions as read (any order; [] when none were noted), like If-Match. "
            "When the record is flagged against other versions now (decided and flagged again "
            "meanwhile), the answer is 409 and nothing changes"
        },
    )
    record_version = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1),
        metadata={
            "description": "the version of our record this decision is made on: the status's "
            "version as read. When the conflict is on another version now (a newer one "
            "was taken in and flagged, perhaps against the same server versions), the answer is "
            "409 and nothing changes"
        },
    )


class QuestionnaireResponseBodySchema(Schema):
    """A FHIR QuestionnaireResponse (R4 or R5) of one of our Questionnaires; documented here, read
    by the library's extraction (``fhir_alliance.mapping.questionnaire``)."""

    class Meta:
        unknown = INCLUDE

    resourceType = fields.String(required=True, validate=validate.Equal("QuestionnaireResponse"))
    identifier = fields.Raw(required=True, metadata={"description": "business identifier"})
    questionnaire = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["completed", "amended"]))
    subject = fields.Dict(required=True)
    authored = fields.String(required=True)
    author = fields.Dict()
    item = fields.List(fields.Dict(), required=True)


# --- responses ---------------------------------------------------------------------------------


class RecordIntakeSchema(Schema):
    """What happened to one posted record."""

    id = fields.String(required=True, metadata={"description": "opaque record id (UUIDv5)"})
    identifier = fields.String(required=True, metadata={"description": "business identifier"})
    kind = fields.String(required=True)
    version = fields.Integer(required=True)
    outcome = fields.Enum(PutOutcome, by_value=True, required=True)
    status_url = fields.String(required=True)


class IntakeResponseSchema(Schema):
    records = fields.List(fields.Nested(RecordIntakeSchema), required=True)


class SentResourceSchema(Schema):
    resource_type = fields.String(required=True)
    id = fields.String(required=True)
    version_id = fields.String(allow_none=True)


class SyncStatusSchema(Schema):
    """The sync state of a record's newest version; the fields that do not apply are null."""

    id = fields.String(required=True)
    version = fields.Integer(required=True, metadata={"description": "the record version synced"})
    state = fields.Enum(SyncState, by_value=True, required=True)
    attempts = fields.Integer(
        required=True, metadata={"description": "failed sends (transient failures) so far"}
    )
    lost_leases = fields.Integer(
        required=True,
        metadata={
            "description": "workers that stopped on this item without a result (crashed, hung, "
            "or lost the database) since its last result; at max_attempts in a row the item is "
            "dead-lettered as a poison record"
        },
    )
    held_reason = fields.String(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    outcome = fields.Dict(
        allow_none=True, metadata={"description": "OperationOutcome of the last failure"}
    )
    sent = fields.List(fields.Nested(SentResourceSchema), required=True)
    updated_at = fields.DateTime(allow_none=True)
    retraction = fields.String(
        allow_none=True,
        metadata={
            "description": "two-way sync: what the retraction policy did with the data already "
            "shared (kept, entered-in-error, deleted)"
        },
    )
    conflict = fields.String(
        allow_none=True,
        metadata={
            "description": "two-way sync: how a change by someone else on the server was settled "
            "(remote-edited, overwritten, kept-remote, flagged, withdrawal-reasserted, "
            "withdrawn-on-server: our consent deleted there, revoked here; a person's decision "
            "on a flagged one: decided-overwrite, decided-keep-remote)"
        },
    )
    conflict_versions = fields.List(
        fields.Nested(SentResourceSchema),
        required=True,
        metadata={
            "description": "a conflict flagged for a person: the server's versions then (someone "
            "else's writes), which a decision is made against"
        },
    )


class RecordSchema(Schema):
    """A stored record (its newest version), in our JSON form, with its sync status."""

    id = fields.String(required=True)
    identifier = fields.String(required=True)
    kind = fields.String(required=True)
    family = fields.String(required=True)
    patient = fields.String(required=True)
    version = fields.Integer(required=True)
    record = fields.Dict(
        required=True,
        metadata={
            "description": "the record in our JSON form; its free text (a note's text, section "
            "titles and texts and label-removal statement, a rupture's or repair's narrative) "
            "reads a withheld marker when it is psychotherapy-note content (labelled PSYTHPN: "
            "withheld from every key, admin included) or a session note's text and the key "
            "lacks admin"
        },
    )
    note_text_withheld = fields.Boolean(
        required=True,
        metadata={
            "description": "true when free text in record was replaced by a withheld marker "
            "(psychotherapy-note content, or a session note's text and the key lacks the admin "
            "scope); false otherwise"
        },
    )
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    status = fields.Nested(SyncStatusSchema, allow_none=True)
    status_url = fields.String(required=True)


class RecordPageSchema(Schema):
    records = fields.List(fields.Nested(RecordSchema), required=True)
    next = fields.String(
        allow_none=True, metadata={"description": "URL of the next page; null on the last"}
    )


class _BasisSchema(Schema):
    consent = fields.String(required=True)
    provision = fields.String(required=True)
    decision = fields.String(required=True)
    consent_date = fields.String(required=True)


class _ObligationSchema(Schema):
    mode = fields.String(required=True)
    labels = fields.List(fields.Dict())
    codes = fields.List(fields.Dict())
    classes = fields.List(fields.Dict())
    data_period = fields.Dict()
    data = fields.List(fields.Dict())
    basis = fields.List(fields.Nested(_BasisSchema))


class DecisionSchema(Schema):
    """The engine's answer for a patient: outcome, deciding consents and provisions, obligations,
    notes, and the same in words."""

    decision = fields.String(
        required=True, validate=validate.OneOf(["permit", "deny", "no-consent"])
    )
    combining = fields.String(required=True)
    basis = fields.List(fields.Nested(_BasisSchema), required=True)
    obligations = fields.List(fields.Nested(_ObligationSchema), required=True)
    notes = fields.List(fields.String(), required=True)
    explanation = fields.String(required=True)
    unreadable_consents = fields.Integer(
        required=True, metadata={"description": "stored consents that could not be read"}
    )


@cache
def instance(schema: type[Schema]) -> Schema:
    """One shared instance per schema class: building a marshmallow schema costs more than using
    it, and these schemas keep no state between calls."""
    return schema()


def dump(schema: type[Schema], value: Any) -> Any:
    """Render ``value`` with ``schema``: one place the views render envelopes through."""
    return instance(schema).dump(value)
