"""The SQLite writers' queue (``engine.writer_turn``): one writer at a time across threads and
processes, so writers wait in line instead of polling SQLite's busy handler."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from fhir_alliance_service.store import open_store
from fhir_alliance_service.store.engine import writer_turn

from .builders import record

WRITERS = 2
RECORDS_EACH = 80
HOLD_SECONDS = 0.002


def _hold_turns(url: str, log_path: str, start: float) -> None:
    """Take the write turn repeatedly, logging enter/leave times, and write a record each turn."""
    store = open_store(url)
    turn = writer_turn(store.engine)
    threads_done: list[Exception] = []

    def writer(thread: int) -> None:
        try:
            for n in range(RECORDS_EACH // 2):
                number = os.getpid() * 1000 + thread * 100 + n
                with turn():
                    entered = time.monotonic()
                    time.sleep(HOLD_SECONDS)
                    left = time.monotonic()
                with open(log_path, "a") as log:
                    log.write(f"{entered} {left}\n")
                store.put_records([record(number)], audit=[], at=datetime.now(UTC))
        except Exception as error:  # surfaced below by the exit code
            threads_done.append(error)

    while time.time() < start:
        time.sleep(0.001)
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    if threads_done:
        raise threads_done[0]


def test_writers_in_two_processes_hold_the_turn_one_at_a_time_and_all_commit(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Two processes of two threads writing at once never hold the turn together; all writes land."""
    log_path = tmp_path / "turns.log"
    context = multiprocessing.get_context("spawn")
    start = time.time() + 1.0
    processes = [
        context.Process(target=_hold_turns, args=(sqlite_url, str(log_path), start))
        for _ in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    spans = sorted(tuple(map(float, line.split())) for line in log_path.read_text().splitlines())
    assert len(spans) == WRITERS * RECORDS_EACH
    overlaps = [(a, b) for a, b in pairwise(spans) if b[0] < a[1]]
    assert overlaps == []
    store = open_store(sqlite_url)
    try:
        assert len(store.list_records(limit=1000)) == WRITERS * RECORDS_EACH
    finally:
        store.close()


def _take_turn_in_child(url: str, entered_path: str) -> None:
    store = open_store(url)
    try:
        with writer_turn(store.engine)():
            Path(entered_path).write_text(str(time.monotonic()))
    finally:
        store.close()


def test_a_forked_child_waits_for_the_turn_its_parent_holds(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A child forked while its parent holds the turn queues behind the parent (no shared lock)."""
    store = open_store(sqlite_url)
    turn = writer_turn(store.engine)
    entered_path = tmp_path / "entered"
    context = multiprocessing.get_context("fork")
    try:
        with turn():
            child = context.Process(
                target=_take_turn_in_child, args=(sqlite_url, str(entered_path))
            )
            child.start()
            time.sleep(0.5)
            released = time.monotonic()
        child.join(timeout=10)
        if child.is_alive():  # stuck behind a lock it inherited: do not leave it running
            child.kill()
        assert child.exitcode == 0
        assert float(entered_path.read_text()) >= released
    finally:
        store.close()
