"""The worker end to end against the test FHIR server: what is permitted lands once, what is held
never leaves, consent changes release and revocations stop, per-patient order is kept."""

from __future__ import annotations

from fhir_alliance_service.store.interface import NewRecord, SyncState
from fhir_alliance_service.sync.gate import HoldReason
from fhir_alliance_service.sync.worker import SOURCE_URI

from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness, now

RECORD = R.RECORD_SYSTEM


def test_permitted_records_land_once_with_their_identifiers(harness: SyncHarness) -> None:
    """Consent + ratings + an SRS go to the server, each identifier once, and the status says so."""
    run = harness.run
    intake = harness.intake(
        [R.sharing_consent(run), R.rating(run, 1), R.rating(run, 2), R.srs(run, 3)]
    )
    report = harness.drain()
    assert report.sent == 4 and report.held == 0 and report.dead == 0

    for n in (1, 2):
        found = harness.on_server("Observation", f"{RECORD}|trust-{run}-{n}")
        assert len(found) == 1
        assert found[0]["meta"]["versionId"] == "1"
        assert found[0]["meta"]["source"] == SOURCE_URI
    assert len(harness.on_server("Consent", R.consent_id(run, "Patient/p1"))) == 1
    assert len(harness.tagged("Observation")) == 2 + 6  # two ratings, the SRS panel and members

    srs_status = harness.store.sync_status(intake[3].record_id)
    assert srs_status is not None and srs_status.state is SyncState.SENT
    assert len(srs_status.sent) == 6
    assert {s.version_id for s in srs_status.sent} == {"1"}
    assert srs_status.sent[0].id == intake[3].record_id  # the panel's deterministic id


def test_a_second_sync_sends_nothing_new(harness: SyncHarness) -> None:
    """After a sync, syncing again (and re-posting the same records) writes nothing."""
    run = harness.run
    payloads = [R.sharing_consent(run), R.rating(run, 1)]
    harness.intake(payloads)
    harness.drain()
    before = harness.tagged("Observation")

    harness.intake(payloads)  # same content: unchanged, nothing queued
    again = harness.drain()
    assert again.claimed == 0
    after = harness.tagged("Observation")
    assert [(r["id"], r["meta"]["versionId"]) for r in after] == [
        (r["id"], r["meta"]["versionId"]) for r in before
    ]


def test_records_without_consent_are_held_and_never_leave(harness: SyncHarness) -> None:
    """No consent for the patient: held with the reason in plain words, nothing on the server."""
    run = harness.run
    [rating] = harness.intake([R.rating(run, 1, "Patient/p2")])
    report = harness.drain()
    assert report.held == 1 and report.sent == 0
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == "no consent to share with the clinic's EHR"
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []
    holds = [e for e in harness.store.list_audit(record_id=rating.record_id) if e.action == "hold"]
    assert len(holds) == 1 and holds[0].resource["outcomeDesc"] == "no-consent"


def test_a_consent_to_someone_else_does_not_release(harness: SyncHarness) -> None:
    """A consent that shares with another organisation is no consent for the clinic's EHR."""
    run = harness.run
    harness.intake([R.sharing_consent(run, recipient="Organization/other"), R.rating(run, 1)])
    harness.drain()
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []


