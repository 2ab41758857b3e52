"""marshmallow schema for the JSON form of session notes (``kind: "session-note"``).

``load_note`` reads one note, ``dump_note`` writes it back (``load_note(dump_note(n)) == n``).
Unknown fields are refused; errors are :class:`~fhir_alliance.errors.InputError` with one issue per
field path (``ai_drafting.inputs.0``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

from marshmallow import ValidationError, fields, post_load, validates_schema
from marshmallow.validate import Length

from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Ref
from fhir_alliance.model.notes import (
    SIGNED_STATUSES,
    AiDrafting,
    AiLabelRemoval,
    DraftingInput,
    NoteCategory,
    NoteFormat,
    NoteSection,
    NoteStatus,
    SessionNote,
)
from fhir_alliance.schemas.common import (
    DEFAULT_FUTURE_TOLERANCE,
    AwareDateTime,
    IdentifierField,
    RefSchema,
    StrictSchema,
    dump_ref,
)
from fhir_alliance.schemas.compiled import load_or_raise_fast

__all__ = ["KIND_SESSION_NOTE", "KINDS", "NOTE_TEXT_LIMIT", "dump_note", "load_note"]

KIND_SESSION_NOTE = "session-note"
KINDS = frozenset({KIND_SESSION_NOTE})

#: Longest note text (characters); a session note is a few pages at most.
NOTE_TEXT_LIMIT = 100_000
_SHORT_LIMIT = 200
_STATEMENT_LIMIT = 2_000
_MAX_SECTIONS = 50
_MAX_REFS = 100

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text(limit: int) -> Any:
    """Text FHIR can carry: not blank, at most ``limit`` characters, no control characters other
    than tab and line breaks."""

    def check(value: str) -> None:
        if not value.strip() or len(value) > limit:
            raise ValidationError(f"must be 1..{limit} characters and not blank")
        if _CONTROL.search(value):
            raise ValidationError("must not contain control characters")

    return check


def _unique(values: list[Any]) -> None:
    if len(set(values)) != len(values):
        raise ValidationError("entries repeat")


class AiDraftingSchema(StrictSchema):
    tool = fields.String(required=True, validate=_text(_SHORT_LIMIT))
    version = fields.String(required=True, validate=_text(_SHORT_LIMIT))
    inputs = fields.List(
        fields.Enum(DraftingInput, by_value=True),
        required=True,
        validate=[Length(min=1, max=len(DraftingInput)), _unique],
    )
    sources = fields.List(
        fields.Nested(RefSchema), load_default=list, validate=Length(max=_MAX_REFS)
    )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> AiDrafting:
        return AiDrafting(
            tool=data["tool"],
            version=data["version"],
            inputs=tuple(data["inputs"]),
            sources=tuple(data["sources"]),
        )


class AiLabelRemovalSchema(StrictSchema):
    by = fields.Nested(RefSchema, required=True)
    at = AwareDateTime(required=True)
    statement = fields.String(required=True, validate=_text(_STATEMENT_LIMIT))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> AiLabelRemoval:
        return AiLabelRemoval(**data)


class NoteSectionSchema(StrictSchema):
    title = fields.String(required=True, validate=_text(_SHORT_LIMIT))
    text = fields.String(required=True, validate=_text(NOTE_TEXT_LIMIT))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> NoteSection:
        return NoteSection(**data)


class SessionNoteSchema(StrictSchema):
    kind = fields.String(required=True)
    id = IdentifierField(required=True)
    #: Required, never defaulted: the therapist says whether this is psychotherapy-note content.
    category = fields.Enum(NoteCategory, by_value=True, required=True)
    patient = fields.Nested(RefSchema, required=True)
    encounter = fields.Nested(RefSchema, required=True)
    author = fields.Nested(RefSchema, required=True)
    session_at = AwareDateTime(required=True)
    written_at = AwareDateTime(required=True)
    text = fields.String(required=True, validate=_text(NOTE_TEXT_LIMIT))
    format = fields.Enum(NoteFormat, by_value=True, load_default=NoteFormat.MARKDOWN)
    status = fields.Enum(NoteStatus, by_value=True, load_default=NoteStatus.DRAFT)
    sections = fields.List(
        fields.Nested(NoteSectionSchema), load_default=list, validate=Length(max=_MAX_SECTIONS)
    )
    ai_drafting = fields.Nested(AiDraftingSchema, load_default=None)
    ai_label_removal = fields.Nested(AiLabelRemovalSchema, load_default=None)
    signed_by = fields.Nested(RefSchema, load_default=None)
    signed_at = AwareDateTime(load_default=None)
    observations = fields.List(
        fields.Nested(RefSchema), load_default=list, validate=Length(max=_MAX_REFS)
    )

    def __init__(self, *, future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE) -> None:
        super().__init__()
        for name in ("session_at", "written_at", "signed_at"):
            field = self.fields[name]
            assert isinstance(field, AwareDateTime)
            field.future_tolerance = future_tolerance
        removal = self.fields["ai_label_removal"]
        assert isinstance(removal, fields.Nested)
        removal_at = removal.schema.fields["at"]
        assert isinstance(removal_at, AwareDateTime)
        removal_at.future_tolerance = future_tolerance

    @validates_schema
    def _coherent(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        if data.get("kind") != KIND_SESSION_NOTE:
            errors["kind"] = [f"expected {KIND_SESSION_NOTE!r}"]
        status = data.get("status")
        signed_by, signed_at = data.get("signed_by"), data.get("signed_at")
        if status in SIGNED_STATUSES:
            if signed_by is None:
                errors["signed_by"] = [f"required when the status is {status.value}"]
            if signed_at is None:
                errors["signed_at"] = [f"required when the status is {status.value}"]
        elif status is NoteStatus.DRAFT:
            for name, value in (("signed_by", signed_by), ("signed_at", signed_at)):
                if value is not None:
                    errors[name] = ["a draft is not signed; sign it to make it final"]
        elif (signed_by is None) != (signed_at is None):
            errors["signed_at" if signed_at is None else "signed_by"] = [
                "signed_by and signed_at are given together"
            ]
        if data.get("ai_label_removal") is not None and data.get("ai_drafting") is None:
            errors["ai_label_removal"] = ["only an AI-drafted note can drop the AI label"]
        session_at, written_at = data.get("session_at"), data.get("written_at")
        if session_at is not None and written_at is not None and written_at < session_at:
            errors["written_at"] = ["a note is written at or after its session"]
        if signed_at is not None and written_at is not None and signed_at < written_at:
            errors["signed_at"] = ["a note is signed at or after it was written"]
        if errors:
            raise ValidationError(errors)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> SessionNote:
        data.pop("kind")
        data["sections"] = tuple(data["sections"])
        data["observations"] = tuple(data["observations"])
        return SessionNote(**data)


@lru_cache(maxsize=16)
def _schema(future_tolerance: timedelta) -> SessionNoteSchema:
    return SessionNoteSchema(future_tolerance=future_tolerance)


def load_note(
    data: object, *, prefix: str = "", future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE
) -> SessionNote:
    """One session note from its JSON form; raises :class:`InputError` naming each field path."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind != KIND_SESSION_NOTE:
        path = ".".join(p for p in (prefix, "kind") if p)
        message = f"expected kind {KIND_SESSION_NOTE!r}"
        raise InputError(message, issues=[Issue(path=path, message=message)])
    note: SessionNote = load_or_raise_fast(_schema(future_tolerance), data, prefix=prefix)
    return note


