"""Contract: an older version of a record never goes out over a newer one. A version that came
while the older item was leased (so intake could not supersede it) supersedes it as soon as the
item is out of the worker's hands: its ``mark_held``/``mark_failed``/``mark_dead``, the claim that
would take it again, or ``replay``; on SQLite and PostgreSQL."""

from __future__ import annotations

from fhir_alliance_service.store import SqlStore, SyncState
from fhir_alliance_service.store.tables import outbox
from sqlalchemy import select, update

from .builders import T0, at, audit_entry, record

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


def _states(store: SqlStore, record_id: str = "rec-000001") -> dict[int, str]:
    """Every outbox item of ``record_id``: record version → state."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.record_version, outbox.c.state).where(outbox.c.record_id == record_id)
        )
        return {version: state for version, state in rows}


def _newer_version_while_leased(store: SqlStore) -> int:
    """Version 1 of rec-000001 claimed by w1 (lease until at(31)), then version 2 taken in,
    queued behind it; the item id of version 1."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(2))
    assert _states(store) == {1: "queued", 2: "queued"}
    return item.item_id


def test_a_dead_letter_with_a_newer_version_is_superseded(store: SqlStore) -> None:
    """v1 refused for good after v2 came: superseded (its outcome and audit kept), not
    dead-lettered; v2 is claimed next, alone; replay finds nothing to re-queue."""
    item_id = _newer_version_while_leased(store)
    entry = audit_entry("dead-letter", "rec-000001", when=at(3))
    left = store.mark_dead(item_id, "w1", outcome=OUTCOME, audit=[entry], at=at(3))
    assert left is SyncState.SUPERSEDED  # the state it was left in, for the worker's report
    assert _states(store) == {1: "superseded", 2: "queued"}
    [kept] = store.list_by_state(SyncState.SUPERSEDED)
    assert (kept.record_version, kept.last_outcome) == (1, OUTCOME)
    assert [e.action for e in store.list_audit(record_id="rec-000001")] == ["dead-letter"]
    assert store.counts_by_state()[SyncState.DEAD_LETTERED] == 0
    [newer] = store.claim("w2", limit=10, lease_seconds=30, now=at(4), per_patient=10)
    assert newer.record_version == 2
    replayed = store.replay("rec-000001", at=at(5))
    assert (replayed.requeued, replayed.superseded) == (0, ())


def test_a_failed_send_with_a_newer_version_is_superseded(store: SqlStore) -> None:
    """v1 failed transiently after v2 came: superseded, not retried; the next claim (with room
    for a patient's consecutive items) takes v2 alone, never both into one Bundle."""
    item_id = _newer_version_while_leased(store)
    left = store.mark_failed(item_id, "w1", outcome=OUTCOME, next_attempt_at=at(3), at=at(3))
    assert left is SyncState.SUPERSEDED
    assert _states(store) == {1: "superseded", 2: "queued"}
    items = store.claim("w2", limit=10, lease_seconds=30, now=at(4), per_patient=10)
    assert [(i.record_id, i.record_version) for i in items] == [("rec-000001", 2)]


def test_a_hold_with_a_newer_version_is_superseded(store: SqlStore) -> None:
    """v1 held after v2 came: superseded (the hold's audit entry kept), so a consent change
    releasing the patient's held items never re-queues it."""
    item_id = _newer_version_while_leased(store)
    entry = audit_entry("hold", "rec-000001", when=at(3))
    left = store.mark_held(item_id, "w1", reason="no consent", audit=[entry], at=at(3))
    assert left is SyncState.SUPERSEDED
    assert _states(store) == {1: "superseded", 2: "queued"}
    assert store.release_held("Patient/p1", at=at(4)) == 0
    assert [e.action for e in store.list_audit(record_id="rec-000001")] == ["hold"]


