"""Lost leases apart from failed sends (migration 0004): a takeover counts a lost lease, never a
failed attempt, and any result of the item (each ``mark_*``, ``mark_sent_many``, ``replay``)
forgets them, so that only lost leases in a row (a poison record) add up; handing an item back
untried (``release``) keeps them. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import OutboxItem, SentMark

from .builders import T0, at, record

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}

RESULTS: dict[str, Callable[[SqlStore, OutboxItem], object]] = {
    "sent": lambda s, i: s.mark_sent(i.item_id, i.lease_owner, sent=[], audit=[], at=at(100)),
    "sent-many": lambda s, i: s.mark_sent_many(
        i.lease_owner, [SentMark(i.item_id, [], [])], at=at(100)
    ),
    "held": lambda s, i: s.mark_held(i.item_id, i.lease_owner, reason="r", audit=[], at=at(100)),
    "failed": lambda s, i: s.mark_failed(
        i.item_id, i.lease_owner, outcome=OUTCOME, next_attempt_at=at(100), at=at(100)
    ),
    "dead": lambda s, i: s.mark_dead(
        i.item_id, i.lease_owner, outcome=OUTCOME, audit=[], at=at(100)
    ),
}


def _taken_over_twice(store: SqlStore) -> OutboxItem:
    store.put_records([record(1)], audit=[], at=T0)
    store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.claim("w2", limit=1, lease_seconds=30, now=at(31))
    [item] = store.claim("w3", limit=1, lease_seconds=30, now=at(61))
    assert (item.lost_leases, item.attempts, item.taken_over) == (2, 0, True)
    return item


@pytest.mark.parametrize("result", sorted(RESULTS))
def test_any_result_forgets_the_lost_leases(store: SqlStore, result: str) -> None:
    """Whatever the worker records for the item, its lost leases go back to 0 (the worker did
    not stop on it); a failed send is counted in ``attempts`` only."""
    item = _taken_over_twice(store)
    assert RESULTS[result](store, item)
    status = store.sync_status("rec-000001")
    assert status is not None and status.lost_leases == 0
    assert status.attempts == (1 if result in ("failed", "dead") else 0)


def test_release_hands_back_untried_and_keeps_the_lost_leases(store: SqlStore) -> None:
    """An item handed back untried is claimable at once, no takeover, its lost leases kept."""
    item = _taken_over_twice(store)
    assert store.release([item.item_id], "w3", at=at(62)) == 1
    [again] = store.claim("w4", limit=1, lease_seconds=30, now=at(63))
    assert (again.lost_leases, again.attempts, again.taken_over) == (2, 0, False)


def test_replay_forgets_lost_leases_too(store: SqlStore) -> None:
    """A replayed dead letter starts again with no failed send and no lost lease."""
    item = _taken_over_twice(store)
    assert store.mark_dead(
        item.item_id, "w3", outcome=OUTCOME, audit=[], at=at(62), count_attempt=False
    )
    assert store.replay("rec-000001", at=at(63)).requeued == 1
    [again] = store.claim("w4", limit=1, lease_seconds=30, now=at(64))
    assert (again.attempts, again.lost_leases, again.taken_over) == (0, 0, False)


def test_lost_leases_without_a_result_add_up(store: SqlStore) -> None:
    """Workers that stop on the item one after another: one lost lease each, in a row."""
    store.put_records([record(1)], audit=[], at=T0)
    counts = [
        store.claim(f"w{n}", limit=1, lease_seconds=30, now=at(1 + 30 * n))[0].lost_leases
        for n in range(4)
    ]
    assert counts == [0, 1, 2, 3]
