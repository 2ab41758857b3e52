"""The pull against the test FHIR server: Consents created, changed or revoked on the server by
someone else change what the worker sends; dedupe on (id, versionId); the overlap window; our own
consents withdrawn on the server; Observations pulled read-only. Deletions: test_pull_history.py."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta

from fhir_alliance_service.store.interface import PullCursor, SyncState
from fhir_alliance_service.sync.pull import TwoWaySync
from fhir_alliance_service.sync.worker import Worker

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, known_patient, puller, rating_state


def test_a_consent_created_on_the_server_releases_held_records(harness: SyncHarness) -> None:
    """No consent: held. A permit written on the server by someone else is pulled, merged as a
    remote-origin consent, and the held record is released and sent."""
    patient = known_patient(harness)
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD

    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    report = puller(harness).pull()
    assert report.error is None
    assert (report.merged, report.released) == (1, 2)  # ratings 0 and 1
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.SENT
    assert len(harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-1")) == 1
    # Merged, never pushed back: no outbox item for the pulled consent.
    [consent] = harness.store.consents_for_patient(patient)
    assert harness.store.sync_status(consent.record_id) is None
    assert [e.action for e in harness.store.list_audit(record_id=consent.record_id)] == ["pull"]


def test_a_consent_changed_to_deny_on_the_server_holds_new_records(harness: SyncHarness) -> None:
    """A remote permit edited into a deny is pulled as a new version; what comes next is held."""
    patient = known_patient(harness)
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller(harness).pull()
    assert rating_state(harness, 2, patient) is SyncState.SENT

    provision = {**consent["provision"], "type": "deny"}
    remote.update(harness.server, consent, provision=provision)
    report = puller(harness).pull()
    assert report.merged == 1
    assert rating_state(harness, 3, patient) is SyncState.HELD


def test_a_consent_revoked_on_the_server_holds_new_records(harness: SyncHarness) -> None:
    """A remote consent set inactive (revoked at the front desk) stops further pushes."""
    patient = known_patient(harness)
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller(harness).pull()
    assert rating_state(harness, 1, patient) is SyncState.SENT

    remote.update(harness.server, consent, status="inactive")
    assert puller(harness).pull().merged == 1
    assert rating_state(harness, 2, patient) is SyncState.HELD


def test_a_second_pull_skips_what_it_has_seen(harness: SyncHarness) -> None:
    """Resources re-read by the overlap or a full listing are deduplicated on id + versionId."""
    patient = known_patient(harness)
    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    first = puller(harness).pull()
    second = puller(harness).pull(full_listing=True)
    assert (first.merged, first.duplicates) == (1, 0)
    assert (second.read, second.merged, second.duplicates) == (1, 0, 1)


def test_the_overlap_window_catches_a_write_stamped_before_the_last_poll(
    harness: SyncHarness,
) -> None:
    """A write that became visible after a poll had seen a later stamp (commit order is not
    timestamp order) is missed without an overlap and caught with one."""
    patient = known_patient(harness)
    first = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller(harness).pull()
    late = remote.create(
        harness.server, remote.foreign_consent(harness.server, patient, recipient="Organization/x")
    )
    # The cursor as if a write stamped 2 s after ``late`` had been seen before ``late`` was.
    stamped = late["meta"]["lastUpdated"].replace("Z", "+00:00")
    ahead = datetime.fromisoformat(stamped) + timedelta(seconds=2)
    cursor = harness.store.get_pull_cursor(harness.client.base.url, "Consent")
    assert cursor is not None and first["meta"]["lastUpdated"] <= (cursor.last_updated or "")
    harness.store.save_pull_cursor(
        replace(cursor, last_updated=ahead.isoformat().replace("+00:00", "Z")),
        at=ahead,
    )
    missed = puller(harness, pull_overlap_seconds=0.0).pull(full_listing=False)
    assert missed.read == 0
    caught = puller(harness, pull_overlap_seconds=10.0).pull(full_listing=False)
    assert caught.merged == 1
    assert len(harness.store.consents_for_patient(patient)) == 2


def test_an_unreadable_remote_consent_holds_and_never_permits(harness: SyncHarness) -> None:
    """A foreign consent the library cannot read (research scope) holds the patient's records."""
    patient = known_patient(harness)
    unreadable = remote.foreign_consent(harness.server, patient)
    unreadable["scope"]["coding"][0]["code"] = "research"
    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    remote.create(harness.server, unreadable)
    report = puller(harness).pull()
    assert (report.merged, report.unreadable) == (2, 1)
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == "a consent for this patient could not be read"


def test_our_consent_withdrawn_on_the_server_is_revoked_here(harness: SyncHarness) -> None:
    """Our pushed consent set inactive on the server by someone else is adopted as a local
    revocation at once: later records are held, and the revoked version goes back out."""
    patient = known_patient(harness)
    [consent, _] = harness.intake(
        [R.sharing_consent(harness.run, patient), R.rating(harness.run, 1, patient)]
    )
    harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    remote.update(harness.server, on_server, status="inactive")

    report = puller(harness).pull()
    assert report.withdrawn == 1
    stored = harness.store.get_record(consent.record_id)
    assert stored is not None and stored.body["status"] == "revoked"
    assert rating_state(harness, 2, patient) is SyncState.HELD
    # The revoked version goes out against the version the pull adopted: no conflict.
    status = harness.store.sync_status(consent.record_id)
    assert status is not None and status.state is SyncState.SENT and status.conflict is None
    [after] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    assert after["meta"]["versionId"] == "3" and after["status"] == "inactive"


