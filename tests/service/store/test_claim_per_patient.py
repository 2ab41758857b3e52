"""Contract of ``claim(per_patient=…)``: a claim may take a patient's consecutive items together,
in order, stopping at the first one that is not claimable now; concurrent claims still take each
item once and a patient's items in order; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import OutboxItem, SentMark

from .builders import T0, at, record

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


def _ids(items: list[OutboxItem]) -> list[str]:
    return [item.record_id for item in items]


def test_a_claim_takes_a_patients_next_items_in_order(store: SqlStore) -> None:
    """Two patients, three items and one: with room, each patient's items come together, in
    intake order, the oldest head's patient first."""
    store.put_records(
        [record(1), record(2), record(4, patient="Patient/p2"), record(3)], audit=[], at=T0
    )
    items = store.claim("w1", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    assert _ids(items) == ["rec-000001", "rec-000002", "rec-000004", "rec-000003"]
    assert all(item.lease_owner == "w1" for item in items)
    assert store.claim("w2", limit=10, lease_seconds=30, now=at(2), per_patient=10) == []


def test_the_oldest_items_of_each_patient_come_before_any_followers(store: SqlStore) -> None:
    """Followers only fill the room the patients' oldest items leave: a claim with room for
    the heads alone takes no follower, and ``per_patient`` caps them."""
    store.put_records(
        [record(n, patient=f"Patient/p{n % 3}") for n in range(12)], audit=[], at=T0
    )  # p0: 0, 3, 6, 9; p1: 1, 4, 7, 10; p2: 2, 5, 8, 11
    heads = store.claim("w1", limit=3, lease_seconds=30, now=at(1), per_patient=10)
    assert _ids(heads) == ["rec-000000", "rec-000001", "rec-000002"]
    for item in heads:
        assert store.mark_sent(item.item_id, "w1", sent=[], audit=[], at=at(2))
    capped = store.claim("w2", limit=10, lease_seconds=30, now=at(3), per_patient=2)
    assert _ids(capped) == [f"rec-{n:06d}" for n in (3, 4, 5, 6, 7, 8)]


def test_a_waiting_item_stops_its_patients_run(store: SqlStore) -> None:
    """A patient's item that failed and is not due yet ends the run of that patient's items:
    nothing after it is claimed ahead of it."""
    store.put_records([record(1), record(2), record(3)], audit=[], at=T0)
    [first] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    assert store.mark_sent(first.item_id, "w1", sent=[], audit=[], at=at(2))
    [second] = store.claim("w1", limit=1, lease_seconds=30, now=at(3))
    assert store.mark_failed(
        second.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(100), at=at(4)
    )
    assert store.claim("w2", limit=10, lease_seconds=30, now=at(5), per_patient=10) == []
    due = store.claim("w2", limit=10, lease_seconds=30, now=at(101), per_patient=10)
    assert _ids(due) == ["rec-000002", "rec-000003"]


def test_a_follower_not_due_ends_the_run(store: SqlStore) -> None:
    """A follower that failed and is not due yet ends its patient's run, even behind a head that
    may go: nothing after it is claimed ahead of it."""
    store.put_records([record(1), record(2), record(3)], audit=[], at=T0)
    first, second, third = store.claim("w1", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    assert store.mark_failed(
        second.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(100), at=at(2)
    )
    assert store.release([first.item_id, third.item_id], "w1", at=at(3)) == 2
    again = store.claim("w2", limit=10, lease_seconds=30, now=at(4), per_patient=10)
    assert _ids(again) == ["rec-000001"]


def test_a_leased_follower_ends_the_run(store: SqlStore) -> None:
    """A follower still leased by another worker is not taken, nor anything after it."""
    store.put_records([record(1), record(2), record(3)], audit=[], at=T0)
    items = store.claim("w1", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    assert _ids(items) == ["rec-000001", "rec-000002", "rec-000003"]
    first, second, _ = items
    # w1 records its first item failed, due at once, while it still holds the two after it.
    assert store.mark_failed(first.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(2), at=at(2))
    retry = store.claim("w2", limit=10, lease_seconds=30, now=at(3), per_patient=10)
    assert _ids(retry) == ["rec-000001"]
    assert store.release([second.item_id], "w1", at=at(4)) == 1


def test_concurrent_claims_take_each_item_once_and_each_patient_in_order(
    database_url: str,
) -> None:
    """Four threads, each with its own store, claim runs of up to five items per patient from
    40 patients, 6 items each, and send them: every item is claimed once, and a patient's items are
    claimed in intake order (each claim of a patient's items starts after the one before ended)."""
    setup = open_store(database_url)
    try:
        setup.put_records(
            [record(n, patient=f"Patient/c{n % 40}") for n in range(240)], audit=[], at=T0
        )
    finally:
        setup.close()
    claims: list[tuple[int, list[OutboxItem]]] = []
    lock = threading.Lock()
    counter = iter(range(10**6))
    errors: list[BaseException] = []

    def work(name: str) -> None:
        store = open_store(database_url)
        try:
            while True:
                items = store.claim(name, limit=7, lease_seconds=600, now=at(1), per_patient=5)
                with lock:
                    call = next(counter)
                    if items:
                        claims.append((call, items))
                if not items:
                    with lock:
                        done = sum(len(i) for _, i in claims) >= 240
                    if done:
                        return
                    time.sleep(0.01)  # the others hold what is left
                    continue
                landed = store.mark_sent_many(name, [_mark(i) for i in items], at=at(2))
                assert all(landed)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    claimed = [item.item_id for _, items in claims for item in items]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 240
    last_seen: dict[str, int] = {}
    for _, items in sorted(claims, key=lambda c: c[0]):
        for item in items:  # within a claim, and from one claim to the next
            assert item.item_id > last_seen.get(item.patient, -1)
            last_seen[item.patient] = item.item_id


def _mark(item: OutboxItem) -> SentMark:
    return SentMark(item.item_id, [], [])
