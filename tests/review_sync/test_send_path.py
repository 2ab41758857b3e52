"""Outside review of the sync worker, its send path: what a retraction leaves for the next
update's If-Match, the audit of a lost answer recorded as sent, and sends after the lease ran out
(isolation of a refused Bundle, a conflict's overwrite)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.gate import gate_item
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from tests.review_sync.steps import value_of
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, now

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


# ---------------------------------------------------------------- audit of a lost answer


def _answer_lost(harness: SyncHarness, value: int) -> str:
    """Version 2 of a sent rating: our update lands, its answer is lost (the lease runs out
    unrecorded, as tests/service/sync/test_conflict.py plays it)."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [changed] = harness.intake([R.rating(run, 1, value=value)])
    [item] = harness.store.claim("lost", limit=1, lease_seconds=0.01, now=now())
    gated = gate_item(item, settings=harness.settings, store=harness.store, version=R4, at=now())
    [resource] = gated.resources
    harness.client.update(harness.server.tagged(resource), if_match="1")
    time.sleep(0.02)
    return changed.record_id


@pytest.mark.parametrize("policy", ["flag", "keep-remote", "overwrite"])
def test_a_lost_answer_recorded_as_sent_still_has_its_disclosure_audit(
    harness: SyncHarness, policy: str
) -> None:
    """The next try of the lost answer gets 412, reads the resource back, finds our content
    and records the item sent (whatever the conflict policy): the disclosure did happen, so it
    has its AuditEvent ``disclose`` and a Provenance naming the server's version 2."""
    record_id = _answer_lost(harness, 5)
    harness.drain(conflict_policy=policy)
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict is None and status.sent[0].version_id == "2"
    audit = harness.store.list_audit(record_id=record_id)
    actions = [e.action for e in audit]
    print(f"state={status.state.value} audit_actions={actions}")
    assert actions.count("disclose") == 2, "the second disclosure (version 2) is not audited"
    assert actions.count("provenance") == 2, "no Provenance for the resource pushed again"
    [provenance] = [e for e in audit if e.action == "provenance"][-1:]
    targets = [t["reference"] for t in provenance.resource["target"]]
    assert any(t.endswith("/_history/2") for t in targets), targets


def test_a_lost_answer_audit_is_queued_for_the_server_when_pushed(harness: SyncHarness) -> None:
    """With ``push_audit``, the lost answer's AuditEvent and Provenance are queued for the FHIR
    server like those of any send."""
    record_id = _answer_lost(harness, 5)
    harness.drain(push_audit=True)
    later = [
        e
        for e in harness.store.list_audit(record_id=record_id)
        if e.action in ("disclose", "provenance")
    ][2:]
    assert [e.action for e in later] == ["disclose", "provenance"]
    assert all(e.push_state is not None for e in later)