def test_a_new_consent_releases_held_records(harness: SyncHarness) -> None:
    """Held records are sent once the patient's consents change to permit them."""
    run = harness.run
    [rating] = harness.intake([R.rating(run, 1)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD

    harness.intake([R.sharing_consent(run)])
    report = harness.drain()
    assert report.sent == 2, (
        report,
        harness.store.sync_status(rating.record_id),
    )  # consent + rating
    assert harness.state(rating.record_id) is SyncState.SENT
    assert len(harness.on_server("Observation", f"{RECORD}|trust-{run}-1")) == 1


def test_very_restricted_content_needs_a_permit_naming_v(harness: SyncHarness) -> None:
    """A rating the sender labelled V (very restricted) is held under the general sharing permit,
    which released it before (only PSYTHPN needed a provision naming it); a permit that names V
    sends it."""
    run = harness.run
    very = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}
    [_, rating] = harness.intake(
        [R.sharing_consent(run), {**R.rating(run, 1), "security_labels": [very]}]
    )
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.NEEDS_EXPLICIT_PERMIT.words
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []

    permit_v = R.sharing_consent(run, "Patient/p3")
    permit_v["provision"]["provisions"].append({"type": "permit", "security_labels": [very]})
    [_, other] = harness.intake(
        [permit_v, {**R.rating(run, 2, "Patient/p3"), "security_labels": [very]}]
    )
    harness.drain()
    assert harness.state(other.record_id) is SyncState.SENT


def test_psychotherapy_note_content_needs_an_explicit_permit(harness: SyncHarness) -> None:
    """A rupture (PSYTHPN) is held under a general permit, sent under one that names the label."""
    run = harness.run
    [_, rupture] = harness.intake([R.sharing_consent(run), R.rupture(run, 1)])
    harness.drain()
    status = harness.store.sync_status(rupture.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.NEEDS_EXPLICIT_PERMIT.words

    [_, other] = harness.intake(
        [R.sharing_consent(run, "Patient/p3", permit_psythpn=True), R.rupture(run, 2, "Patient/p3")]
    )
    harness.drain()
    assert harness.state(other.record_id) is SyncState.SENT
    assert harness.on_server("Observation", f"{RECORD}|rupture-{run}-1") == []


def test_revocation_stops_records_already_queued(harness: SyncHarness) -> None:
    """Records queued before a revocation is synced are held; the revoked consent is still pushed."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1)])
    harness.drain()
    [queued] = harness.intake([R.rating(run, 2)])
    harness.intake([R.revocation(run)])
    harness.drain()

    assert harness.state(queued.record_id) is SyncState.HELD
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-2") == []
    [consent] = harness.on_server("Consent", R.consent_id(run, "Patient/p1"))
    assert consent["status"] == "inactive" and consent["meta"]["versionId"] == "2"


def test_unreadable_consent_holds_instead_of_no_consent(harness: SyncHarness) -> None:
    """A stored consent that cannot be read holds the patient's records with that reason."""
    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.store.put_records(
        [
            NewRecord(
                record_id=f"broken-{run}",
                identifier=f"{R.CONSENT_SYSTEM}|broken-{run}",
                kind="consent",
                family="consent",
                patient="Patient/p1",
                body={"kind": "consent", "status": "no-such-status"},
                content_hash=f"broken-{run}",
            )
        ],
        audit=[],
        at=now(),
    )
    [rating] = harness.intake([R.rating(run, 1)])
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == "a consent for this patient could not be read"


def test_records_of_one_patient_reach_the_server_in_intake_order(harness: SyncHarness) -> None:
    """Items of one patient are sent oldest first: lastUpdated follows intake order."""
    run = harness.run
    harness.intake([R.sharing_consent(run)])
    for n in range(1, 6):
        harness.intake([R.rating(run, n)])
    harness.drain()
    updated = [
        harness.on_server("Observation", f"{RECORD}|trust-{run}-{n}")[0]["meta"]["lastUpdated"]
        for n in range(1, 6)
    ]
    assert updated == sorted(updated) and len(set(updated)) == 5


def test_disclosure_audit_and_provenance_are_stored_for_every_send(harness: SyncHarness) -> None:
    """A sent record gets a disclosure AuditEvent and a Provenance per resource, stored locally."""
    run = harness.run
    [_, srs] = harness.intake([R.sharing_consent(run), R.srs(run, 1)])
    harness.drain()
    entries = harness.store.list_audit(record_id=srs.record_id)
    actions = [e.action for e in entries]
    assert actions.count("disclose") == 1 and actions.count("provenance") == 6
    assert not any(e.pushed for e in entries)
    assert harness.tagged("AuditEvent") == [] and harness.tagged("Provenance") == []


def test_push_audit_sends_audit_events_and_provenance(harness: SyncHarness) -> None:
    """With push_audit the AuditEvent and Provenance resources land on the server too."""
    run = harness.run
    [_, rating] = harness.intake([R.sharing_consent(run), R.rating(run, 1)])
    harness.drain(push_audit=True)
    entries = harness.store.list_audit(record_id=rating.record_id)
    sent_entries = [e for e in entries if e.action in ("disclose", "provenance")]
    assert sent_entries and all(e.pushed for e in sent_entries)
    [provenance] = [
        p
        for p in harness.tagged("Provenance")
        if p["entity"][0]["what"]["identifier"]["value"] == rating.record_id
    ]
    assert provenance["target"][0]["reference"].startswith(f"Observation/{rating.record_id}")
