"""Session notes: a therapist's note of one session, possibly drafted by an AI tool, signed when final.

A :class:`SessionNote` says explicitly what kind of content it holds (:class:`NoteCategory`): a
progress note goes to the record; psychotherapy-note content (process notes, hypotheses, session
narrative; 45 CFR 164.501) is posted as a note of its own, labelled PSYTHPN by the mapping, so it
never leaves without an explicit permit. The split is never guessed from the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fhir_alliance.model.common import Identifier, Ref

__all__ = [
    "SIGNED_STATUSES",
    "AiDrafting",
    "AiLabelRemoval",
    "DraftingInput",
    "NoteCategory",
    "NoteFormat",
    "NoteSection",
    "NoteStatus",
    "SessionNote",
]


class NoteStatus(StrEnum):
    """``draft`` until the therapist signs; ``final`` once signed; ``amended`` after a signed edit."""

    DRAFT = "draft"
    FINAL = "final"
    AMENDED = "amended"
    ENTERED_IN_ERROR = "entered-in-error"


#: Statuses that need the signing therapist and time.
SIGNED_STATUSES = frozenset({NoteStatus.FINAL, NoteStatus.AMENDED})


class NoteCategory(StrEnum):
    """What the note's content is, as the therapist marked it (our ``session-note-content`` codes)."""

    PROGRESS_NOTE = "progress-note"
    PSYCHOTHERAPY_NOTE = "psychotherapy-note"


class NoteFormat(StrEnum):
    """The media type of the note text (the FHIR attachment's ``contentType``)."""

    MARKDOWN = "text/markdown"
    PLAIN = "text/plain"


class DraftingInput(StrEnum):
    """What an AI tool took as input to draft a note (our ``note-drafting-inputs`` codes)."""

    RECORDING = "recording"
    TRANSCRIPT = "transcript"
    DICTATION = "dictation"


@dataclass(frozen=True, slots=True)
class AiDrafting:
    """The AI tool that drafted the note: name, version, what it took as input (kinds, at least
    one), and the input resources themselves where they are known (the recording, the transcript)."""

    tool: str
    version: str
    inputs: tuple[DraftingInput, ...]
    sources: tuple[Ref, ...] = ()

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("an AI drafting names at least one input")


@dataclass(frozen=True, slots=True)
class AiLabelRemoval:
    """The therapist's explicit statement that they rewrote the AI draft entirely: the only way an
    AI-drafted note loses its AIAST label (the Provenance still names the tool)."""

    by: Ref
    at: datetime
    statement: str


@dataclass(frozen=True, slots=True)
class NoteSection:
    """An optional structured part of the note (e.g. "Assessment"), in the note's format."""

    title: str
    text: str


@dataclass(frozen=True, slots=True)
class SessionNote:
    """A note of one session. ``session_at`` is when the session took place (the consent gate asks
    about that instant), ``written_at`` when this version of the note was written. ``observations``
    are the alliance Observations of the session, where given."""

    id: Identifier
    category: NoteCategory
    patient: Ref
    encounter: Ref
    author: Ref
    session_at: datetime
    written_at: datetime
    text: str
    format: NoteFormat = NoteFormat.MARKDOWN
    status: NoteStatus = NoteStatus.DRAFT
    sections: tuple[NoteSection, ...] = ()
    ai_drafting: AiDrafting | None = None
    ai_label_removal: AiLabelRemoval | None = None
    signed_by: Ref | None = None
    signed_at: datetime | None = None
    observations: tuple[Ref, ...] = ()

    def __post_init__(self) -> None:
        if self.status in SIGNED_STATUSES and (self.signed_by is None or self.signed_at is None):
            raise ValueError("a final or amended note names who signed it and when")
        if self.status is NoteStatus.DRAFT and (
            self.signed_by is not None or self.signed_at is not None
        ):
            raise ValueError("a draft is not signed")
        if (self.signed_by is None) != (self.signed_at is None):
            raise ValueError("signed_by and signed_at are given together")
        if self.ai_label_removal is not None and self.ai_drafting is None:
            raise ValueError("only an AI-drafted note can drop the AI label")

    @property
    def ai_labelled(self) -> bool:
        """Whether the content carries the AIAST label: AI-drafted, and not explicitly rewritten."""
        return self.ai_drafting is not None and self.ai_label_removal is None
