"""A tightened retraction policy reaches records already marked ``kept``: "kept" means kept under
the policy in force then, so once the clinic retracts (``entered-in-error`` or ``delete``) what is
still shared after a revocation is retracted on the next pass, and only once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.sync.pull import Puller, TwoWaySync
from fhir_alliance_service.sync.retract import Retractor

from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM


def _retractor(harness: SyncHarness, policy: str) -> Retractor:
    return Retractor(
        replace(harness.settings, retraction_policy=policy), harness.store, harness.client
    )


def _shared_then_kept(harness: SyncHarness) -> dict[str, Any]:
    """A consent, a rating and an SRS of Patient/p1, sent; the consent revoked under policy none."""
    consent, rating, srs = harness.intake(
        [
            R.sharing_consent(harness.run, "Patient/p1"),
            R.rating(harness.run, 1, "Patient/p1"),
            R.srs(harness.run, 2, "Patient/p1"),
        ]
    )
    assert harness.drain().sent == 3
    harness.intake([R.revocation(harness.run, "Patient/p1")])
    assert _retractor(harness, "none").run_pass().kept == 2
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.retraction == "kept"
    return {"consent": consent, "rating": rating, "srs": srs}


def test_kept_records_are_retracted_once_the_policy_is_entered_in_error(
    harness: SyncHarness,
) -> None:
    """The repro: kept under none, then a full pull and pass under entered-in-error."""
    shared = _shared_then_kept(harness)
    settings = replace(harness.settings, retraction_policy="entered-in-error")
    Puller(settings, harness.store, harness.client).pull(full_listing=True)
    report = Retractor(settings, harness.store, harness.client).run_pass(everyone=True)
    assert (report.entered_in_error, report.kept, report.failed) == (2, 0, 0)
    [rating] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert rating["status"] == "entered-in-error"
    assert {o["status"] for o in harness.tagged("Observation")} == {"entered-in-error"}
    status = harness.store.sync_status(shared["srs"].record_id)
    assert status is not None and status.retraction == "entered-in-error"
    actions = [e.action for e in harness.store.list_audit(record_id=shared["rating"].record_id)]
    # The mark's Provenance (the rating's one resource) is stored with its AuditEvent.
    assert actions[-3:] == ["retract-kept", "retract-entered-in-error", "provenance"]

    # Idempotent: done records are not redone, under this policy or a stricter one.
    again = Retractor(settings, harness.store, harness.client).run_pass(everyone=True)
    assert (again.checked, again.entered_in_error) == (0, 0)
    stricter = _retractor(harness, "delete").run_pass(everyone=True)
    assert (stricter.checked, stricter.deleted) == (0, 0)
    assert len(harness.tagged("Observation")) == 7


def test_kept_records_are_deleted_once_the_policy_is_delete(harness: SyncHarness) -> None:
    shared = _shared_then_kept(harness)
    report = _retractor(harness, "delete").run_pass(everyone=True)
    assert (report.deleted, report.failed) == (2, 0)
    assert harness.tagged("Observation") == []
    status = harness.store.sync_status(shared["rating"].record_id)
    assert status is not None and status.retraction == "deleted"
    assert _retractor(harness, "delete").run_pass(everyone=True).checked == 0


def test_policy_none_leaves_kept_records_alone(harness: SyncHarness) -> None:
    """Still under none: a kept record is not re-checked nor audited again on every pass."""
    shared = _shared_then_kept(harness)
    before = len(harness.store.list_audit(record_id=shared["rating"].record_id))
    report = _retractor(harness, "none").run_pass(everyone=True)
    assert (report.checked, report.kept) == (0, 0)
    assert len(harness.store.list_audit(record_id=shared["rating"].record_id)) == before


def test_kept_records_of_a_patient_sharing_again_stay(harness: SyncHarness) -> None:
    """A kept record whose patient consents again is permitted: nothing is retracted."""
    _shared_then_kept(harness)
    harness.intake([R.sharing_consent(harness.run, "Patient/p1", n=2)])
    report = _retractor(harness, "delete").run_pass(everyone=True)
    assert (report.checked, report.deleted) == (2, 0)
    assert len(harness.tagged("Observation")) == 7


@pytest.mark.parametrize("policy", ["entered-in-error", "delete"])
def test_a_worker_started_under_a_stricter_policy_retracts_on_its_first_pass(
    harness: SyncHarness, policy: str
) -> None:
    """A worker takes the consent stamps as checked at start, but not those of patients with a
    kept record once the policy retracts: its first (not full) pass retracts them."""
    _shared_then_kept(harness)
    settings = replace(
        harness.settings, retraction_policy=policy, pull_full_listing_seconds=86_400.0
    )
    sync = TwoWaySync(settings, harness.store, harness.client)
    sync.tick()
    observations = harness.tagged("Observation")
    if policy == "delete":
        assert observations == []
    else:
        assert {o["status"] for o in observations} == {"entered-in-error"}
