"""Session notes in the service: the AI-notes consent check at intake, and signing a draft.

* :func:`ai_drafting_issues`: an AI-drafted note is refused at intake unless the client's
  recording/AI-notes consent (stored, or in the same batch) permitted AI drafting at the session
  time. Intake (``usecases/intake.py``) calls it for every note, whichever route it came by.
* :func:`sign_note`: the therapist signs a stored draft; the final version is a new version of the
  same record (same DocumentReference id on the server), queued like any other change.

The gate (``sync/gate.py``) holds drafts unless ``settings.push_draft_notes``, and holds AI-drafted
notes whose consent was revoked since (:func:`fhir_alliance.mapping.note.ai_disclosure_permitted`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from fhir_alliance.consent import DecisionOutcome
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.mapping.note import MAPPER as NOTE_MAPPER
from fhir_alliance.mapping.note import ai_drafting_decision
from fhir_alliance.model.common import Ref
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.model.notes import NoteStatus, SessionNote
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.consents import engine_for_patient, patient_key

__all__ = [
    "FAMILY_NOTE",
    "AI_NOT_PERMITTED",
    "NOTE_TEXT_WITHHELD",
    "NoteNotFound",
    "NotADraft",
    "ai_drafting_issues",
    "sign_note",
]

FAMILY_NOTE = "note"

#: The issue an AI-drafted note without the client's permission gets (never names the client).
AI_NOT_PERMITTED = (
    "the client's recording/AI-notes consent does not permit AI drafting at the session time"
)
_CONSENT_UNREADABLE = "a consent of this client could not be read; AI drafting cannot be checked"


#: What the API returns instead of a session note's free text to a key without ``admin``
#: (``usecases/withholding.py`` decides; psychotherapy-note content has a marker of its own).
NOTE_TEXT_WITHHELD: Final = "(withheld: a session note's text needs the admin scope)"


class NoteNotFound(LookupError):
    """No session note has this record id."""


class NotADraft(ValueError):
    """Only a draft can be signed."""


def _at(label: str, path: str) -> str:
    return ".".join(p for p in (label, path) if p)


def ai_drafting_issues(
    store: Store,
    labelled: Sequence[tuple[str, SessionNote]],
    batch_consents: Sequence[ConsentRecord] = (),
) -> list[Issue]:
    """One issue at ``{label}.ai_drafting`` per AI-drafted note whose drafting the client's
    recording/AI-notes consent did not permit at the session time. Consents of the same batch count
    over the stored versions of the same consent; an unreadable stored consent refuses the note."""
    issues: list[Issue] = []
    for label, note in labelled:
        if note.ai_drafting is None:
            continue
        stored = engine_for_patient(store, patient_key(note.patient))
        if stored.unreadable:
            issues.append(Issue(_at(label, "ai_drafting"), _CONSENT_UNREADABLE, "business-rule"))
            continue
        in_batch = {c.id: c for c in batch_consents}
        consents = [c for c in stored.records if c.id not in in_batch] + list(in_batch.values())
        decision = ai_drafting_decision(consents, note)
        if decision.outcome is not DecisionOutcome.PERMIT:
            issues.append(Issue(_at(label, "ai_drafting"), AI_NOT_PERMITTED, "business-rule"))
    return issues


def signed_payload(body: dict[str, Any], *, signed_by: Ref, signed_at: datetime) -> dict[str, Any]:
    """The JSON form of the final version of the draft ``body``."""
    note = NOTE_MAPPER.load(body)
    if note.status is not NoteStatus.DRAFT:
        raise NotADraft(f"only a draft can be signed; this note is {note.status.value}")
    if signed_at < note.written_at:
        raise InputError(
            "a note is signed at or after it was written",
            issues=[Issue("signed_at", "a note is signed at or after it was written")],
        )
    final = replace(note, status=NoteStatus.FINAL, signed_by=signed_by, signed_at=signed_at)
    return NOTE_MAPPER.dump(final)


def sign_note(
    store: Store, record_id: str, *, signed_by: Ref, signed_at: datetime, at: datetime
) -> Any:
    """Sign the stored draft ``record_id``: its final version is taken in as a new version of the
    same record (queued; pushed as a new version of the same DocumentReference). Raises
    :class:`NoteNotFound`, :class:`NotADraft`, or :class:`InputError` for a bad signature."""
    from fhir_alliance_service.usecases.intake import intake_records

    stored = store.get_record(record_id)
    if stored is None or stored.family != FAMILY_NOTE:
        raise NoteNotFound("no such note")
    payload = signed_payload(dict(stored.body), signed_by=signed_by, signed_at=signed_at)
    return intake_records(store, [payload], at=at, labels=[""])[0]
