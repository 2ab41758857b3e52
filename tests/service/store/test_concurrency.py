"""Several workers claiming from one outbox at once: every item is claimed exactly once, and a
patient's items are still claimed in intake order. On PostgreSQL this exercises
``FOR UPDATE SKIP LOCKED``; on SQLite the immediate write transactions."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict

import pytest
from fhir_alliance_service.store import OutboxItem, SyncState, open_store

from .builders import T0, at, record

ITEMS = {"postgres": 2000, "sqlite": 500}  # SQLite serialises claims anyway: fewer suffice
PATIENTS = 25  # few patients: the workers contend for each patient's next item
WORKERS = 4


@pytest.mark.slow
def test_concurrent_workers_claim_every_item_exactly_once(database_url: str) -> None:
    """4 workers (each with its own pool, like separate processes) drain 2,000 items (500 on
    SQLite): each item is claimed once, all end SENT, and each patient's items were claimed in
    intake order."""
    items_total = ITEMS["sqlite" if database_url.startswith("sqlite") else "postgres"]
    seeding = open_store(database_url)
    try:
        seeding.put_records(
            [record(n, patient=f"Patient/p{n % PATIENTS}") for n in range(items_total)],
            audit=[],
            at=T0,
        )
    finally:
        seeding.close()

    claims: list[tuple[int, OutboxItem]] = []  # (which claim call, in global order; item)
    lock = threading.Lock()
    order = itertools.count()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        store = open_store(database_url)
        try:
            while True:
                items = store.claim(name, limit=20, lease_seconds=600, now=at(1))
                if not items:
                    if store.counts_by_state()[SyncState.QUEUED] == 0:
                        return
                    time.sleep(0.005)  # another worker holds the items that block the rest
                    continue
                with lock:
                    call = next(order)
                    claims.extend((call, item) for item in items)
                for item in items:
                    assert store.mark_sent(item.item_id, name, sent=[], audit=[], at=at(2))
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    item_ids = [item.item_id for _, item in claims]
    assert len(item_ids) == items_total
    assert len(set(item_ids)) == items_total
    # A patient's items: each in a later claim call than the one before it (in item order).
    calls_by_patient: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for call, item in claims:
        calls_by_patient[item.patient].append((item.item_id, call))
    for sequence in calls_by_patient.values():
        calls = [call for _, call in sorted(sequence)]
        assert all(earlier < later for earlier, later in itertools.pairwise(calls)), sequence
    assert len({item.lease_owner for _, item in claims}) > 1  # the workers really overlapped
    check = open_store(database_url)
    try:
        assert check.counts_by_state()[SyncState.SENT] == items_total
    finally:
        check.close()
