"""Session notes in the service: POST /v1/notes (the AI-notes consent check at intake), signing a
draft, and through the real worker to the test FHIR server: drafts stay home unless the clinic says
otherwise, a later revocation holds an AI-drafted note, and signing makes a second version of the
same DocumentReference."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.store.interface import NewRecord, SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.gate import HoldReason
from fhir_alliance_service.sync.reconcile import Reconciler
from fhir_alliance_service.sync.retract import Retractor, RetractReport
from fhir_alliance_service.usecases.consents import clear_engine_cache
from flask.testing import FlaskClient

from fhir_alliance.client import FhirClient
from tests.service.sync import records
from tests.service.sync.conftest import QUICK_RETRY, sync_settings

ROOT = Path(__file__).resolve().parents[3]
PRACTITIONER = {"reference": "Practitioner/t1", "type": "Practitioner"}


def _example(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "examples" / name).read_text())


def _note(run: str, *, ai: bool = True, patient: str = "Patient/p1") -> dict[str, Any]:
    """A draft progress note of a session on 2026-11-20 (AI-drafted unless ``ai`` is False)."""
    note = _example("notes/ai-drafted-progress-note.json")
    note["id"] = f"https://clinic.example.org/notes|n-{run}"
    note["patient"] = {"reference": patient, "type": "Patient"}
    note["session_at"] = "2026-11-20T15:00:00+00:00"
    note["written_at"] = "2026-11-20T16:00:00+00:00"
    if not ai:
        del note["ai_drafting"]
    return note


def _recording_consent(run: str, patient: str = "Patient/p1") -> dict[str, Any]:
    """The docs' recording/AI-notes consent (session-scribe 2.3), in force from 2026-11-01."""
    consent = _example("consent/recording-ai-notes.json")
    consent["id"] = f"https://clinic.example.org/consents|rec-{run}"
    consent["patient"] = consent["grantor"] = {"reference": patient, "type": "Patient"}
    consent["date"] = "2026-11-01T09:00:00+00:00"
    consent["period"] = {"start": "2026-11-01T00:00:00+00:00"}
    consent["verification"][0]["verified_at"] = "2026-11-01T09:00:00+00:00"
    consent["verification"][0]["verified_with"] = {"reference": patient, "type": "Patient"}
    consent["history"] = [
        {"status": "active", "at": "2026-11-01T09:00:00+00:00", "by": consent["grantor"]}
    ]
    return consent


def _sharing_consent(run: str, patient: str = "Patient/p1") -> dict[str, Any]:
    """The patient lets the clinic's EHR have their data for treatment, AI-assisted content too."""
    consent = records.sharing_consent(run, patient)
    consent["provision"]["provisions"] = []
    return consent


def _revocation(run: str, at: str = "2026-11-25T12:00:00+00:00") -> dict[str, Any]:
    return {
        "kind": "consent-revocation",
        "consent": f"https://clinic.example.org/consents|rec-{run}",
        "at": at,
    }


def _run() -> str:
    return uuid.uuid4().hex[:10]


def _post(client: FlaskClient, path: str, body: Any, headers: dict[str, str]):
    return client.post(path, json=body, headers=headers)


# --- intake ---------------------------------------------------------------------------------


def test_a_note_not_drafted_by_ai_needs_no_ai_consent(client, auth_headers) -> None:
    """A hand-written note is taken in without any consent; it is stored as a note, version 1."""
    response = _post(client, "/v1/notes", _note(_run(), ai=False), auth_headers["write"])
    assert response.status_code == 201, response.json
    entry = response.json["records"][0]
    assert (entry["kind"], entry["version"], entry["outcome"]) == ("session-note", 1, "created")
    stored = client.get(f"/v1/records/{entry['id']}", headers=auth_headers["read"]).json
    assert stored["family"] == "note"
    assert "status" not in stored["record"]  # a draft: the default status is left out


def test_ai_drafted_note_without_ai_notes_consent_is_refused(client, auth_headers, store) -> None:
    """An AI-drafted note with only a sharing consent is refused at intake, naming ai_drafting;
    nothing is stored."""
    run = _run()
    assert (
        _post(client, "/v1/records", _sharing_consent(run), auth_headers["write"]).status_code
        == 201
    )
    response = _post(client, "/v1/notes", _note(run), auth_headers["write"])
    assert response.status_code == 422, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    [issue] = response.json["issue"]
    assert issue["expression"] == ["ai_drafting"]
    assert issue["code"] == "business-rule"
    assert "recording/AI-notes consent" in issue["details"]["text"]
    assert store.list_records(family="note") == []


