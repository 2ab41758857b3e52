"""Revocation and retraction against the test FHIR server: a revoked share stops further pushes
(queued records included), and what was shared before follows the retraction policy, each step
audited and shown on the record's status."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.pull import Puller
from fhir_alliance_service.sync.retract import Retractor

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM


def _retractor(harness: SyncHarness, policy: str) -> Retractor:
    return Retractor(
        replace(harness.settings, retraction_policy=policy), harness.store, harness.client
    )


def _shared(harness: SyncHarness, patient: str = "Patient/p1", n: int = 1) -> dict[str, Any]:
    """A consent, a rating (number ``n``) and an SRS (``n + 1``) of ``patient``, all sent."""
    consent, rating, srs = harness.intake(
        [
            R.sharing_consent(harness.run, patient),
            R.rating(harness.run, n, patient),
            R.srs(harness.run, n + 1, patient),
        ]
    )
    assert harness.drain().sent == 3
    return {"consent": consent, "rating": rating, "srs": srs}


def _revoke(harness: SyncHarness, patient: str = "Patient/p1") -> None:
    harness.intake([R.revocation(harness.run, patient)])


def test_a_revocation_holds_records_already_queued(harness: SyncHarness) -> None:
    """Records queued before the revocation are held when claimed, never sent."""
    harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    harness.drain()
    [queued] = harness.intake([R.rating(harness.run, 2)])
    _revoke(harness)
    harness.drain()
    assert harness.state(queued.record_id) is SyncState.HELD
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-2") == []


def test_policy_none_keeps_shared_data_and_says_so(harness: SyncHarness) -> None:
    """Policy none: the server keeps what it has; the status and the audit say 'kept'."""
    shared = _shared(harness)
    _revoke(harness)
    report = _retractor(harness, "none").run_pass()
    assert (report.kept, report.deleted, report.entered_in_error) == (2, 0, 0)
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert on_server["status"] == "final" and on_server["meta"]["versionId"] == "1"
    status = harness.store.sync_status(shared["rating"].record_id)
    assert status is not None and status.retraction == "kept"
    actions = [e.action for e in harness.store.list_audit(record_id=shared["rating"].record_id)]
    assert actions[-1] == "retract-kept"


def test_policy_entered_in_error_marks_every_shared_resource(harness: SyncHarness) -> None:
    """Policy entered-in-error: every resource of every revoked record (the SRS panel and its
    members too) is marked entered-in-error on the server; the consent itself is left alone."""
    shared = _shared(harness)
    _revoke(harness)
    report = _retractor(harness, "entered-in-error").run_pass()
    assert report.entered_in_error == 2 and report.failed == 0
    observations = harness.tagged("Observation")
    assert len(observations) == 7
    assert {o["status"] for o in observations} == {"entered-in-error"}
    status = harness.store.sync_status(shared["srs"].record_id)
    assert status is not None and status.retraction == "entered-in-error"
    # What the server holds now, our entered-in-error versions: the If-Match of a later update.
    assert {s.version_id for s in status.sent} == {"2"}
    audit = harness.store.list_audit(record_id=shared["srs"].record_id)
    # The AuditEvent, then a Provenance of each version marked (test_write_provenance.py).
    assert [e.action for e in audit[-7:]] == ["retract-entered-in-error"] + ["provenance"] * 6
    assert len(audit[-7].resource["entity"]) == 2 + 6  # patient, record, six resources
    [consent] = harness.on_server("Consent", R.consent_id(harness.run, "Patient/p1"))
    assert consent["status"] != "entered-in-error"


def test_policy_delete_removes_shared_resources(harness: SyncHarness) -> None:
    """Policy delete: the revoked records' resources are gone from the server."""
    shared = _shared(harness)
    _revoke(harness)
    report = _retractor(harness, "delete").run_pass()
    assert report.deleted == 2
    assert harness.tagged("Observation") == []
    status = harness.store.sync_status(shared["rating"].record_id)
    assert status is not None and status.retraction == "deleted"
    assert [s.version_id for s in status.sent] == [None]  # nothing left: a later PUT creates
    assert harness.store.list_audit(record_id=shared["rating"].record_id)[-1].action == (
        "retract-delete"
    )


def test_a_second_pass_changes_nothing(harness: SyncHarness) -> None:
    """Retraction is done once: a second pass (even over everyone) finds nothing left to do."""
    _shared(harness)
    _revoke(harness)
    retractor = _retractor(harness, "delete")
    assert retractor.run_pass().deleted == 2
    again = retractor.run_pass(everyone=True)
    assert (again.deleted, again.checked) == (0, 0)


