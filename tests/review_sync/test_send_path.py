"""Outside review of the sync worker, its send path: what a retraction leaves for the next
update's If-Match, the audit of a lost answer recorded as sent, and sends after the lease ran out
(isolation of a refused Bundle, a conflict's overwrite)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from tests.review_sync.steps import value_of
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM
R4 = "4.0.1"


def _retractor(harness: SyncHarness, policy: str) -> Retractor:
    return Retractor(
        replace(harness.settings, retraction_policy=policy), harness.store, harness.client
    )


def _retracted_then_consented_again(harness: SyncHarness, policy: str) -> list[str]:
    """A rating and an SRS (a panel and its members) sent, the consent revoked, both retracted
    by ``policy`` (our own writes), then the patient consents again: their record ids."""
    run = harness.run
    shared = harness.intake([R.sharing_consent(run), R.rating(run, 1, value=3), R.srs(run, 2)])
    assert harness.drain().sent == 3
    harness.intake([R.revocation(run)])
    harness.drain()
    report = _retractor(harness, policy).run_pass()
    assert report.failed == 0 and len(report.retracted_records) == 2
    harness.intake([R.sharing_consent(run, n=2)])
    harness.drain()
    return [r.record_id for r in shared[1:]]


# ---------------------------------------------------------------- retraction then re-consent


@pytest.mark.parametrize("policy", ["entered-in-error", "delete"])
def test_a_new_version_after_our_own_retraction_is_no_conflict(
    harness: SyncHarness, policy: str
) -> None:
    """A rating sent, the consent revoked, the rating retracted (our own write on the server),
    the patient consents again and the rating is corrected (version 2 of the record): the
    correction is sent as the server's newest version, not held as someone else's change."""
    run = harness.run
    _retracted_then_consented_again(harness, policy)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    print(
        f"state={status.state.value} conflict={status.conflict} held_reason={status.held_reason!r}"
    )
    assert status.state is SyncState.SENT and status.conflict is None
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    assert value_of(on_server)["value"] == 5 and on_server["status"] == "final"


def test_a_retraction_records_the_versions_it_wrote(harness: SyncHarness) -> None:
    """entered-in-error: the record's status lists the versions the retraction wrote (the
    server's now), each resource of the SRS panel too."""
    record_ids = _retracted_then_consented_again(harness, "entered-in-error")
    retracted = harness.tagged("Observation")
    assert {r["status"] for r in retracted} == {"entered-in-error"}
    assert len(retracted) == 7  # the rating, the SRS panel and its six members
    on_server = {(r["resourceType"], r["id"]): r["meta"]["versionId"] for r in retracted}
    listed: dict[tuple[str, str], str | None] = {}
    for record_id in record_ids:
        status = harness.store.sync_status(record_id)
        assert status is not None and status.retraction == "entered-in-error"
        listed.update({(s.resource_type, s.id): s.version_id for s in status.sent})
    assert listed == on_server
    assert set(listed.values()) == {"2"}


def test_a_retraction_that_fails_half_way_keeps_the_versions_it_wrote(
    harness: SyncHarness,
) -> None:
    """entered-in-error of an SRS (six resources) fails on the third (a 503): the two already
    marked are listed at the versions the retraction wrote (what a later update's If-Match
    needs), and the next pass, which finds them marked and leaves them, keeps them so."""
    from fhir_alliance.errors import TransientServerError

    run = harness.run
    [_, shared] = harness.intake([R.sharing_consent(run), R.srs(run, 2)])
    assert harness.drain().sent == 2
    harness.intake([R.revocation(run)])
    harness.drain()
    original = harness.client.update
    updates: list[int] = []

    def update(resource: Any, **kwargs: Any) -> Any:
        updates.append(1)
        if len(updates) == 3:
            raise TransientServerError("busy", status=503)
        return original(resource, **kwargs)

    harness.client.update = update  # type: ignore[method-assign]
    retractor = _retractor(harness, "entered-in-error")
    assert retractor.run_pass().failed == 1
    harness.client.update = original  # type: ignore[method-assign]
    on_server = {
        (r["resourceType"], r["id"]): r["meta"]["versionId"] for r in harness.tagged("Observation")
    }
    srs = harness.store.sync_status(shared.record_id)
    assert srs is not None and srs.retraction is None
    assert {(s.resource_type, s.id): s.version_id for s in srs.sent} == on_server
    assert sorted(on_server.values()) == ["1"] * 4 + ["2"] * 2
    assert retractor.run_pass().entered_in_error == 1
    status = harness.store.sync_status(shared.record_id)
    assert status is not None and status.retraction == "entered-in-error"
    assert {s.version_id for s in status.sent} == {"2"}


def test_a_remote_edit_after_our_retraction_is_still_a_conflict(harness: SyncHarness) -> None:
    """Someone else edits the rating after our entered-in-error: the correction's If-Match is
    our retraction's version, so their edit is a conflict (flag: held for a person)."""
    run = harness.run
    _retracted_then_consented_again(harness, "entered-in-error")
    [retracted] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    remote.update(harness.server, retracted, status="final", valueInteger=1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == CONFLICT_HELD_REASON and status.conflict == "flagged"