def test_the_records_route_applies_the_same_check(client, auth_headers, store) -> None:
    """Posting the note through /v1/records does not get around the AI-notes consent check."""
    response = _post(client, "/v1/records", [_note(_run())], auth_headers["write"])
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["0.ai_drafting"]
    assert store.list_records(family="note") == []


def test_ai_drafted_note_with_ai_notes_consent_is_taken_in(client, auth_headers) -> None:
    """With the client's recording/AI-notes consent in force at the session, the note is stored."""
    run = _run()
    assert (
        _post(client, "/v1/records", _recording_consent(run), auth_headers["write"]).status_code
        == 201
    )
    response = _post(client, "/v1/notes", _note(run), auth_headers["write"])
    assert response.status_code == 201, response.json


def test_consent_in_the_same_batch_counts(client, auth_headers) -> None:
    """A recording consent posted in the same request as the note permits it."""
    run = _run()
    response = _post(
        client, "/v1/records", [_recording_consent(run), _note(run)], auth_headers["write"]
    )
    assert response.status_code == 201, response.json


def test_consent_revoked_before_the_session_refuses_the_note(client, auth_headers) -> None:
    """A recording consent revoked before the session does not permit drafting that session's note."""
    run = _run()
    body = [_recording_consent(run), _revocation(run, "2026-11-10T12:00:00+00:00")]
    assert _post(client, "/v1/records", body, auth_headers["write"]).status_code == 201
    response = _post(client, "/v1/notes", _note(run), auth_headers["write"])
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["ai_drafting"]


def test_an_unreadable_consent_refuses_an_ai_drafted_note(client, auth_headers, store) -> None:
    """A stored consent of the client that cannot be read refuses an AI-drafted note (never read as
    "no objection"), even beside a recording consent that would permit it."""
    run = _run()
    assert (
        _post(client, "/v1/records", _recording_consent(run), auth_headers["write"]).status_code
        == 201
    )
    store.put_records(
        [
            NewRecord(
                record_id=f"broken-{run}",
                identifier=f"https://clinic.example.org/consents|broken-{run}",
                kind="consent",
                family="consent",
                patient="Patient/p1",
                body={"kind": "consent", "status": "no-such-status"},
                content_hash=f"broken-{run}",
            )
        ],
        audit=[],
        at=datetime.now(UTC),
    )
    response = _post(client, "/v1/notes", _note(run), auth_headers["write"])
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["ai_drafting"]
    assert "could not be read" in response.json["issue"][0]["details"]["text"]


def test_notes_route_takes_only_notes(client, auth_headers) -> None:
    """Another record kind posted to /v1/notes is refused at its kind."""
    response = _post(client, "/v1/notes", [records.rating(_run(), 1)], auth_headers["write"])
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["0.kind"]


def test_notes_need_the_write_scope(client, auth_headers) -> None:
    """A read key may not post or sign notes (403); no key at all is 401."""
    assert (
        _post(client, "/v1/notes", _note(_run(), ai=False), auth_headers["read"]).status_code == 403
    )
    assert client.post("/v1/notes", json=_note(_run(), ai=False)).status_code == 401
    sign = f"/v1/notes/{uuid.uuid4()}/sign"
    assert _post(client, sign, {}, auth_headers["read"]).status_code == 403


# --- signing --------------------------------------------------------------------------------


def _sign_body() -> dict[str, Any]:
    return {"signed_by": PRACTITIONER, "signed_at": "2026-11-20T17:00:00+00:00"}


def test_sign_makes_a_final_version_of_the_same_record(client, auth_headers) -> None:
    """Signing a draft stores version 2, final, with the signature; signing again is 409."""
    created = _post(client, "/v1/notes", _note(_run(), ai=False), auth_headers["write"]).json
    record_id = created["records"][0]["id"]
    response = _post(client, f"/v1/notes/{record_id}/sign", _sign_body(), auth_headers["write"])
    assert response.status_code == 201, response.json
    entry = response.json["records"][0]
    assert (entry["id"], entry["version"], entry["outcome"]) == (record_id, 2, "updated")
    stored = client.get(f"/v1/records/{record_id}", headers=auth_headers["read"]).json["record"]
    assert stored["status"] == "final"
    assert stored["signed_by"] == PRACTITIONER
    again = _post(client, f"/v1/notes/{record_id}/sign", _sign_body(), auth_headers["write"])
    assert again.status_code == 409
    assert again.json["resourceType"] == "OperationOutcome"


