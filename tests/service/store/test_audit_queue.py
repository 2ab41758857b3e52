"""The audit push queue (``store/audit_queue.py``): rows to push are claimed oldest first under
a lease, pushed rows leave the queue, failures count attempts and are retried later or
dead-lettered with their OperationOutcome, and dead letters can be replayed. On SQLite and
PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import AuditPushFailure, AuditPushState

from .builders import at, audit_entry

PENDING = AuditPushState.PENDING
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "processing"}],
}


def _queued(store: SqlStore, n: int) -> list[int]:
    """``n`` disclosure rows queued for pushing (and one kept locally only); their ids."""
    entries = [replace(audit_entry("disclose", f"rec-{k}"), push_state=PENDING) for k in range(n)]
    store.add_audit([audit_entry("intake", "rec-local"), *entries])
    return [e.id for e in store.list_audit() if e.push_state is PENDING and e.id is not None]


def test_claim_leases_due_rows_oldest_first_and_skips_local_and_leased_rows(
    store: SqlStore,
) -> None:
    """A claim takes pending rows in id order up to the limit, never a row kept locally; a second
    claim within the lease gets only the rest, and after the lease the rows are due again."""
    ids = _queued(store, 3)
    first = store.claim_audit_pushes(limit=2, lease_seconds=30, now=at(0))
    assert [e.id for e in first] == ids[:2]
    assert all(e.action == "disclose" and e.push_state is PENDING for e in first)
    second = store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(1))
    assert [e.id for e in second] == ids[2:]
    assert store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(29)) == []
    again = store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(31))
    assert [e.id for e in again] == ids  # a pass that stopped: due again, no failure counted
    assert all(e.push_attempts == 0 for e in again)


def test_pushed_rows_leave_the_queue(store: SqlStore) -> None:
    """Rows recorded as pushed are PUSHED (``pushed`` true) and never claimed again."""
    ids = _queued(store, 2)
    store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(0))
    store.record_audit_pushes(ids, [], at=at(1))
    assert store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(100)) == []
    listed = {e.id: e for e in store.list_audit()}
    assert all(listed[i].push_state is AuditPushState.PUSHED and listed[i].pushed for i in ids)
    assert store.audit_push_counts() == {}


def test_failures_retry_at_their_time_then_dead_letter_with_the_outcome(store: SqlStore) -> None:
    """A failure with a next attempt counts one attempt and is claimable only from then on; a
    failure without one dead-letters the row with the OperationOutcome; both are counted."""
    [retry, dead] = _queued(store, 2)
    store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(0))
    store.record_audit_pushes(
        [],
        [AuditPushFailure(retry, OUTCOME, at(60)), AuditPushFailure(dead, OUTCOME, None)],
        at=at(1),
    )
    assert store.audit_push_counts() == {PENDING: 1, AuditPushState.DEAD_LETTERED: 1}
    assert store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(59)) == []
    [claimed] = store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(60))
    assert (claimed.id, claimed.push_attempts, claimed.push_outcome) == (retry, 1, OUTCOME)
    listed = {e.id: e for e in store.list_audit()}
    assert listed[dead].push_state is AuditPushState.DEAD_LETTERED
    assert (listed[dead].push_attempts, listed[dead].push_outcome) == (1, OUTCOME)
    assert listed[dead].pushed is False


def test_replay_requeues_dead_lettered_pushes_with_attempts_reset(store: SqlStore) -> None:
    """Replay makes every dead-lettered push pending again, due now, attempts back at 0."""
    [dead] = _queued(store, 1)
    store.record_audit_pushes([], [AuditPushFailure(dead, OUTCOME, None)], at=at(1))
    assert store.replay_audit_pushes() == 1
    assert store.replay_audit_pushes() == 0
    [claimed] = store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(2))
    assert (claimed.id, claimed.push_state, claimed.push_attempts) == (dead, PENDING, 0)


def test_a_settled_row_is_not_changed_by_a_late_result(store: SqlStore) -> None:
    """A result for a row another pass already settled (pushed) changes nothing."""
    [row] = _queued(store, 1)
    store.record_audit_pushes([row], [], at=at(1))
    store.record_audit_pushes([], [AuditPushFailure(row, OUTCOME, None)], at=at(2))
    [entry] = [e for e in store.list_audit() if e.id == row]
    assert (entry.push_state, entry.push_attempts) == (AuditPushState.PUSHED, 0)