def test_permitted_records_are_not_retracted(harness: SyncHarness) -> None:
    """Another patient whose consent stands keeps their shared records."""
    _shared(harness, "Patient/p1")
    other = _shared(harness, "Patient/p2", n=3)
    _revoke(harness, "Patient/p1")
    _retractor(harness, "delete").run_pass()
    status = harness.store.sync_status(other["rating"].record_id)
    assert status is not None and status.retraction is None
    assert len(harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")) == 0
    assert len(harness.tagged("Observation")) == 7  # p2's rating and SRS (6) remain


@pytest.mark.parametrize("policy", ["entered-in-error", "delete"])
def test_a_revocation_pulled_from_the_server_retracts(harness: SyncHarness, policy: str) -> None:
    """A consent revoked on the server by someone else, once pulled, retracts by the policy."""
    patient = f"Patient/retract-{harness.run}"
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller = Puller(harness.settings, harness.store, harness.client)
    puller.pull()
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.SENT

    remote.update(harness.server, consent, status="inactive")
    puller.pull()
    report = _retractor(harness, policy).run_pass()
    assert report.failed == 0
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.retraction == policy.replace("delete", "deleted")


def test_the_api_status_shows_the_retraction(harness: SyncHarness, sqlite_url: str) -> None:
    """GET /v1/records/<id>/status carries the retraction the policy made."""
    from fhir_alliance_service.app import create_app
    from fhir_alliance_service.auth import create_api_key

    shared = _shared(harness)
    _revoke(harness)
    _retractor(harness, "delete").run_pass()
    key = create_api_key(harness.store, "status", ["read"])
    app = create_app({"database_url": sqlite_url})
    try:
        response = app.test_client().get(
            f"/v1/records/{shared['rating'].record_id}/status",
            headers={"Authorization": f"Bearer {key}"},
        )
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert response.status_code == 200, response.json
    assert (response.json["retraction"], response.json["conflict"]) == ("deleted", None)


def test_an_expired_share_stops_pushes_and_is_retracted_on_a_full_pass(
    harness: SyncHarness,
) -> None:
    """A consent whose period ends: nothing more goes out, and a pass over everyone (expiries
    change no stamp) retracts what was shared under it."""
    from datetime import timedelta

    from tests.service.sync.conftest import now

    ends = now() + timedelta(seconds=2)
    consent = R.sharing_consent(harness.run)
    consent["period"] = {"start": "2026-11-01T00:00:00+00:00", "end": ends.isoformat()}
    [_, rating] = harness.intake([consent, R.rating(harness.run, 1)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.SENT
    retractor = _retractor(harness, "delete")
    assert retractor.run_pass().deleted == 0  # still permitted
    while now() <= ends:
        time.sleep(0.1)
    [late] = harness.intake([R.rating(harness.run, 2)])
    harness.drain()
    assert harness.state(late.record_id) is SyncState.HELD
    assert retractor.run_pass().deleted == 0  # no consent changed: not looked at
    assert retractor.run_pass(everyone=True).deleted == 1
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1") == []


def test_a_pulled_consent_moved_to_another_patient_retracts_what_the_first_shared(
    harness: SyncHarness,
) -> None:
    """A foreign permit of patient A, under which A's rating was sent, is moved to patient B on
    the server (its patient changed): the pull marks both patients changed, the retraction pass
    retracts A's rating (A no longer has a permit, and has no consent record left at all), B's
    held rating is released and sent, and A's next rating is held."""
    first, second = f"Patient/move-a-{harness.run}", f"Patient/move-b-{harness.run}"
    [rating] = harness.intake([R.rating(harness.run, 1, first)])
    [other] = harness.intake([R.rating(harness.run, 2, second)])
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, first))
    puller = Puller(harness.settings, harness.store, harness.client)
    retractor = _retractor(harness, "delete")
    puller.pull()
    harness.drain()
    assert (harness.state(rating.record_id), harness.state(other.record_id)) == (
        SyncState.SENT,
        SyncState.HELD,
    )
    assert retractor.run_pass().retracted_records == []

    remote.update(harness.server, consent, patient={"reference": second})
    moved = puller.pull()
    report = retractor.run_pass()
    assert moved.changed_patients == {first, second}
    assert report.failed == 0
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.retraction == "deleted"
    [later] = harness.intake([R.rating(harness.run, 3, first)])
    harness.drain()
    assert (harness.state(other.record_id), harness.state(later.record_id)) == (
        SyncState.SENT,
        SyncState.HELD,
    )