def test_sign_refuses_a_bad_signature_by_field_path(client, auth_headers) -> None:
    """A signature without signer, or signed before the note was written, is refused by path."""
    created = _post(client, "/v1/notes", _note(_run(), ai=False), auth_headers["write"]).json
    path = f"/v1/notes/{created['records'][0]['id']}/sign"
    missing = _post(client, path, {"signed_at": "2026-11-20T17:00:00+00:00"}, auth_headers["write"])
    assert missing.status_code == 422
    assert missing.json["issue"][0]["expression"] == ["signed_by"]
    early = _post(
        client,
        path,
        {"signed_by": PRACTITIONER, "signed_at": "2026-11-20T15:30:00+00:00"},
        auth_headers["write"],
    )
    assert early.status_code == 422
    assert early.json["issue"][0]["expression"] == ["signed_at"]


def test_sign_of_an_unknown_or_non_note_record_is_404(client, auth_headers) -> None:
    """Signing a record that is not a note (or does not exist) answers 404."""
    rating = _post(client, "/v1/records", records.rating(_run(), 1), auth_headers["write"]).json
    for record_id in (rating["records"][0]["id"], str(uuid.uuid4())):
        response = _post(client, f"/v1/notes/{record_id}/sign", _sign_body(), auth_headers["write"])
        assert response.status_code == 404


# --- through the real worker to the test FHIR server -------------------------------------------


@pytest.fixture
def sync(app, store, sqlite_url, fhir_server):
    """A worker factory on the app's store pushing to the test FHIR server, tagged with its run."""
    clear_engine_cache()
    settings = sync_settings(fhir_server.base_url, sqlite_url, fhir_version="4.0.1")
    with FhirClient(fhir_server.base_url, retry=QUICK_RETRY) as fhir:

        def drain(**overrides: Any) -> None:
            worker = Worker(replace(settings, **overrides), store, fhir, tags=[fhir_server.run_tag])
            for _ in range(50):
                report = worker.run_once()
                assert report.error is None, report.error
                if report.claimed == 0:
                    return
            raise AssertionError("the outbox did not drain")

        yield drain


@pytest.fixture
def retract(store, sqlite_url, fhir_server):
    """A retraction pass over every patient, on the app's store against the test FHIR server."""
    settings = sync_settings(fhir_server.base_url, sqlite_url, fhir_version="4.0.1")
    with FhirClient(fhir_server.base_url, retry=QUICK_RETRY) as fhir:

        def run_pass(**overrides: Any) -> RetractReport:
            retractor = Retractor(replace(settings, **overrides), store, fhir)
            return retractor.run_pass(everyone=True)

        yield run_pass


def _document_references(fhir_server, identifier: str) -> list[dict[str, Any]]:
    response = fhir_server.http.get(
        fhir_server.url("DocumentReference"),
        params={"identifier": identifier, "_tag": fhir_server.run_tag_param},
    )
    response.raise_for_status()
    return [e["resource"] for e in response.json().get("entry", [])]


def _history(fhir_server, document_id: str) -> list[dict[str, Any]]:
    response = fhir_server.http.get(fhir_server.url(f"DocumentReference/{document_id}/_history"))
    response.raise_for_status()
    return [e["resource"] for e in response.json().get("entry", [])]


def test_a_draft_stays_home_until_signed(client, auth_headers, store, sync, fhir_server) -> None:
    """By default a draft is held (saying so) and nothing reaches the server; once signed, the
    final version goes."""
    run = _run()
    note = _note(run, ai=False)
    _post(client, "/v1/records", _sharing_consent(run), auth_headers["write"])
    record_id = _post(client, "/v1/notes", note, auth_headers["write"]).json["records"][0]["id"]
    sync()
    status = store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.DRAFT_NOTE.words
    assert _document_references(fhir_server, note["id"]) == []
    _post(client, f"/v1/notes/{record_id}/sign", _sign_body(), auth_headers["write"])
    sync()
    [document] = _document_references(fhir_server, note["id"])
    assert document["docStatus"] == "final"


