"""Outside review of the sync worker, its send path: what a retraction leaves for the next
update's If-Match, the audit of a lost answer recorded as sent, and sends after the lease ran out
(isolation of a refused Bundle, a conflict's overwrite)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.gate import gate_item
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.intake import intake_records

from fhir_alliance.client import EntryOutcome
from fhir_alliance.errors import PreconditionFailedError, ServerError, UnprocessableError
from tests.review_sync.steps import sent_consent_first, value_of
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


# ---------------------------------------------------------------- sends after the lease


def _lease_runs_out_during_the_bundle(
    harness: SyncHarness, answer: str
) -> tuple[list[tuple[int, bool]], Worker]:
    """Two ratings (1, value 2; and 2) claimed by a first worker, sent in one Bundle; the server
    takes the whole lease to answer. Meanwhile rating 1 is corrected (value 5, superseding the
    expired version 1) and another worker takes the batch over and sends the correction and
    rating 2. Then the first worker's Bundle is answered by ``answer``: ``refused`` (422 on
    every entry, so the items are isolated) or ``stale`` (412 to a Bundle of rating 1 only).
    The first worker's transaction calls: (entries, after its lease ran out)."""
    run = harness.run
    offset = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(UTC) + offset[0]

    settings = replace(harness.settings, lease_seconds=30.0)
    tags = [harness.server.run_tag]
    first = Worker(settings, harness.store, harness.client, tags=tags, clock=clock)
    other = Worker(settings, harness.store, harness.client, tags=tags, clock=clock)
    original = harness.client.transaction
    calls: list[tuple[int, bool]] = []
    lease_until: list[datetime] = []
    taking_over: list[bool] = []

    def transaction(requests: Any, **kwargs: Any) -> Any:
        if taking_over:
            return original(requests, **kwargs)
        calls.append((len(requests), bool(lease_until) and clock() > lease_until[0]))
        if lease_until:
            return original(requests, **kwargs)
        lease_until.append(clock() + timedelta(seconds=29))  # claimed just before (30 s lease)
        offset[0] += timedelta(seconds=31)  # the server took the whole lease to answer
        intake_records(harness.store, [R.rating(run, 1, value=5)], at=clock())  # a correction
        taking_over.append(True)
        while other.run_once().claimed:  # the batch taken over, the correction sent
            pass
        taking_over.clear()
        error: ServerError = (
            UnprocessableError("refused", status=422)
            if answer == "refused"
            else PreconditionFailedError("stale", status=412)
        )
        return [
            EntryOutcome(index=i, request=r, status=error.status, error=error)
            for i, r in enumerate(requests)
        ]

    harness.client.transaction = transaction  # type: ignore[method-assign,assignment]
    return calls, first


def test_isolation_sends_nothing_once_the_lease_has_run_out(harness: SyncHarness) -> None:
    """A Bundle of two ratings refused for good after the lease ran out: the first worker
    isolates nothing (another worker has the items; its send of version 2 stays newest, and
    rating 2 goes out once)."""
    run = harness.run
    sent_consent_first(harness)
    harness.intake([R.rating(run, 1, value=2), R.rating(run, 2)])
    calls, first = _lease_runs_out_during_the_bundle(harness, "refused")
    report = first.run_once()
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    [second] = harness.on_server("Observation", f"{RECORD}|trust-{run}-2")
    late = [n for n, after_lease in calls if after_lease]
    print(f"value_on_server={value_of(on_server)} calls={calls} sent_after_lease={late}")
    assert late == [], "sent after its lease had run out"
    assert value_of(on_server)["value"] == 5, "an older version overwrote the newer one"
    assert second["meta"]["versionId"] == "1", "rating 2 sent twice"
    assert report.sent == 0 and report.deferred == 2


def test_a_conflict_overwrites_nothing_once_the_lease_has_run_out(harness: SyncHarness) -> None:
    """Rating 1 (version 2 of the record, sent with If-Match) answered 412 after the lease ran
    out, policy overwrite: the first worker writes nothing over the server's copy (another
    worker has sent the newer version meanwhile), settles no conflict (no mark, no AuditEvent)
    and hands the item back."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=1)])
    assert harness.drain().sent == 1
    harness.intake([R.rating(run, 1, value=2)])
    calls, first = _lease_runs_out_during_the_bundle(harness, "stale")
    first.settings = replace(first.settings, conflict_policy="overwrite")
    report = first.run_once()
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    late = [n for n, after_lease in calls if after_lease]
    print(f"value_on_server={value_of(on_server)} calls={calls} sent_after_lease={late}")
    assert late == [], "sent after its lease had run out"
    assert value_of(on_server)["value"] == 5, "an older version overwrote the newer one"
    assert (report.sent, report.held, report.deferred) == (0, 0, 1)
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.SENT and status.conflict is None
    actions = [e.action for e in harness.store.list_audit(record_id=rating.record_id)]
    assert "conflict" not in actions, "a conflict settled by a worker without the item"
