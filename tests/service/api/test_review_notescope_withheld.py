"""Review finding 4: a session note's text is withheld from every API key without ``admin``.

The console never shows note text (reception signs in to it with a ``read`` key); the API must not
hand the same ``read`` key the text either. Every route that returns stored records
(``GET /v1/records/<id>``, ``GET /v1/patients/<ref>/records``) replaces the note's ``text``, its
sections' ``title`` and ``text`` and the label-removal ``statement`` by a fixed marker and says so
in ``note_text_withheld``; an ``admin`` key reads the note whole. The intake answers
(``POST /v1/notes``, ``/v1/records``, ``/v1/notes/<id>/sign``) echo no body.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.api.records import record_json
from fhir_alliance_service.usecases.notes import NOTE_TEXT_WITHHELD
from fhir_alliance_service.usecases.withholding import (
    PSYCHOTHERAPY_CONTENT_WITHHELD,
    withhold_record_text,
)
from flask import Flask
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parents[3]
SECRET = "Process note: a withdrawal rupture around minute 20"
SECTION_TITLE = "Countertransference"
SECTION_TEXT = "Therapist noticed irritation when the client cancelled again."


def _note(*, status: str = "final", category: str = "psychotherapy-note") -> dict[str, Any]:
    """The docs' psychotherapy note (hand-written, so no AI-notes consent is needed), with a
    section, under a fresh identifier; ``category`` progress-note makes it a progress note."""
    note: dict[str, Any] = json.loads(
        (ROOT / "examples/notes/psychotherapy-note.json").read_text("utf-8")
    )
    note["id"] = f"https://clinic.example.org/notes|n-{uuid.uuid4().hex[:10]}"
    note["sections"] = [{"title": SECTION_TITLE, "text": SECTION_TEXT}]
    note["category"] = category
    if status == "draft":
        for name in ("status", "signed_by", "signed_at"):
            note.pop(name)
    assert SECRET in note["text"]
    return note


def _post_note(client: FlaskClient, headers: dict[str, str], note: dict[str, Any]) -> str:
    response = client.post("/v1/notes", json=note, headers=headers)
    assert response.status_code == 201, response.json
    record_id: str = response.json["records"][0]["id"]
    return record_id


def _assert_withheld(entry: dict[str, Any], note: dict[str, Any]) -> None:
    """The note's free text reads the marker for its reason: psychotherapy-note content goes to
    no key (its own marker); a progress note's text needs ``admin``."""
    assert entry["note_text_withheld"] is True
    body = entry["record"]
    marker = (
        PSYCHOTHERAPY_CONTENT_WITHHELD
        if note["category"] == "psychotherapy-note"
        else NOTE_TEXT_WITHHELD
    )
    assert body["text"] == marker
    assert body["sections"] == [{"title": marker, "text": marker}]
    # Everything but the free text stays: what kind of note, whose, its signature and status.
    kept = {k: v for k, v in note.items() if k not in ("text", "sections")}
    assert {k: body[k] for k in kept} == kept


def _assert_whole(entry: dict[str, Any], note: dict[str, Any]) -> None:
    assert entry["note_text_withheld"] is False
    assert entry["record"] == note


@pytest.fixture
def note_id(client: FlaskClient, auth_headers: dict[str, dict[str, str]]) -> tuple[str, Any]:
    note = _note()
    return _post_note(client, auth_headers["write"], note), note


def test_read_key_gets_a_note_without_its_text(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]], note_id: tuple[str, Any]
) -> None:
    """The finding's repro: the console's read key reads the record of a psychotherapy note."""
    record_id, note = note_id
    response = client.get(f"/v1/records/{record_id}", headers=auth_headers["read"])
    assert response.status_code == 200
    for secret in (SECRET, SECTION_TITLE, SECTION_TEXT):
        assert secret not in response.get_data(as_text=True)
    _assert_withheld(response.json, note)


def test_read_key_lists_a_patients_notes_without_their_text(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]], note_id: tuple[str, Any]
) -> None:
    _record_id, note = note_id
    for path in ("/v1/patients/Patient/p1/records", "/v1/patients/Patient%2Fp1/records"):
        response = client.get(path, headers=auth_headers["read"])
        assert response.status_code == 200
        for secret in (SECRET, SECTION_TITLE, SECTION_TEXT):
            assert secret not in response.get_data(as_text=True)
        (entry,) = [r for r in response.json["records"] if r["family"] == "note"]
        _assert_withheld(entry, note)