def test_sign_flow_gives_one_document_reference_with_two_versions(
    client, auth_headers, store, sync, fhir_server
) -> None:
    """With push_draft_notes the draft goes as version 1; signing pushes the final version as
    version 2 of the same DocumentReference (and the AI Provenance names the verifier)."""
    run = _run()
    note = _note(run)
    body = [_recording_consent(run), _sharing_consent(run)]
    assert _post(client, "/v1/records", body, auth_headers["write"]).status_code == 201
    record_id = _post(client, "/v1/notes", note, auth_headers["write"]).json["records"][0]["id"]
    sync(push_draft_notes=True)
    [draft] = _document_references(fhir_server, note["id"])
    assert draft["docStatus"] == "preliminary"
    assert (
        _post(
            client, f"/v1/notes/{record_id}/sign", _sign_body(), auth_headers["write"]
        ).status_code
        == 201
    )
    sync(push_draft_notes=True)
    [final] = _document_references(fhir_server, note["id"])
    assert final["id"] == draft["id"] == record_id
    assert final["docStatus"] == "final"
    assert final["authenticator"]["reference"] == "Practitioner/t1"
    versions = _history(fhir_server, final["id"])
    assert sorted(v["docStatus"] for v in versions) == ["final", "preliminary"]
    assert len({v["meta"]["versionId"] for v in versions}) == 2
    status = store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    provenance = fhir_server.http.get(
        fhir_server.url("Provenance"), params={"_tag": fhir_server.run_tag_param}
    ).json()
    agents = [
        a["type"]["coding"][0]["code"]
        for e in provenance.get("entry", [])
        if e["resource"]["target"][0]["reference"] == f"DocumentReference/{record_id}"
        for a in e["resource"]["agent"]
    ]
    assert agents == ["author", "verifier"]


def _ai_draft_sent(client, auth_headers, sync) -> tuple[str, dict[str, Any], str]:
    """An AI-drafted draft of a patient who consented to recording/AI notes and sharing, sent
    with push_draft_notes on: its run, the note and its record id."""
    run = _run()
    note = _note(run)
    consents = [_recording_consent(run), _sharing_consent(run)]
    _post(client, "/v1/records", consents, auth_headers["write"])
    record_id = _post(client, "/v1/notes", note, auth_headers["write"]).json["records"][0]["id"]
    sync(push_draft_notes=True)
    return run, note, record_id


def test_turning_draft_pushing_off_retracts_no_draft_already_sent(
    client, auth_headers, store, sync, retract, fhir_server
) -> None:
    """A draft sent while push_draft_notes was on stays on the server once it is turned off:
    retraction follows the patient's consents, not a setting about what to send next."""
    _, note, record_id = _ai_draft_sent(client, auth_headers, sync)
    report = retract(push_draft_notes=False, retraction_policy="delete")
    assert (report.checked, report.deleted, report.kept) == (1, 0, 0)
    [draft] = _document_references(fhir_server, note["id"])
    assert draft["docStatus"] == "preliminary"
    status = store.sync_status(record_id)
    assert status is not None and status.retraction is None


def test_a_sent_draft_is_retracted_when_its_consent_is_revoked_with_draft_pushing_off(
    client, auth_headers, store, sync, retract, fhir_server
) -> None:
    """The recording/AI-notes consent revoked after the AI-drafted draft was sent: it is
    retracted even though push_draft_notes is off now (the draft rule does not hide the
    consent's answer)."""
    run, note, record_id = _ai_draft_sent(client, auth_headers, sync)
    assert _post(client, "/v1/records", _revocation(run), auth_headers["write"]).status_code == 201
    report = retract(push_draft_notes=False, retraction_policy="delete")
    assert report.deleted == 1
    assert _document_references(fhir_server, note["id"]) == []
    status = store.sync_status(record_id)
    assert status is not None and status.retraction == "deleted"


def test_a_later_revocation_holds_the_ai_drafted_note(
    client, auth_headers, store, sync, fhir_server
) -> None:
    """The AI-notes consent revoked after the session: the note was rightly taken in, but it is
    held from then on (saying why) and never reaches the server."""
    run = _run()
    note = _note(run)
    body = [_recording_consent(run), _sharing_consent(run)]
    _post(client, "/v1/records", body, auth_headers["write"])
    record_id = _post(client, "/v1/notes", note, auth_headers["write"]).json["records"][0]["id"]
    assert _post(client, "/v1/records", _revocation(run), auth_headers["write"]).status_code == 201
    sync(push_draft_notes=True)
    status = store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.AI_NOTES_NOT_PERMITTED.words
    assert _document_references(fhir_server, note["id"]) == []


