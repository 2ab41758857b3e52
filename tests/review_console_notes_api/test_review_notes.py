"""Outside review of the session notes (AI-drafted or not): a note nobody signed must stay home.

Real components: the app from its factory on a migrated SQLite store, the real worker, and the
real test FHIR server (or ``FHIR_ALLIANCE_TEST_BASE_URL``; resources tagged with the run)."""

from __future__ import annotations

import base64
from typing import Any

from fhir_alliance_service.store.interface import SyncState
from flask.testing import FlaskClient

from tests.service.api.test_notes import (
    _document_references,
    _note,
    _recording_consent,
    _run,
    _sharing_consent,
)

Headers = dict[str, dict[str, str]]


def test_an_unsigned_draft_marked_entered_in_error_never_reaches_the_ehr(
    client: FlaskClient, auth_headers: Headers, store: Any, sync: Any, fhir_server: Any
) -> None:
    """docs/notes.md: "A draft is held ... unless the clinic sets FHIR_ALLIANCE_PUSH_DRAFT_NOTES";
    the brief: a draft is never pushed before a person signs it. A therapist who discards an
    AI-drafted draft posts it again as ``entered-in-error`` (no signature: nobody signed it).
    That unsigned version, with the unreviewed AI text, must not be sent to the EHR either: it
    was never signed, and no version of it was ever sent that would need correcting."""
    run = _run()
    note = _note(run)  # an AI-drafted draft, unsigned
    consents = [_recording_consent(run), _sharing_consent(run)]
    assert (
        client.post("/v1/records", json=consents, headers=auth_headers["write"]).status_code == 201
    )
    posted = client.post("/v1/notes", json=note, headers=auth_headers["write"])
    assert posted.status_code == 201, posted.json
    record_id = posted.json["records"][0]["id"]
    sync()
    held = store.sync_status(record_id)
    assert held is not None and held.state is SyncState.HELD  # the draft stays home, as documented

    discarded = note | {"status": "entered-in-error"}  # still unsigned
    again = client.post("/v1/notes", json=discarded, headers=auth_headers["write"])
    assert again.status_code in (201, 422), again.json
    sync()

    on_server = _document_references(fhir_server, note["id"])
    texts = [
        base64.b64decode(c["attachment"]["data"]).decode()
        for d in on_server
        for c in d.get("content", [])
        if "data" in c.get("attachment", {})
    ]
    status = store.sync_status(record_id)
    assert on_server == [], (
        f"an unsigned note reached the EHR ({status.state.value if status else None}), "
        f"carrying its unreviewed text: {texts}"
    )


def test_a_later_revocation_does_not_make_the_consent_never_active_at_signing(
    client: FlaskClient, auth_headers: Headers, store: Any
) -> None:
    """docs/notes.md: drafting is judged at ``session_at``; "An AI-drafted note whose
    recording/AI-notes consent was revoked after the session is held", and the 422 is for a note
    "without the client's recording/AI-notes consent at the session time". Here the consent was
    in force at the session (the draft was taken in) and revoked five days later through
    ``POST /v1/consents/{id}/revoke``. The consent has no ``history`` (as the docs' own
    ``examples/consent/recording-ai-notes.json``): the revocation adds only a "revoked" entry, and
    the engine then reads the consent as never active. The therapist's signature must be stored
    (the final version is then held), not refused with a 422 saying the consent "does not permit
    AI drafting at the session time", at ``ai_drafting``, a field the sign body does not have."""
    run = _run()
    note = _note(run)  # session 2026-11-20T15:00Z, AI-drafted draft
    recording = _recording_consent(run)
    del recording["history"]  # as examples/consent/recording-ai-notes.json: active since `date`
    consents = [recording, _sharing_consent(run)]
    posted = client.post("/v1/records", json=consents, headers=auth_headers["write"])
    assert posted.status_code == 201, posted.json
    recording_id = posted.json["records"][0]["id"]
    created = client.post("/v1/notes", json=note, headers=auth_headers["write"])
    assert created.status_code == 201, created.json  # permitted at the session time
    record_id = created.json["records"][0]["id"]
    revoked = client.post(
        f"/v1/consents/{recording_id}/revoke",
        json={"at": "2026-11-25T12:00:00+00:00"},  # five days after the session
        headers=auth_headers["write"],
    )
    assert revoked.status_code == 200, revoked.json

    signed = client.post(
        f"/v1/notes/{record_id}/sign",
        json={
            "signed_by": {"reference": "Practitioner/t1", "type": "Practitioner"},
            "signed_at": "2026-11-26T09:00:00+00:00",
        },
        headers=auth_headers["write"],
    )
    assert signed.status_code == 201, signed.json
    stored = store.get_record(record_id)
    assert stored is not None and stored.body.get("status") == "final"
