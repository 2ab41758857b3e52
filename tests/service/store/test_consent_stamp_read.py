"""The fast consent-stamp read (``SqlStore.patient_consents_stamp`` on a raw autocommit connection
per thread): never stale across stores or processes, no transaction left open, connections
closed with their thread or the store, a killed PostgreSQL connection replaced; on SQLite and
PostgreSQL."""

from __future__ import annotations

import gc
import multiprocessing
import sqlite3
import threading

import psycopg
import pytest
from fhir_alliance_service.store import SqlStore, open_store
from sqlalchemy.exc import DBAPIError

from tests.service.conftest import POSTGRES_ADMIN_DSN

from .builders import T0, at, consent


def _stamp_reader_connection(store: SqlStore) -> object:
    """The calling thread's raw connection behind the stamp read (opened on first use)."""
    return store._stamp_reader._connection()


def _is_closed(connection: object) -> bool:
    """Whether a raw psycopg or sqlite3 connection has been closed."""
    if isinstance(connection, psycopg.Connection):
        return bool(connection.closed)
    assert isinstance(connection, sqlite3.Connection)
    try:
        connection.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def _write_a_consent(url: str, number: int) -> None:
    """In a child process: one consent of Patient/p1 through a store of its own."""
    writer = open_store(url)
    try:
        writer.put_records([consent(number)], audit=[], at=T0)
    finally:
        writer.close()


def test_a_consent_written_through_another_store_moves_the_stamp_at_once(
    store: SqlStore, database_url: str
) -> None:
    """A consent, a new version or an alias committed by a second store (its own engine and
    connections) is seen by the first store's very next stamp read."""
    store.put_records([consent(1)], audit=[], at=T0)
    before = store.patient_consents_stamp("Patient/p1")[1]  # the reader's connection is now open
    other = open_store(database_url)
    try:
        other.put_records([consent(2)], audit=[], at=at(1))
        added = store.patient_consents_stamp("Patient/p1")[1]
        assert added != before
        other.put_records([consent(2, status="inactive")], audit=[], at=at(2))
        revised = store.patient_consents_stamp("Patient/p1")[1]
        assert revised not in {before, added}
        other.add_patient_alias("Patient/p1", "urn:mrn|7", at=at(3))
        other.put_records([consent(3, patient="urn:mrn|7")], audit=[], at=at(4))
        keys, aliased = store.patient_consents_stamp("Patient/p1")
        assert keys == ["Patient/p1", "urn:mrn|7"]
        assert aliased not in {before, added, revised}
    finally:
        other.close()


