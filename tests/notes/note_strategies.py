"""Hypothesis strategies for valid session notes (shared by the notes tests)."""

from datetime import timedelta

from hypothesis import strategies as st

from fhir_alliance.model.notes import (
    AiDrafting,
    AiLabelRemoval,
    DraftingInput,
    NoteCategory,
    NoteFormat,
    NoteSection,
    NoteStatus,
    SessionNote,
)
from tests.mapping.observation_strategies import identifiers, instants, refs

#: Note text: any printable Unicode (accents, emoji, CJK), tabs and line breaks; never blank.
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x7f")
    | st.sampled_from("\n\t\r"),
    min_size=1,
    max_size=200,
).filter(lambda s: s.strip())

ai_draftings = st.builds(
    AiDrafting,
    tool=_text.filter(lambda s: len(s) <= 200),
    version=_text.filter(lambda s: len(s) <= 200),
    inputs=st.lists(st.sampled_from(list(DraftingInput)), min_size=1, unique=True).map(tuple),
    sources=st.lists(refs("DocumentReference"), max_size=2).map(tuple),
)


@st.composite
def notes(draw: st.DrawFn, *, ai: bool | None = None) -> SessionNote:
    """A valid note; ``ai`` True/False forces an AI-drafted or a hand-written one."""
    session_at = draw(instants)
    written_at = session_at + draw(st.timedeltas(timedelta(0), timedelta(days=3)))
    status = draw(st.sampled_from(list(NoteStatus)))
    signed = status in (NoteStatus.FINAL, NoteStatus.AMENDED) or (
        status is NoteStatus.ENTERED_IN_ERROR and draw(st.booleans())
    )
    drafting = draw(ai_draftings) if (ai if ai is not None else draw(st.booleans())) else None
    removal = None
    if drafting is not None and draw(st.booleans()):
        removal = AiLabelRemoval(
            by=draw(refs("Practitioner")), at=written_at, statement=draw(_text)
        )
    return SessionNote(
        id=draw(identifiers),
        category=draw(st.sampled_from(list(NoteCategory))),
        patient=draw(refs("Patient")),
        encounter=draw(refs("Encounter")),
        author=draw(refs("Practitioner")),
        session_at=session_at,
        written_at=written_at,
        text=draw(_text),
        format=draw(st.sampled_from(list(NoteFormat))),
        status=status,
        sections=tuple(draw(st.lists(st.builds(NoteSection, title=_text, text=_text), max_size=2))),
        ai_drafting=drafting,
        ai_label_removal=removal,
        signed_by=draw(refs("Practitioner")) if signed else None,
        signed_at=written_at + timedelta(minutes=5) if signed else None,
        observations=tuple(draw(st.lists(refs("Observation"), max_size=2))),
    )
