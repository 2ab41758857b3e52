"""The worker's lease ledger (``sync/leases.py``) keeps one *suspect* per batch: items whose
earlier workers stopped on them without a result are claimed one per batch (the others handed
back at once, their lost leases kept, with their patients' later items), so that records a crash
took down beside a poison record get a result of their own, while the poison record alone keeps
losing leases. On SQLite and PostgreSQL, over the real store."""

from __future__ import annotations

from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.sync.leases import LeaseLedger

from tests.service.store.builders import T0, at, record


def _crashed_holding_everything(store: SqlStore) -> None:
    """Records of three patients (p1 twice), all claimed by a worker that then stopped."""
    store.put_records(
        [
            record(1, patient="Patient/p1"),
            record(2, patient="Patient/p2"),
            record(3, patient="Patient/p3"),
            record(4, patient="Patient/p1"),
            record(5, patient="Patient/p4"),
        ],
        audit=[],
        at=T0,
    )
    held = store.claim("crashed", limit=10, lease_seconds=30, now=at(1))
    assert len(held) == 4  # one item per patient: record 4 waits behind record 1
    store.put_records([record(6, patient="Patient/p5")], audit=[], at=at(2))  # a fresh one


def test_a_batch_keeps_one_suspect_and_the_others_go_back_with_their_lost_leases(
    store: SqlStore,
) -> None:
    """After the crash, a claim gets the oldest suspect and the fresh item; the other suspects
    are handed back (claimable, lost lease kept); each later claim takes the next suspect."""
    _crashed_holding_everything(store)
    ledger = LeaseLedger(store)
    first = ledger.claim("w2", limit=10, lease_seconds=30, now=at(31))
    assert [(i.record_id, i.lost_leases) for i in first] == [("rec-000001", 1), ("rec-000006", 0)]
    for record_id in ("rec-000002", "rec-000003", "rec-000005"):
        status = store.sync_status(record_id)
        assert status is not None and status.lost_leases == 1
    assert ledger.held == {i.item_id for i in first}
    for item in first:
        assert store.mark_sent(item.item_id, "w2", sent=[], audit=[], at=at(32))
    second = ledger.claim("w2", limit=10, lease_seconds=30, now=at(33))
    # record 4 (p1's next, fresh) and the next suspect only.
    assert [(i.record_id, i.lost_leases) for i in second] == [("rec-000002", 1), ("rec-000004", 0)]


def test_a_suspect_that_keeps_stopping_its_workers_still_adds_up(store: SqlStore) -> None:
    """The one suspect claimed is the oldest; if its workers keep stopping on it, its lost
    leases grow by one per takeover (the poison record is still found)."""
    _crashed_holding_everything(store)
    counts = []
    for n in range(3):
        ledger = LeaseLedger(store)  # a new worker process each time
        items = ledger.claim(f"w{n}", limit=10, lease_seconds=30, now=at(31 + 31 * n))
        counts.append(next((i.record_id, i.lost_leases) for i in items if i.lost_leases))
    assert counts == [("rec-000001", 1), ("rec-000001", 2), ("rec-000001", 3)]


def test_an_item_still_in_hand_is_not_claimed_twice_nor_a_suspect(store: SqlStore) -> None:
    """A claim that meets this worker's own item, still in hand but past its lease (another stage
    of the worker has it), renews the lease but neither hands it out again nor treats it as a
    suspect: the fresh items around it are claimed as usual."""
    store.put_records(
        [record(1, patient="Patient/p1"), record(2, patient="Patient/p2")], audit=[], at=T0
    )
    ledger = LeaseLedger(store)
    [first, second] = ledger.claim("w1", limit=10, lease_seconds=30, now=at(1))
    assert store.mark_sent(second.item_id, "w1", sent=[], audit=[], at=at(2))
    store.put_records(
        [record(3, patient="Patient/p3"), record(4, patient="Patient/p4")], audit=[], at=at(3)
    )
    again = ledger.claim("w1", limit=10, lease_seconds=30, now=at(40))
    assert [i.record_id for i in again] == ["rec-000003", "rec-000004"]
    assert first.item_id in ledger.held
    assert store.mark_sent(first.item_id, "w1", sent=[], audit=[], at=at(41))
