"""A conflict (412 on If-Match) is noted on its outbox item only while the worker settling it still
holds the item: the read after the 412 may outlast the lease, and the worker that took the item
over settles it (the sync edge cases' item 1: ``mark_conflict`` used to write unconditionally)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_alliance_service.store import SentResource, SqlStore, SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON

from tests.review_sync.steps import conflict_events
from tests.service.store.builders import at, audit_entry, record
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

LEASE = 30.0
V2 = (SentResource("Observation", "o-1", "2"),)
V3 = (SentResource("Observation", "o-1", "3"),)


def _conflict_audit(store: SqlStore, record_id: str) -> int:
    return sum(1 for a in store.list_audit(record_id=record_id) if a.action == "conflict")


def test_mark_conflict_writes_only_on_an_item_no_worker_holds(any_store: SqlStore) -> None:
    """The pull's note: not while a worker holds the item's lease, once it is released yes."""
    any_store.put_records([record(1)], audit=[], at=at(0))
    [item] = any_store.claim("w-a", limit=1, lease_seconds=LEASE, now=at(1))
    assert not any_store.mark_conflict(item.item_id, "flagged", at=at(2))  # leased by w-a
    status = any_store.sync_status(item.record_id)
    assert status is not None and status.conflict is None
    assert any_store.mark_sent(item.item_id, "w-a", sent=[], audit=[], at=at(3))
    assert any_store.mark_conflict(item.item_id, "remote-edited", at=at(4))
    status = any_store.sync_status(item.record_id)
    assert status is not None
    assert (status.state, status.conflict) == (SyncState.SENT, "remote-edited")


def test_a_flag_is_held_noted_and_audited_in_one_compare_and_set(any_store: SqlStore) -> None:
    """``mark_held`` with ``conflict``: the hold, the conflict, the server's versions it was
    flagged against and the audit entries in one write, only under the worker's lease: for
    another worker nothing at all; for the holder HELD, flagged against those versions (what a
    person decides on). Flagged again after a decision, the new versions replace the old."""
    any_store.put_records([record(1)], audit=[], at=at(0))
    rid = record(1).record_id
    [item] = any_store.claim("w-a", limit=1, lease_seconds=LEASE, now=at(1))
    flag = {"reason": CONFLICT_HELD_REASON, "conflict": "flagged"}
    entry = audit_entry("conflict", rid)
    assert (
        any_store.mark_held(
            item.item_id, "w-b", audit=[entry], at=at(2), conflict_versions=V2, **flag
        )
        is None
    )
    status = any_store.sync_status(rid)
    assert status is not None
    assert (status.state, status.conflict, status.conflict_versions) == (
        SyncState.QUEUED,
        None,
        (),
    )
    assert _conflict_audit(any_store, rid) == 0
    assert (
        any_store.mark_held(
            item.item_id, "w-a", audit=[entry], at=at(2), conflict_versions=V2, **flag
        )
        is SyncState.HELD
    )
    status = any_store.sync_status(rid)
    assert status is not None
    assert (status.state, status.held_reason, status.conflict, status.conflict_versions) == (
        SyncState.HELD,
        CONFLICT_HELD_REASON,
        "flagged",
        V2,
    )
    assert _conflict_audit(any_store, rid) == 1
    assert [s.item_id for s in any_store.flagged_conflicts().items] == [item.item_id]
    assert any_store.decide_conflict(
        item.item_id,
        against=V2,
        keep_remote=False,
        conflict="decided-overwrite",
        audit=[],
        at=at(3),
    )
    [again] = any_store.claim("w-a", limit=1, lease_seconds=LEASE, now=at(4))
    assert (again.conflict, again.conflict_versions) == ("decided-overwrite", V2)
    assert any_store.mark_held(
        again.item_id, "w-a", audit=[entry], at=at(5), conflict_versions=V3, **flag
    )
    status = any_store.sync_status(rid)
    assert status is not None
    assert (status.state, status.conflict, status.conflict_versions) == (
        SyncState.HELD,
        "flagged",
        V3,
    )
    assert not any_store.decide_conflict(
        item.item_id,
        against=V2,
        keep_remote=True,
        conflict="decided-keep-remote",
        audit=[],
        at=at(6),
    )


def test_a_flag_on_a_superseded_item_is_not_a_conflict_to_decide(any_store: SqlStore) -> None:
    """A newer version came while the worker held the item: ``mark_held`` with ``conflict``
    leaves it SUPERSEDED (as any hold), the conflict noted and audited with it, and no person
    is asked to decide it (the newer version meets the conflict itself)."""
    any_store.put_records([record(1)], audit=[], at=at(0))
    rid = record(1).record_id
    [item] = any_store.claim("w-a", limit=1, lease_seconds=LEASE, now=at(1))
    any_store.put_records([record(1, score=2)], audit=[], at=at(2))
    assert (
        any_store.mark_held(
            item.item_id,
            "w-a",
            reason=CONFLICT_HELD_REASON,
            audit=[audit_entry("conflict", rid)],
            at=at(3),
            conflict="flagged",
            conflict_versions=V2,
        )
        is SyncState.SUPERSEDED
    )
    assert any_store.flagged_conflicts().count == 0
    assert _conflict_audit(any_store, rid) == 1


def test_keep_remote_is_recorded_sent_with_its_conflict_under_the_lease(
    any_store: SqlStore,
) -> None:
    """``mark_sent`` with ``conflict`` (the policy ``keep-remote``): SENT listing the server's
    versions, the conflict noted and audited in the same write; for a worker that lost the
    lease nothing at all."""
    any_store.put_records([record(1)], audit=[], at=at(0))
    rid = record(1).record_id
    [item] = any_store.claim("w-a", limit=1, lease_seconds=LEASE, now=at(1))
    entry = audit_entry("conflict", rid)
    kept = {"sent": list(V2), "audit": [entry], "conflict": "kept-remote"}
    assert not any_store.mark_sent(item.item_id, "w-b", at=at(2), **kept)
    status = any_store.sync_status(rid)
    assert status is not None and (status.state, status.conflict) == (SyncState.QUEUED, None)
    assert _conflict_audit(any_store, rid) == 0
    assert any_store.mark_sent(item.item_id, "w-a", at=at(2), **kept)
    status = any_store.sync_status(rid)
    assert status is not None
    assert (status.state, status.sent, status.conflict) == (SyncState.SENT, V2, "kept-remote")
    assert _conflict_audit(any_store, rid) == 1


def test_a_conflict_whose_lease_was_lost_is_left_to_the_new_holder(harness: SyncHarness) -> None:
    """Rating 1 sent; someone edits it on the server; our version 2 meets the 412. While worker A
    reads the server's copy its lease runs out and worker B takes the item over. A records
    nothing about the conflict (counted as a lost lease): the item stays B's, pending, with no
    conflict noted and no conflict AuditEvent; B then settles it (flagged, once)."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [theirs] = harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{run}-1")
    remote.update(harness.server, theirs, valueQuantity={**theirs["valueQuantity"], "value": 1})
    [rating] = harness.intake([R.rating(run, 1, value=5)])

    offset: list[timedelta] = [timedelta(0)]
    taken: list[int] = []
    original = harness.client.read

    def read(resource_type: str, resource_id: str) -> dict[str, Any]:
        if not taken:  # the lease ends while the server's copy is read; B claims the item
            offset[0] += timedelta(seconds=LEASE + 1)
            claimed = harness.store.claim(
                "worker-b", limit=10, lease_seconds=LEASE, now=datetime.now(UTC) + offset[0]
            )
            taken.extend(i.item_id for i in claimed)
        return original(resource_type, resource_id)

    harness.client.read = read  # type: ignore[method-assign]
    worker_a = Worker(
        replace(harness.settings, lease_seconds=LEASE, conflict_policy="flag"),
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        clock=lambda: datetime.now(UTC) + offset[0],
        worker_id="worker-a",
    )
    report = worker_a.run_once()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.item_id in taken
    assert (report.lease_lost, report.held) == (1, 0)
    assert (status.state, status.conflict) == (SyncState.QUEUED, None)
    assert conflict_events(harness, rating.record_id) == []

    harness.client.read = original  # type: ignore[method-assign]
    harness.store.release(taken, "worker-b", at=datetime.now(UTC))  # B stops: claimable again
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    assert (status.state, status.held_reason, status.conflict) == (
        SyncState.HELD,
        CONFLICT_HELD_REASON,
        "flagged",
    )
    assert conflict_events(harness, rating.record_id) == ["flagged"]
