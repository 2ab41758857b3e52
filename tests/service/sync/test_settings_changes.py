"""Settings changed between runs of the worker: what the store holds from before (held, sent,
pulled) is handled under the settings now in force, without a send the patient's consents no
longer permit, a stall or a destructive surprise on the server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.pull import Puller, _foreign_record, foreign_record_id
from fhir_alliance_service.sync.retract import Retractor

from fhir_alliance.client import FhirClient
from tests.service.api.test_notes import _note, _recording_consent, _sharing_consent
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import QUICK_RETRY, SyncHarness

OLD_SERVER = "https://old-ehr.example.org/fhir"


def _statuses(harness: SyncHarness, patient: str) -> dict[str, str]:
    return {
        r.record_id: str(r.body.get("status")) for r in harness.store.consents_for_patient(patient)
    }


def test_a_permit_pulled_under_the_old_base_url_does_not_outlive_its_revocation(
    harness: SyncHarness,
) -> None:
    """FHIR_BASE_URL now names the same server another way: the consent pulled under the old
    URL is withdrawn once the new URL's pass has read the server's copy (nothing is retracted
    meanwhile), so revoking it on the server stops the sharing: no stale copy keeps permitting."""
    patient = f"Patient/alias-{harness.run}"
    [first] = harness.intake([R.rating(harness.run, 1, patient)])
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    Puller(harness.settings, harness.store, harness.client).pull()
    harness.drain()
    assert harness.state(first.record_id) is SyncState.SENT

    alias_url = harness.server.base_url.replace("127.0.0.1", "localhost")
    assert alias_url != harness.server.base_url
    settings = replace(harness.settings, fhir_base_url=alias_url, retraction_policy="delete")
    with FhirClient(alias_url, retry=QUICK_RETRY) as client:
        moved = replace(harness, settings=settings, client=client)
        puller = Puller(settings, harness.store, client)
        assert puller.pull().withdrawn_elsewhere == 1
        assert sorted(_statuses(harness, patient).values()) == ["active", "revoked"]
        # The server's consent, read under the new URL, still permits what was sent.
        assert Retractor(settings, harness.store, client).run_pass().deleted == 0
        assert (
            len(harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-1")) == 1
        )

        remote.update(harness.server, consent, status="inactive")
        puller.pull()
        [second] = harness.intake([R.rating(harness.run, 2, patient)])
        moved.drain()
        assert harness.state(second.record_id) is SyncState.HELD
        assert harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-2") == []


@pytest.mark.parametrize(("decision", "after"), [("permit", "revoked"), ("deny", "active")])
def test_consents_pulled_from_another_server_permit_no_more_but_still_deny(
    harness: SyncHarness, decision: str, after: str
) -> None:
    """A consent pulled from a server the service no longer syncs with: its permit is withdrawn
    (nobody would see its revocation), its deny stays in force (deny by default)."""
    patient = f"Patient/moved-{harness.run}"
    harness.intake([R.rating(harness.run, 1, patient)])
    resource = {**remote.pcf_consent(patient, decision=decision), "id": f"c-{harness.run}"}
    record_id = foreign_record_id(OLD_SERVER, resource["id"])
    new, state = _foreign_record(resource, record_id, patient)
    assert state == "merged"
    harness.store.put_remote_records([new], origin=OLD_SERVER, audit=[], at=datetime.now(UTC))

    report = Puller(harness.settings, harness.store, harness.client).pull()
    assert report.error is None
    assert _statuses(harness, patient) == {record_id: after}
    assert report.withdrawn_elsewhere == (1 if decision == "permit" else 0)


def test_records_held_under_the_old_recipients_go_under_the_new_ones(harness: SyncHarness) -> None:
    """Recipients corrected to the name the patient's consent gives the EHR: the ratings held as
    'no consent' under the old name are decided again by the next worker, and sent."""
    ehr = "Organization/ehr-as-consents-name-it"
    consent, rating = harness.intake(
        [R.sharing_consent(harness.run, recipient=ehr), R.rating(harness.run, 1)]
    )
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    harness.drain(recipients=(ehr,))
    assert harness.state(rating.record_id) is SyncState.SENT
    assert harness.state(consent.record_id) is SyncState.SENT


def test_consent_records_held_while_push_consents_was_off_go_once_it_is_on(
    harness: SyncHarness,
) -> None:
    """Consent records held while pushing them was off reach the EHR once it is turned on."""
    consent, rating = harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    harness.drain(push_consents=False)
    assert harness.state(consent.record_id) is SyncState.HELD
    assert harness.state(rating.record_id) is SyncState.SENT
    harness.drain()
    assert harness.state(consent.record_id) is SyncState.SENT
    assert len(harness.on_server("Consent", R.consent_id(harness.run, "Patient/p1"))) == 1


def test_drafts_held_while_push_draft_notes_was_off_go_once_it_is_on(harness: SyncHarness) -> None:
    """Draft notes held while push_draft_notes was off go once it is on; a flagged conflict or
    anything held under unchanged settings is not re-queued again."""
    run = harness.run
    *_, note = harness.intake([_recording_consent(run), _sharing_consent(run), _note(run)])
    harness.drain()
    assert harness.state(note.record_id) is SyncState.HELD
    harness.drain()  # the same settings: nothing is decided again
    status = harness.store.sync_status(note.record_id)
    assert status is not None and status.state is SyncState.HELD
    harness.drain(push_draft_notes=True)
    assert harness.state(note.record_id) is SyncState.SENT


def test_unchanged_settings_requeue_nothing(harness: SyncHarness) -> None:
    """A worker restarted with the same settings leaves held records held (no new hold audit)."""
    [rating] = harness.intake([R.rating(harness.run, 1)])
    harness.drain()
    before = harness.store.list_audit(record_id=rating.record_id)
    assert harness.drain().claimed == 0
    assert harness.store.list_audit(record_id=rating.record_id) == before


def test_renaming_the_ehr_in_the_settings_retracts_nothing_a_revocation_still_does(
    harness: SyncHarness,
) -> None:
    """Recipients changed to a name the patient's consent does not use: the full retraction pass
    deletes nothing (the patient withdrew nothing); once the patient revokes, it deletes."""
    harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    assert harness.drain().sent == 2
    renamed = ("Organization/ehr-renamed",)
    harness.drain(recipients=renamed)  # a worker starts with the new name
    settings = replace(harness.settings, recipients=renamed, retraction_policy="delete")
    retractor = Retractor(settings, harness.store, harness.client)
    assert retractor.run_pass(everyone=True).deleted == 0
    assert len(harness.tagged("Observation")) == 1
    harness.intake([R.revocation(harness.run)])
    assert retractor.run_pass().deleted == 1
    assert harness.tagged("Observation") == []
