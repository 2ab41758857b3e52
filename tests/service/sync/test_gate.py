"""The consent gate on one claimed item (no server): every resource must be PERMIT, and a hold
says why in plain words with a machine code for the audit."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SentResource
from fhir_alliance_service.sync.gate import HoldReason, gate_item, ref_for_key
from fhir_alliance_service.usecases.intake import intake_records

from tests.service.api.test_consent_identifier_spellings import _pulled
from tests.service.api.test_notes import _note, _sharing_consent
from tests.service.sync import records as R
from tests.service.sync.conftest import now, sync_settings

#: The code system of a session note's content kind (the second coding of its type).
NOTE_CONTENT = "https://fhir-alliance.org/fhir/CodeSystem/session-note-content"
SETTINGS = sync_settings("http://127.0.0.1:9/fhir", "sqlite://", fhir_version="4.0.1")


def _automated(run: str, patient: str = "Patient/p1") -> dict[str, Any]:
    rating = R.rating(run, 7, patient)
    rating["rater"] = {
        "role": "automated",
        "automated": {
            "tool": "example-alliance-analyser",
            "version": "2.3.1",
            "confidence": 0.82,
            "clinician_reviewed": True,
        },
    }
    return rating


def _gate_all(store: SqlStore) -> dict[str, Any]:
    items = store.claim("gate-test", limit=100, lease_seconds=60, now=now())
    return {
        i.record_id: gate_item(i, settings=SETTINGS, store=store, version="4.0.1", at=now())
        for i in items
    }


def consent_item(store: SqlStore) -> int:
    [item] = store.claim("gate-test", limit=1, lease_seconds=60, now=now())
    return item.item_id


def test_a_consent_that_denies_the_content_holds_it_as_denied(sync_store: SqlStore) -> None:
    """The sharing consent denies AI-assisted content: an automated rating and its Provenance
    are held as denied, not as 'no consent'."""
    run = R.run_token()
    intake_records(sync_store, [R.sharing_consent(run)], at=now())
    sync_store.mark_sent(consent_item(sync_store), "gate-test", sent=[], audit=[], at=now())
    [automated] = intake_records(sync_store, [_automated(run)], at=now())
    result = _gate_all(sync_store)[automated.record_id]
    assert result.hold is HoldReason.DENIED
    assert result.hold.words == "a consent denies sharing this with the clinic's EHR"
    assert [r["resourceType"] for r in result.resources] == ["Observation", "Provenance"]


def test_every_resource_of_a_permitted_record_is_decided_permit(sync_store: SqlStore) -> None:
    """An SRS administration under a sharing consent: six resources, six PERMIT decisions."""
    run = R.run_token()
    intake_records(sync_store, [R.sharing_consent(run)], at=now())
    sync_store.mark_sent(consent_item(sync_store), "gate-test", sent=[], audit=[], at=now())
    [srs] = intake_records(sync_store, [R.srs(run, 1)], at=now())
    result = _gate_all(sync_store)[srs.record_id]
    assert result.permitted and len(result.resources) == len(result.decisions) == 6
    assert {d.outcome.value for d in result.decisions} == {"permit"}


def test_consent_records_are_not_put_to_the_engine(sync_store: SqlStore) -> None:
    """A consent record passes without a decision (the EHR must learn of it, revoked or not)."""
    run = R.run_token()
    [consent] = intake_records(sync_store, [R.sharing_consent(run)], at=now())
    result = _gate_all(sync_store)[consent.record_id]
    assert result.permitted and result.decisions == ()
    assert [r["resourceType"] for r in result.resources] == ["Consent"]


def test_keys_become_references_or_identifiers() -> None:
    """A stored key is a literal reference or an identifier token, never guessed otherwise."""
    assert ref_for_key("Patient/1").reference == "Patient/1"
    by_identifier = ref_for_key("https://mrn.example|42", resource_type="Patient")
    assert by_identifier.identifier is not None and by_identifier.identifier.value == "42"
    assert by_identifier.type == "Patient"


@pytest.mark.parametrize(
    ("retraction", "goes"),
    [(None, True), ("kept", True), ("entered-in-error", False), ("deleted", False)],
)
def test_an_unsigned_entered_in_error_note_goes_only_to_correct_what_the_server_holds(
    sync_store: SqlStore, retraction: str | None, goes: bool
) -> None:
    """A signed note was sent; then it is posted as entered-in-error, unsigned, with new text.
    While the server holds the signed version (not retracted, or retracted as ``kept``), what may
    go is that signed version marked entered-in-error: the signed text, never the new one. Once
    the retraction policy marked it entered-in-error or deleted it, there is nothing left to
    correct: the note is held (re-creating a deleted note would disclose it again)."""
    run = R.run_token()
    intake_records(sync_store, [_sharing_consent(run)], at=now())
    sync_store.mark_sent(consent_item(sync_store), "gate-test", sent=[], audit=[], at=now())
    signed = _note(run, ai=False) | {
        "status": "final",
        "signed_by": {"reference": "Practitioner/t1", "type": "Practitioner"},
        "signed_at": "2026-11-20T17:00:00+00:00",
    }
    [note] = intake_records(sync_store, [signed], at=now())
    item_id = consent_item(sync_store)
    sent = SentResource("DocumentReference", note.record_id, "1")
    sync_store.mark_sent(item_id, "gate-test", sent=[sent], audit=[], at=now())
    if retraction is not None:
        assert sync_store.record_retraction(
            item_id, retraction, was=None, sent=[sent], audit=[], at=now()
        )
    voided = signed | {"status": "entered-in-error", "text": "unreviewed text"}
    del voided["signed_by"], voided["signed_at"]
    intake_records(sync_store, [voided], at=now())
    result = _gate_all(sync_store)[note.record_id]
    [document] = [r for r in result.resources if r["resourceType"] == "DocumentReference"]
    text = base64.b64decode(document["content"][0]["attachment"]["data"]).decode()
    if goes:
        assert result.permitted and document["status"] == "entered-in-error"
        assert (text, document["docStatus"]) == (signed["text"], "final")
    else:
        assert result.hold is HoldReason.UNSIGNED_NOTE


def test_psythpn_or_v_under_another_label_system_is_held_for_an_explicit_permit(
    sync_store: SqlStore,
) -> None:
    """A rating another system labelled PSYTHPN (its own system) or V (the value set's URL as the
    system) is held under the plain sharing permit, which released it before, and the hold says
    it needs a permit naming the label; a foreign label that is no HL7 label code still goes."""
    run = R.run_token()
    value_set = "http://terminology.hl7.org/ValueSet/v3-ConfidentialityClassification"
    labelled = {
        "psythpn": {"system": "http://ehr.example/labels", "code": "PSYTHPN"},
        "v": {"system": value_set, "code": "V"},
        "other": {"system": "http://ehr.example/labels", "code": "internal"},
    }
    patients = [f"Patient/p{n}" for n in range(1, len(labelled) + 1)]
    intake_records(sync_store, [R.sharing_consent(run, p) for p in patients], at=now())
    for item in sync_store.claim("gate-test", limit=100, lease_seconds=60, now=now()):
        sync_store.mark_sent(item.item_id, "gate-test", sent=[], audit=[], at=now())
    records = {
        name: intake_records(
            sync_store, [{**R.rating(run, n, patient), "security_labels": [label]}], at=now()
        )[0]
        for n, (patient, (name, label)) in enumerate(zip(patients, labelled.items(), strict=True))
    }
    results = _gate_all(sync_store)
    for name in ("psythpn", "v"):
        result = results[records[name].record_id]
        assert result.hold is HoldReason.NEEDS_EXPLICIT_PERMIT, name
    assert results[records["other"].record_id].permitted


@pytest.mark.parametrize(
    ("document_type", "held"),
    [
        ({"system": "http://loinc.org", "code": "34904-3"}, True),
        ({"system": "urn:oid:2.16.840.1.113883.6.1", "code": "34904-3"}, True),
        ({"system": NOTE_CONTENT, "code": "progress-note"}, True),
        ({"system": NOTE_CONTENT, "code": "psychotherapy-note"}, False),
        ({"system": "http://loinc.org", "code": "11488-4"}, False),
    ],
)
def test_a_deny_by_document_type_holds_the_session_note(
    sync_store: SqlStore, document_type: dict[str, str], held: bool
) -> None:
    """ "Share, but not my mental health progress notes": a sharing consent with a nested deny
    by document type (R4 ``class``, R5 ``documentType``: LOINC 34904-3, or the note's content
    kind) holds a signed progress note as denied, and an SRS administration still goes. Before,
    the document type was compared with the note's profiles only and the note left. A deny of
    another document type lets the note go."""
    run = R.run_token()
    consents = [_sharing_consent(run, patient) for patient in ("Patient/p1", "Patient/p2")]
    for consent in consents:
        consent["provision"]["provisions"] = [{"type": "deny", "classes": [document_type]}]
    intake_records(sync_store, consents, at=now())
    for item in sync_store.claim("gate-test", limit=100, lease_seconds=60, now=now()):
        sync_store.mark_sent(item.item_id, "gate-test", sent=[], audit=[], at=now())
    signed = _note(run, ai=False) | {
        "status": "final",
        "signed_by": {"reference": "Practitioner/t1", "type": "Practitioner"},
        "signed_at": "2026-11-20T17:00:00+00:00",
    }
    [note, srs] = intake_records(sync_store, [signed, R.srs(run, 1, "Patient/p2")], at=now())
    results = _gate_all(sync_store)
    if held:
        assert results[note.record_id].hold is HoldReason.DENIED
        assert [b.path for b in results[note.record_id].decisions[-1].basis] == ["0"]
    else:
        assert results[note.record_id].permitted
    assert results[srs.record_id].permitted


def test_a_revoked_version_under_another_spelling_of_the_consent_never_permits(
    sync_store: SqlStore,
) -> None:
    """An active sharing consent, then its revoked version posted under another spelling of its
    identifier (the host in upper case): the revoked version is a new version of the consent's
    record, so a rating is held for want of a consent, never released by the older permit."""
    run = R.run_token()
    active = R.sharing_consent(run)
    intake_records(sync_store, [active], at=now())
    sync_store.mark_sent(consent_item(sync_store), "gate-test", sent=[], audit=[], at=now())
    revoked = dict(
        active,
        id=active["id"].replace("https://clinic.example.org", "https://CLINIC.example.org"),
        status="revoked",
        history=[
            *active["history"],
            {
                "status": "revoked",
                "at": "2026-11-10T09:00:00+00:00",
                "by": {"reference": "Patient/p1", "type": "Patient"},
            },
        ],
    )
    intake_records(sync_store, [revoked], at=now())
    sync_store.mark_sent(consent_item(sync_store), "gate-test", sent=[], audit=[], at=now())
    [rating] = intake_records(sync_store, [R.rating(run, 1)], at=now())
    result = _gate_all(sync_store)[rating.record_id]
    assert result.hold is HoldReason.NO_CONSENT


@pytest.mark.parametrize("alias", [False, True], ids=["one key", "two alias keys"])
def test_two_pulled_versions_of_one_consent_hold_a_rating(
    sync_store: SqlStore, alias: bool
) -> None:
    """The EHR's active sharing consent and its revoked version, both stored as the pull stores
    them with their copies standing on the server (merged before the pull compared identifiers,
    or filed under two keys of one patient): a rating is held as for an unreadable consent,
    never released by the older permit."""
    run = R.run_token()
    alias_key = f"urn:oid:2.16.840.1.113883.4.1|{run}"
    if alias:
        sync_store.add_patient_alias("Patient/p1", alias_key, at=now())
    active = R.sharing_consent(run)
    revoked = dict(
        active,
        id=active["id"].replace("https://clinic.example.org", "https://CLINIC.example.org"),
        status="revoked",
        history=[
            *active["history"],
            {
                "status": "revoked",
                "at": "2026-11-10T09:00:00+00:00",
                "by": {"reference": "Patient/p1", "type": "Patient"},
            },
        ],
    )
    _pulled(sync_store, active, "merged", resource=f"a-{run}")
    _pulled(
        sync_store,
        revoked,
        "merged",
        resource=f"r-{run}",
        patient=alias_key if alias else "Patient/p1",
    )
    [rating] = intake_records(sync_store, [R.rating(run, 1)], at=now())
    result = _gate_all(sync_store)[rating.record_id]
    assert result.hold is HoldReason.CONSENT_UNREADABLE
