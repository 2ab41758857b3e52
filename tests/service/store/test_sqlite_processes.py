"""A web process and a worker process sharing one SQLite file: intake and claims interleave
without "database is locked" errors (write transactions queue for the lock up front)."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import SyncState, open_store

from .builders import record

BATCHES = 60
PER_BATCH = 10


def _intake(url: str) -> None:
    store = open_store(url)
    try:
        for batch in range(BATCHES):
            numbers = range(batch * PER_BATCH, (batch + 1) * PER_BATCH)
            records = [record(n, patient=f"Patient/p{n % 7}") for n in numbers]
            store.put_records(records, audit=[], at=datetime.now(UTC))
            # Read something, as a web request would, between writes.
            store.counts_by_state()
    finally:
        store.close()


def _work(url: str) -> None:
    store = open_store(url)
    try:
        sent = 0
        while sent < BATCHES * PER_BATCH:
            now = datetime.now(UTC)
            items = store.claim("worker", limit=5, lease_seconds=60, now=now)
            if not items:
                time.sleep(0.01)  # intake has not caught up yet
            for item in items:
                assert store.mark_sent(item.item_id, "worker", sent=[], audit=[], at=now)
                sent += 1
    finally:
        store.close()


@pytest.mark.slow
def test_intake_and_worker_processes_share_the_file_without_lock_errors(sqlite_url: str) -> None:
    """Two processes writing the same SQLite file at once both finish cleanly."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_intake, args=(sqlite_url,), daemon=True),
        context.Process(target=_work, args=(sqlite_url,), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            # A crashed intake would leave the worker waiting: bound the wait.
            process.join(timeout=60)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    assert [process.exitcode for process in processes] == [0, 0]
    store = open_store(sqlite_url)
    try:
        assert store.counts_by_state()[SyncState.SENT] == BATCHES * PER_BATCH
    finally:
        store.close()