def test_a_result_says_the_state_it_left_the_item_in(store: SqlStore) -> None:
    """Without a newer version, ``mark_held``/``mark_failed``/``mark_dead`` answer HELD, FAILED,
    DEAD_LETTERED; None (nothing written) once the worker no longer holds the lease."""
    store.put_records([record(n) for n in (1, 2, 3)], audit=[], at=T0)
    items = store.claim("w1", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    held, failed, dead = (i.item_id for i in items)
    assert store.mark_held(held, "w1", reason="no consent", audit=[], at=at(2)) is SyncState.HELD
    left = store.mark_failed(failed, "w1", outcome=OUTCOME, next_attempt_at=at(3), at=at(2))
    assert left is SyncState.FAILED
    assert store.mark_dead(dead, "w2", outcome=OUTCOME, audit=[], at=at(2)) is None
    left = store.mark_dead(dead, "w1", outcome=OUTCOME, audit=[], at=at(2))
    assert left is SyncState.DEAD_LETTERED
    assert store.mark_held(held, "w1", reason="no consent", audit=[], at=at(3)) is None


def test_a_version_sent_before_the_newer_one_stays_sent(store: SqlStore) -> None:
    """v1 reached the server before v2: it is sent (what the server held then); v2 goes next."""
    item_id = _newer_version_while_leased(store)
    assert store.mark_sent(item_id, "w1", sent=[], audit=[], at=at(3))
    assert _states(store) == {1: "sent", 2: "queued"}
    [newer] = store.claim("w2", limit=10, lease_seconds=30, now=at(4))
    assert newer.record_version == 2


def test_a_claim_supersedes_an_item_whose_lease_ran_out_after_a_newer_version(
    store: SqlStore,
) -> None:
    """w1 stopped on v1 (no result) after v2 came. Taking the patient's items over, a claim
    supersedes v1 instead of leasing it (alone, or with v2 in one Bundle) and takes v2, in the
    same claim; another patient's items are untouched."""
    _newer_version_while_leased(store)
    store.put_records([record(2, patient="Patient/p2")], audit=[], at=at(2))
    for per_patient in (1, 10):  # heads only; heads and followers
        items = store.claim("w2", limit=10, lease_seconds=30, now=at(40), per_patient=per_patient)
        assert sorted((i.record_id, i.record_version) for i in items) == [
            ("rec-000001", 2),
            ("rec-000002", 1),
        ]
        assert _states(store) == {1: "superseded", 2: "queued"}
        assert store.release([i.item_id for i in items], "w2", at=at(41)) == 2
    [superseded] = store.list_by_state(SyncState.SUPERSEDED)
    assert superseded.record_version == 1 and superseded.lost_leases == 0


def test_a_claim_supersedes_a_stale_follower(store: SqlStore) -> None:
    """A patient's stale item behind its head (left queued by an older release of the store) is
    superseded when a claim would take it as a follower; the newer version is taken."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(2))
    assert store.mark_sent(item.item_id, "w1", sent=[], audit=[], at=at(3))
    store.put_records([record(3)], audit=[], at=at(4))  # p1's head for the next claim
    _set_state(store, "rec-000001", 1, SyncState.QUEUED)  # as an older store could leave it
    items = store.claim("w2", limit=10, lease_seconds=30, now=at(5), per_patient=10)
    assert [(i.record_id, i.record_version) for i in items] == [
        ("rec-000001", 2),
        ("rec-000003", 1),
    ]
    assert _states(store) == {1: "superseded", 2: "queued"}


def _set_state(store: SqlStore, record_id: str, version: int, state: SyncState) -> None:
    """Put an item in ``state`` directly: what a database written before this contract holds."""
    with store.engine.begin() as connection:
        connection.execute(
            update(outbox)
            .where(outbox.c.record_id == record_id, outbox.c.record_version == version)
            .values(state=state.value)
        )


def test_replay_supersedes_a_dead_letter_that_has_a_newer_version(store: SqlStore) -> None:
    """A dead letter whose record has a newer version (v2 sent), left by an older release of the
    store: ``replay`` of the record, or ``--all``, supersedes it and says so (record, version,
    newest version), re-queueing nothing; a dead letter without a newer version is re-queued."""
    item_id = _newer_version_while_leased(store)
    assert store.mark_sent(item_id, "w1", sent=[], audit=[], at=at(3))
    [newer] = store.claim("w2", limit=1, lease_seconds=30, now=at(4))
    assert store.mark_sent(newer.item_id, "w2", sent=[], audit=[], at=at(5))
    _set_state(store, "rec-000001", 1, SyncState.DEAD_LETTERED)
    store.put_records([record(2, patient="Patient/p2")], audit=[], at=at(6))
    [other] = store.claim("w2", limit=1, lease_seconds=30, now=at(7))
    assert store.mark_dead(other.item_id, "w2", outcome=OUTCOME, audit=[], at=at(8))

    replayed = store.replay("rec-000001", at=at(9))
    assert (replayed.requeued, replayed.superseded) == (0, (("rec-000001", 1, 2),))
    assert _states(store) == {1: "superseded", 2: "sent"}
    _set_state(store, "rec-000001", 1, SyncState.DEAD_LETTERED)
    everything = store.replay(at=at(10))
    assert (everything.requeued, everything.superseded) == (1, (("rec-000001", 1, 2),))
    assert _states(store) == {1: "superseded", 2: "sent"}
    assert _states(store, "rec-000002") == {1: "queued"}


def test_replay_of_two_dead_versions_requeues_only_the_newer(store: SqlStore) -> None:
    """v1 and v2 both dead-lettered (v1 left so by an older release): replay supersedes v1 and
    re-queues v2, which is then claimed alone."""
    item_id = _newer_version_while_leased(store)
    assert store.mark_dead(item_id, "w1", outcome=OUTCOME, audit=[], at=at(3))
    [newer] = store.claim("w2", limit=1, lease_seconds=30, now=at(4))
    assert store.mark_dead(newer.item_id, "w2", outcome=OUTCOME, audit=[], at=at(5))
    _set_state(store, "rec-000001", 1, SyncState.DEAD_LETTERED)
    replayed = store.replay("rec-000001", at=at(6))
    assert (replayed.requeued, replayed.superseded) == (1, (("rec-000001", 1, 2),))
    items = store.claim("w3", limit=10, lease_seconds=30, now=at(7), per_patient=10)
    assert [(i.record_version, i.attempts) for i in items] == [(2, 0)]
