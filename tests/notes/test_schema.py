"""The JSON form of session notes: unknown fields refused, errors keyed by field path, signing rules."""

import json
from pathlib import Path

import pytest

from fhir_alliance.errors import InputError
from fhir_alliance.model.notes import NoteCategory, NoteStatus
from fhir_alliance.schemas.notes import load_note

ROOT = Path(__file__).resolve().parents[2]


def _payload(name: str = "ai-drafted-progress-note") -> dict:
    return json.loads((ROOT / "examples" / "notes" / f"{name}.json").read_text())


def _paths(payload: dict) -> set[str]:
    with pytest.raises(InputError) as caught:
        load_note(payload)
    return {issue.path for issue in caught.value.issues}


def test_example_loads() -> None:
    """The example note loads as a draft progress note drafted by AI."""
    note = load_note(_payload())
    assert (note.category, note.status) == (NoteCategory.PROGRESS_NOTE, NoteStatus.DRAFT)
    assert note.ai_labelled


def test_unknown_fields_are_refused_by_path() -> None:
    """An unknown field, at the top or nested, is an error at its path (never dropped)."""
    payload = _payload()
    payload["mood"] = "good"
    payload["ai_drafting"]["temperature"] = 0.2
    assert _paths(payload) == {"mood", "ai_drafting.temperature"}


def test_category_is_required_never_guessed() -> None:
    """Without the explicit progress/psychotherapy marking the note is refused."""
    payload = _payload()
    del payload["category"]
    assert _paths(payload) == {"category"}


def test_nested_errors_name_the_field_path() -> None:
    """A bad input kind and a blank section text are reported at their own paths."""
    payload = _payload()
    payload["ai_drafting"]["inputs"] = ["recording", "telepathy"]
    payload["sections"][0]["text"] = "   "
    assert _paths(payload) == {"ai_drafting.inputs.1", "sections.0.text"}


def test_draft_cannot_carry_a_signature() -> None:
    """A draft with signed_by is refused: signing is what makes it final."""
    payload = _payload()
    payload["signed_by"] = {"reference": "Practitioner/t1"}
    assert _paths(payload) == {"signed_by"}


def test_final_note_needs_its_signature() -> None:
    """A final note without signed_by and signed_at is refused at both paths."""
    payload = _payload("psychotherapy-note")
    del payload["signed_by"], payload["signed_at"]
    assert _paths(payload) == {"signed_by", "signed_at"}


def test_label_removal_needs_ai_drafting() -> None:
    """Only an AI-drafted note can state the AI label away."""
    payload = _payload("signed-rewritten-note")
    del payload["ai_drafting"]
    assert _paths(payload) == {"ai_label_removal"}


def test_times_must_be_in_order() -> None:
    """A note written before its session, or signed before written, is refused."""
    payload = _payload("psychotherapy-note")
    payload["written_at"] = "2025-06-09T14:00:00+00:00"
    payload["signed_at"] = "2025-06-09T13:00:00+00:00"
    assert _paths(payload) == {"written_at", "signed_at"}


def test_control_characters_are_refused() -> None:
    """Text FHIR cannot carry (a NUL) is refused at its path."""
    payload = _payload()
    payload["text"] = "ok\x00"
    assert _paths(payload) == {"text"}