def _refs(refs: tuple[Ref, ...]) -> list[dict[str, str]]:
    return [dump_ref(r) for r in refs]


def dump_note(note: SessionNote) -> dict[str, Any]:
    """A note's JSON form (what :func:`load_note` reads); defaults are left out."""
    out: dict[str, Any] = {
        "kind": KIND_SESSION_NOTE,
        "id": str(note.id),
        "category": note.category.value,
        "patient": dump_ref(note.patient),
        "encounter": dump_ref(note.encounter),
        "author": dump_ref(note.author),
        "session_at": note.session_at.isoformat(),
        "written_at": note.written_at.isoformat(),
        "text": note.text,
    }
    if note.format is not NoteFormat.MARKDOWN:
        out["format"] = note.format.value
    if note.status is not NoteStatus.DRAFT:
        out["status"] = note.status.value
    if note.sections:
        out["sections"] = [{"title": s.title, "text": s.text} for s in note.sections]
    if note.ai_drafting is not None:
        ai = note.ai_drafting
        out["ai_drafting"] = {
            "tool": ai.tool,
            "version": ai.version,
            "inputs": [i.value for i in ai.inputs],
        }
        if ai.sources:
            out["ai_drafting"]["sources"] = _refs(ai.sources)
    if note.ai_label_removal is not None:
        removal = note.ai_label_removal
        out["ai_label_removal"] = {
            "by": dump_ref(removal.by),
            "at": removal.at.isoformat(),
            "statement": removal.statement,
        }
    if note.signed_by is not None:
        out["signed_by"] = dump_ref(note.signed_by)
    if note.signed_at is not None:
        out["signed_at"] = note.signed_at.isoformat()
    if note.observations:
        out["observations"] = _refs(note.observations)
    return out