@pytest.mark.slow
def test_a_consent_written_by_another_process_moves_the_stamp_at_once(
    store: SqlStore, database_url: str
) -> None:
    """A consent committed by a separate OS process is seen by the next stamp read."""
    before = store.patient_consents_stamp("Patient/p1")[1]
    process = multiprocessing.get_context("spawn").Process(
        target=_write_a_consent, args=(database_url, 1), daemon=True
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    assert store.patient_consents_stamp("Patient/p1")[1] != before


def test_the_stamp_read_leaves_no_transaction_open(store: SqlStore) -> None:
    """After a stamp read the raw connection is idle: no read snapshot is held between calls."""
    store.put_records([consent(1)], audit=[], at=T0)
    store.patient_consents_stamp("Patient/p1")
    connection = _stamp_reader_connection(store)
    if isinstance(connection, psycopg.Connection):
        assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    else:
        assert connection.in_transaction is False  # type: ignore[attr-defined]


def test_each_thread_reads_on_its_own_connection_closed_when_the_thread_ends(
    store: SqlStore,
) -> None:
    """Threads do not share a connection, and an ended thread's connection is closed, not
    leaked (a per-request-thread server would otherwise pile them up)."""
    store.put_records([consent(1)], audit=[], at=T0)
    main_connection = _stamp_reader_connection(store)
    seen: list[object] = []

    def read_in_a_thread() -> None:
        assert store.patient_consents_stamp("Patient/p1")[0] == ["Patient/p1"]
        seen.append(_stamp_reader_connection(store))

    thread = threading.Thread(target=read_in_a_thread)
    thread.start()
    thread.join()
    gc.collect()
    assert seen[0] is not main_connection
    assert _is_closed(seen[0])
    assert not _is_closed(main_connection)
    assert len(store._stamp_reader._open) == 1


def test_close_closes_every_threads_connection(database_url: str) -> None:
    """``SqlStore.close`` closes the stamp connections of all threads."""
    opened = open_store(database_url)
    connections: list[object] = []
    read, closed = threading.Event(), threading.Event()

    def read_in_a_thread() -> None:
        opened.patient_consents_stamp("Patient/p1")
        connections.append(_stamp_reader_connection(opened))
        read.set()
        closed.wait(timeout=30)  # stay alive, holding the connection, until the store closes

    thread = threading.Thread(target=read_in_a_thread)
    thread.start()
    try:
        assert read.wait(timeout=30)
        opened.patient_consents_stamp("Patient/p1")
        connections.append(_stamp_reader_connection(opened))
        assert not any(_is_closed(connection) for connection in connections)
        opened.close()
        assert all(_is_closed(connection) for connection in connections)
    finally:
        closed.set()
        thread.join()


@pytest.mark.postgres
def test_a_killed_postgres_connection_is_replaced_and_the_read_answers(
    postgres_url: str,
) -> None:
    """A stamp connection ended by the server (a restart, an admin) is dropped and the read
    retried on a new one, with the right answer."""
    opened = open_store(postgres_url)
    try:
        opened.put_records([consent(1)], audit=[], at=T0)
        before = opened.patient_consents_stamp("Patient/p1")
        connection = _stamp_reader_connection(opened)
        assert isinstance(connection, psycopg.Connection)
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (connection.info.backend_pid,))
        assert opened.patient_consents_stamp("Patient/p1") == before
        assert _stamp_reader_connection(opened) is not connection
    finally:
        opened.close()


def test_a_failing_stamp_read_raises_dbapi_error_without_the_patient_key(sqlite_url: str) -> None:
    """A database error in the raw read comes out as SQLAlchemy's ``DBAPIError``, like every other
    store error, and its message never carries the patient key it was asked about."""
    opened = open_store(sqlite_url)
    try:
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as admin:
            admin.execute("DROP TABLE record_heads")
        with pytest.raises(DBAPIError, match="record_heads") as raised:
            opened.patient_consents_stamp("urn:mrn|secret-7")
        assert "secret-7" not in str(raised.value)
    finally:
        opened.close()


def test_on_sqlite_the_stamp_is_read_again_only_after_a_commit(
    store: SqlStore, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: while no connection has committed anything, the stamp query is not run again
    (``PRAGMA data_version`` says nothing changed); after any commit, even through another store
    and of another patient, it is. PostgreSQL reads every time."""
    store.put_records([consent(1)], audit=[], at=T0)
    queries: list[str] = []
    reader = store._stamp_reader
    real_rows = reader.rows

    def counted(statement: str, params: object) -> list[tuple[object, ...]]:
        queries.append(statement)
        return real_rows(statement, params)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "rows", counted)
    first = store.patient_consents_stamp("Patient/p1")
    assert store.patient_consents_stamp("Patient/p1") == first
    sqlite = database_url.startswith("sqlite")
    assert len(queries) == (1 if sqlite else 2)
    other = open_store(database_url)
    try:
        other.put_records([consent(2, patient="Patient/p2")], audit=[], at=at(1))
        assert store.patient_consents_stamp("Patient/p1") == first  # p1 unchanged, read again
        assert len(queries) == (2 if sqlite else 3)
        other.put_records([consent(3)], audit=[], at=at(2))
        second = store.patient_consents_stamp("Patient/p1")
        assert second[1] != first[1]
    finally:
        other.close()
    store.put_records([consent(4)], audit=[], at=at(3))  # this store's own write counts too
    assert store.patient_consents_stamp("Patient/p1")[1] != second[1]