def test_psychotherapy_note_needs_an_explicit_permit(
    client, auth_headers, store, sync, fhir_server
) -> None:
    """A signed psychotherapy note under a plain sharing consent is held as needing an explicit
    permit; nothing reaches the server."""
    run = _run()
    note = copy.deepcopy(_example("notes/psychotherapy-note.json"))
    note["id"] = f"https://clinic.example.org/notes|psy-{run}"
    _post(client, "/v1/records", _sharing_consent(run), auth_headers["write"])
    record_id = _post(client, "/v1/notes", note, auth_headers["write"]).json["records"][0]["id"]
    sync()
    status = store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.NEEDS_EXPLICIT_PERMIT.words
    assert _document_references(fhir_server, note["id"]) == []


def _text_of(document: dict[str, Any]) -> str:
    return base64.b64decode(document["content"][0]["attachment"]["data"]).decode()


def _voided(note: dict[str, Any]) -> dict[str, Any]:
    """The note marked entered-in-error by a therapist who did not sign (new, unreviewed text)."""
    voided = {k: v for k, v in note.items() if k not in ("signed_by", "signed_at")}
    return voided | {"status": "entered-in-error", "text": f"UNREVIEWED {uuid.uuid4().hex}"}


def test_an_unsigned_entered_in_error_note_corrects_only_what_was_sent(
    client, auth_headers, store, sync, fhir_server, sqlite_url
) -> None:
    """The signed note was sent; the therapist then posts it as entered-in-error without signing,
    with other (unreviewed) text. The EHR learns the note is entered-in-error: its
    DocumentReference gets a version with status entered-in-error that carries the signed text
    it already had, and the unsigned text reaches no version of it. Reconcile finds the server as
    expected. A further unsigned version has nothing left to correct: it is held, nothing sent."""
    run = _run()
    note = _note(run)
    body = [_recording_consent(run), _sharing_consent(run)]
    assert _post(client, "/v1/records", body, auth_headers["write"]).status_code == 201
    record_id = _post(client, "/v1/notes", note, auth_headers["write"]).json["records"][0]["id"]
    _post(client, f"/v1/notes/{record_id}/sign", _sign_body(), auth_headers["write"])
    sync()
    [signed] = _document_references(fhir_server, note["id"])
    assert signed["docStatus"] == "final" and signed["status"] == "current"

    voided = _voided(note)
    assert _post(client, "/v1/notes", voided, auth_headers["write"]).status_code == 201
    sync()
    [corrected] = _document_references(fhir_server, note["id"])
    assert corrected["status"] == "entered-in-error"
    assert corrected["docStatus"] == "final"  # the signed version, now void
    assert _text_of(corrected) == _text_of(signed) == note["text"]
    versions = _history(fhir_server, record_id)
    assert len(versions) == 2
    assert all(voided["text"] not in json.dumps(v) for v in versions)
    status = store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT and status.record_version == 3
    settings = sync_settings(fhir_server.base_url, sqlite_url, fhir_version="4.0.1")
    with FhirClient(fhir_server.base_url, retry=QUICK_RETRY) as fhir:
        report = Reconciler(settings, store, fhir, tags=[fhir_server.run_tag]).run(
            patient="Patient/p1"
        )
    assert (report.records, report.findings) == (3, [])  # the two consents and the note

    again = _voided(note)
    assert _post(client, "/v1/notes", again, auth_headers["write"]).status_code == 201
    sync()
    status = store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.UNSIGNED_NOTE.words
    assert len(_history(fhir_server, record_id)) == 2


def test_push_draft_notes_sends_an_unsigned_entered_in_error_note_as_it_is(
    client, auth_headers, store, sync, fhir_server
) -> None:
    """FHIR_ALLIANCE_PUSH_DRAFT_NOTES means "send notes before anyone signs them": the clinic
    that sets it gets an unsigned entered-in-error note as it is, its text included."""
    run = _run()
    note = _note(run, ai=False)
    _post(client, "/v1/records", _sharing_consent(run), auth_headers["write"])
    assert _post(client, "/v1/notes", _voided(note), auth_headers["write"]).status_code == 201
    sync()
    assert _document_references(fhir_server, note["id"]) == []
    voided = _voided(note)
    assert _post(client, "/v1/notes", voided, auth_headers["write"]).status_code == 201
    sync(push_draft_notes=True)
    [document] = _document_references(fhir_server, note["id"])
    assert document["status"] == "entered-in-error" and _text_of(document) == voided["text"]