def test_admin_key_reads_a_progress_note_whole_and_no_psychotherapy_note(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]], note_id: tuple[str, Any]
) -> None:
    """``admin`` reads a progress note's text; a psychotherapy note's text goes to no key."""
    psychotherapy_id, psychotherapy = note_id
    withheld = client.get(f"/v1/records/{psychotherapy_id}", headers=auth_headers["admin"])
    _assert_withheld(withheld.json, psychotherapy)
    note = _note(category="progress-note")
    record_id = _post_note(client, auth_headers["write"], note)
    one = client.get(f"/v1/records/{record_id}", headers=auth_headers["admin"])
    _assert_whole(one.json, note)
    listed = client.get("/v1/patients/Patient/p1/records", headers=auth_headers["admin"])
    (entry,) = [r for r in listed.json["records"] if r["id"] == record_id]
    _assert_whole(entry, note)


def test_a_key_with_read_and_write_still_reads_no_text(
    client: FlaskClient, store: Any, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Only admin unlocks a progress note's text; read and write together do not."""
    from fhir_alliance_service.auth import create_api_key

    note = _note(category="progress-note")
    record_id = _post_note(client, auth_headers["write"], note)
    key = create_api_key(store, "reception and intake", ["read", "write"])
    response = client.get(f"/v1/records/{record_id}", headers={"Authorization": f"Bearer {key}"})
    _assert_withheld(response.json, note)


def test_other_records_are_not_touched(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A consent read with the read key comes back whole, and says nothing was withheld."""
    consent: dict[str, Any] = json.loads(
        (ROOT / "examples/consent/recording-ai-notes.json").read_text("utf-8")
    )
    consent["id"] = f"https://clinic.example.org/consents|c-{uuid.uuid4().hex[:10]}"
    posted = client.post("/v1/consents", json=consent, headers=auth_headers["write"])
    assert posted.status_code == 201, posted.json
    record_id = posted.json["records"][0]["id"]
    for path in (f"/v1/records/{record_id}", f"/v1/consents/{record_id}"):
        got = client.get(path, headers=auth_headers["read"])
        assert got.status_code == 200, got.json
        assert got.json["note_text_withheld"] is False
        assert got.json["record"]["id"] == consent["id"]


def test_intake_and_sign_answers_echo_no_text(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    note = _note(status="draft")
    posted = client.post("/v1/notes", json=note, headers=auth_headers["write"])
    assert posted.status_code == 201
    again = client.post("/v1/records", json=note, headers=auth_headers["write"])
    assert again.status_code == 200
    signed = client.post(
        f"/v1/notes/{posted.json['records'][0]['id']}/sign",
        json={"signed_by": note["author"], "signed_at": "2025-06-09T17:00:00+00:00"},
        headers=auth_headers["write"],
    )
    assert signed.status_code == 201, signed.json
    for response in (posted, again, signed):
        for secret in (SECRET, SECTION_TITLE, SECTION_TEXT):
            assert secret not in response.get_data(as_text=True)


def test_withhold_record_text_replaces_every_free_text_and_keeps_the_input() -> None:
    body = _note()
    body["ai_label_removal"] = {
        "by": body["author"],
        "at": "2025-06-09T16:40:00+00:00",
        "statement": "I rewrote the draft: the client described a panic attack.",
    }
    before = copy.deepcopy(body)
    withheld = withhold_record_text(body, NOTE_TEXT_WITHHELD)
    assert body == before
    assert withheld["text"] == NOTE_TEXT_WITHHELD
    assert withheld["sections"] == [{"title": NOTE_TEXT_WITHHELD, "text": NOTE_TEXT_WITHHELD}]
    assert withheld["ai_label_removal"] == {
        **before["ai_label_removal"],
        "statement": NOTE_TEXT_WITHHELD,
    }
    assert {
        k: v for k, v in withheld.items() if k not in ("text", "sections", "ai_label_removal")
    } == {k: v for k, v in before.items() if k not in ("text", "sections", "ai_label_removal")}


def test_no_key_in_the_request_context_means_withheld(app: Flask, store: Any) -> None:
    """Deny by default: ``record_json`` outside an authenticated request withholds a progress
    note's text."""
    from datetime import UTC, datetime

    from tests.service.usecases.payloads import stored

    note = _note(category="progress-note")
    record = stored(note, family="note", at=datetime(2025, 6, 10, tzinfo=UTC))
    with app.test_request_context("/v1/records/x"):
        entry = record_json(record, None)
    _assert_withheld(entry, note)


def test_openapi_documents_the_withheld_flag(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]], note_id: tuple[str, Any]
) -> None:
    """The Record schema names ``note_text_withheld`` as a required boolean, and the answer to the
    read key has no field the schema does not document."""
    document = client.get("/openapi.json", headers=auth_headers["read"]).json
    schema = document["components"]["schemas"]["Record"]
    assert schema["properties"]["note_text_withheld"]["type"] == "boolean"
    assert "note_text_withheld" in schema["required"]
    record_id, _note_body = note_id
    got = client.get(f"/v1/records/{record_id}", headers=auth_headers["read"]).json
    assert set(got) <= set(schema["properties"])
    assert set(schema["required"]) <= set(got)