def test_a_content_edit_of_our_consent_is_a_conflict_not_a_merge(harness: SyncHarness) -> None:
    """Someone else's edit of our consent that keeps it active is noted as a conflict on the
    record's status; our version stays the source of truth."""
    patient = known_patient(harness)
    [consent] = harness.intake([R.sharing_consent(harness.run, patient)])
    harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    remote.update(harness.server, on_server, dateTime="2026-11-03T09:00:00Z")
    report = puller(harness).pull()
    assert (report.conflicts, report.merged, report.withdrawn) == (1, 0, 0)
    status = harness.store.sync_status(consent.record_id)
    assert status is not None and status.conflict == "remote-edited"


def test_observations_written_by_others_are_pulled_read_only(harness: SyncHarness) -> None:
    """With pull_observations, Observations of our patients written by others are kept (content
    included) and never queued for a push; our own are recognised and not copied."""
    patient = known_patient(harness)
    harness.intake([R.sharing_consent(harness.run, patient), R.rating(harness.run, 1, patient)])
    harness.drain()
    theirs = remote.create(
        harness.server,
        harness.server.tagged(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "72133-2"}]},
                "subject": {"reference": patient},
                "valueInteger": 12,
            }
        ),
    )
    before = harness.store.counts_by_state()
    report = puller(harness, pull_observations=True).pull()
    assert report.observations == 1
    pulled = harness.store.pulled(harness.client.base.url, "Observation", [theirs["id"]])
    assert pulled[theirs["id"]].body is not None
    assert pulled[theirs["id"]].body["valueInteger"] == 12  # type: ignore[index]
    assert harness.store.counts_by_state() == before


def test_a_pull_cursor_is_kept_per_server_and_type(harness: SyncHarness) -> None:
    """After a pull the cursor names the newest lastUpdated seen and the listing generation."""
    patient = known_patient(harness)
    created = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller(harness).pull()
    cursor = harness.store.get_pull_cursor(harness.client.base.url, "Consent")
    assert isinstance(cursor, PullCursor)
    assert cursor.last_updated == created["meta"]["lastUpdated"]
    assert cursor.generation == 1 and cursor.full_listing_at is not None


def test_a_patient_first_known_after_a_pull_is_read_in_full(harness: SyncHarness) -> None:
    """Consents of a patient the store did not know at the last pull are read whatever the
    cursor says, once the patient is known."""
    patient = f"Patient/pull-late-{harness.run}"
    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    assert puller(harness).pull().merged == 0  # not our patient (yet)
    other = remote.create(
        harness.server, remote.foreign_consent(harness.server, known_patient(harness, "other"))
    )
    assert other["meta"]["lastUpdated"]
    harness.intake([R.rating(harness.run, 1, patient)])
    report = puller(harness).pull(full_listing=False)
    assert report.merged == 2  # the late patient's old consent, the other patient's new one
    assert len(harness.store.consents_for_patient(patient)) == 1


def test_the_worker_loop_pulls_every_interval(harness: SyncHarness) -> None:
    """run_forever with the two-way tick: a consent written on the server while the worker runs
    reaches the gate within a poll interval, and the held record goes out."""
    patient = known_patient(harness)
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    settings = replace(harness.settings, pull_interval_seconds=0.2)
    two_way = TwoWaySync(settings, harness.store, harness.client)
    worker = Worker(
        settings,
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        between_batches=two_way.tick,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while harness.state(rating.record_id) is not SyncState.HELD:
            assert time.monotonic() < deadline, "never held"
            time.sleep(0.05)
        remote.create(harness.server, remote.foreign_consent(harness.server, patient))
        while harness.state(rating.record_id) is not SyncState.SENT:
            assert time.monotonic() < deadline, "the pulled consent never released the record"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_patient_known_here_by_identifier_is_found_on_the_server(harness: SyncHarness) -> None:
    """A patient named here only by identifier is looked up on the server (Patient?identifier),
    linked and aliased; the consent the server holds under Patient/<id> then permits the records
    filed under the identifier."""
    mrn = f"urn:oid:2.16.840.1.113883.3.9999.1|mrn-{harness.run}"
    system, value = mrn.split("|")
    on_server = remote.create(
        harness.server,
        harness.server.tagged(
            {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}
        ),
    )
    rating = R.rating(harness.run, 1)
    rating["patient"] = {"identifier": mrn}
    [record] = harness.intake([rating])
    harness.drain()
    assert harness.state(record.record_id) is SyncState.HELD
    remote.create(
        harness.server, remote.foreign_consent(harness.server, f"Patient/{on_server['id']}")
    )
    report = puller(harness).pull()
    assert (report.merged, report.released) == (1, 1)
    assert harness.store.patient_keys(mrn) == [mrn, f"Patient/{on_server['id']}"]
    harness.drain()
    assert harness.state(record.record_id) is SyncState.SENT
