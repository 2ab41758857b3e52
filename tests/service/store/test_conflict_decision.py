"""Contract tests of ``Store.decide_conflict``, on SQLite and PostgreSQL: a person's decision is a
compare-and-set on the conflict they were shown (the server versions it is flagged against), so
the same item flagged again against newer versions is not decided by a decision on the old."""

from __future__ import annotations

from fhir_alliance_service.store import SentResource, SqlStore, SyncState
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON

from .builders import T0, at, record

V4 = (SentResource("Consent", "c-1", "4"), SentResource("Provenance", "p-1", None))
V5 = (SentResource("Consent", "c-1", "5"), SentResource("Provenance", "p-1", None))


def _flag(store: SqlStore, versions: tuple[SentResource, ...] | None) -> int:
    """Record 1's item held for a person, flagged against ``versions`` (None: none noted, as a
    flag written before versions were noted was left)."""
    [item] = store.claim("w", limit=1, lease_seconds=30, now=at(1))
    if versions is None:
        assert store.mark_held(item.item_id, "w", reason=CONFLICT_HELD_REASON, audit=[], at=at(2))
        store.mark_conflict(item.item_id, "flagged", at=at(2))
    else:
        assert store.mark_held(
            item.item_id,
            "w",
            reason=CONFLICT_HELD_REASON,
            audit=[],
            at=at(2),
            conflict="flagged",
            conflict_versions=versions,
        )
    return item.item_id


def test_a_decision_against_other_versions_decides_nothing(store: SqlStore) -> None:
    """Flagged against version 5: a decision against version 4 (either decision) writes
    nothing; one against version 5 is taken."""
    store.put_records([record(1)], audit=[], at=T0)
    item_id = _flag(store, V5)
    for keep_remote in (False, True):
        assert not store.decide_conflict(
            item_id, against=V4, keep_remote=keep_remote, conflict="x", audit=[], at=at(3)
        )
        assert not store.decide_conflict(
            item_id, against=(), keep_remote=keep_remote, conflict="x", audit=[], at=at(3)
        )
    status = store.sync_status(record(1).record_id)
    assert status is not None and (status.state, status.conflict) == (SyncState.HELD, "flagged")
    assert store.decide_conflict(
        item_id, against=V5, keep_remote=True, conflict="decided", audit=[], at=at(4)
    )
    status = store.sync_status(record(1).record_id)
    assert status is not None and (status.state, status.sent) == (SyncState.SENT, V5)


def test_no_noted_versions_match_an_empty_against(store: SqlStore) -> None:
    """A conflict flagged without noted versions is decided against none (an empty list), not
    against some."""
    store.put_records([record(1)], audit=[], at=T0)
    item_id = _flag(store, None)
    assert not store.decide_conflict(
        item_id, against=V4, keep_remote=False, conflict="x", audit=[], at=at(3)
    )
    assert store.decide_conflict(
        item_id, against=(), keep_remote=False, conflict="decided", audit=[], at=at(3)
    )
    status = store.sync_status(record(1).record_id)
    assert status is not None and status.state is SyncState.QUEUED


def test_flagged_conflicts_count_and_list_what_a_person_can_decide(store: SqlStore) -> None:
    """The conflicts that wait for a person (the console's overview): items held for a person by
    the conflict policy, oldest first, ``limit`` of them and the count of all. Not listed: one
    decided, one held by the gate, one whose record has a newer version, one settled by the
    policy (overwritten) or by a person (decided, then sent)."""
    store.put_records([record(n) for n in range(1, 7)], audit=[], at=T0)
    items = store.claim("w", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    item = {int(i.record_id[-1]): i.item_id for i in items}
    for n in (1, 2, 4, 6):
        assert store.mark_held(
            item[n],
            "w",
            reason=CONFLICT_HELD_REASON,
            audit=[],
            at=at(2),
            conflict="flagged",
            conflict_versions=V4,
        )
    assert store.mark_held(item[3], "w", reason="no consent", audit=[], at=at(2))
    assert store.mark_sent(item[5], "w", sent=list(V4), audit=[], at=at(2))
    store.mark_conflict(item[5], "overwritten", at=at(2))
    assert store.decide_conflict(
        item[2], against=V4, keep_remote=True, conflict="decided-keep-remote", audit=[], at=at(3)
    )
    store.put_records([record(4, score=2)], audit=[], at=at(3))  # a new version of record 4

    found = store.flagged_conflicts(limit=10)
    assert found.count == 2
    assert [s.record_id for s in found.items] == [record(1).record_id, record(6).record_id]
    assert all(s.state is SyncState.HELD and s.conflict_versions == V4 for s in found.items)
    first = store.flagged_conflicts(limit=1)
    assert (first.count, [s.record_id for s in first.items]) == (2, [record(1).record_id])
    empty = store.flagged_conflicts(limit=0)
    assert (empty.count, empty.items) == (2, ())
