"""The SQLite writers' queue has a bounded wait (``sqlite_write_wait_seconds``): a write that
cannot get its turn in time fails with ``WriterTurnTimeout`` before its transaction begins, so
nothing of it is written, and the turn is handed on so that later writes go through."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fhir_alliance_service.store import SqlStore, WriterTurnTimeout, open_store
from fhir_alliance_service.store.engine import make_engine, writer_turn
from sqlalchemy.engine import make_url

from .builders import T0, record


@contextmanager
def _other_process_writing(sqlite_url: str) -> Iterator[None]:
    """Hold the file's write turn the way another process does: ``flock`` on an open file of
    our own (``flock`` locks belong to the open file, so the store's own file must wait)."""
    database = make_url(sqlite_url).database
    assert database
    lock_file = os.open(os.path.abspath(database) + "-writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock_file)  # releases the lock


@pytest.fixture
def quick_store(sqlite_url: str) -> Iterator[SqlStore]:
    """A store whose writers wait at most 0.2 s for their turn."""
    store = open_store(sqlite_url, write_wait_seconds=0.2)
    try:
        yield store
    finally:
        store.close()


def test_a_write_that_cannot_get_its_turn_fails_and_writes_nothing(
    quick_store: SqlStore, sqlite_url: str
) -> None:
    """While another process holds the turn, a write fails with WriterTurnTimeout (saying nothing
    was written) and stores nothing; once the other lets go, writes go through again."""
    with _other_process_writing(sqlite_url):
        with pytest.raises(WriterTurnTimeout, match="nothing was written"):
            quick_store.put_records([record(1)], audit=[], at=T0)
        with pytest.raises(WriterTurnTimeout):  # the turn is still this process's helper's
            quick_store.put_records([record(2)], audit=[], at=T0)
        assert quick_store.list_records(limit=10) == []
    [result] = quick_store.put_records([record(3)], audit=[], at=T0)
    assert [r.record_id for r in quick_store.list_records(limit=10)] == [result.record_id]


def test_a_waiting_writer_goes_as_soon_as_the_holder_lets_go(sqlite_url: str) -> None:
    """A writer whose turn comes within its bound waits for it and writes."""
    store = open_store(sqlite_url, write_wait_seconds=30)
    let_go = threading.Event()
    try:
        with _other_process_writing(sqlite_url):
            releaser = threading.Timer(0.2, let_go.set)
            releaser.start()
            writer = threading.Thread(
                target=store.put_records, args=([record(1)],), kwargs={"audit": [], "at": T0}
            )
            writer.start()
            let_go.wait()
        writer.join(timeout=30)
        assert not writer.is_alive()
        assert [r.record_id for r in store.list_records(limit=10)] == [record(1).record_id]
    finally:
        store.close()


def test_a_thread_of_the_same_process_holding_the_turn_bounds_the_wait_too(
    quick_store: SqlStore,
) -> None:
    """Writers of one process queue on a thread lock first: that wait is bounded as well."""
    turn = writer_turn(quick_store.engine)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with turn():
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        with pytest.raises(WriterTurnTimeout):
            quick_store.put_records([record(1)], audit=[], at=T0)
    finally:
        done.set()
        holder.join(30)
    quick_store.put_records([record(2)], audit=[], at=T0)
    assert [r.record_id for r in quick_store.list_records(limit=10)] == [record(2).record_id]


def test_the_bound_must_be_positive(tmp_path: Path) -> None:
    """A zero or negative bound is refused when the engine is made."""
    with pytest.raises(ValueError, match="write_wait_seconds"):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}", write_wait_seconds=0)
