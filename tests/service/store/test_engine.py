"""Engine set-up: URL normalisation, SQLite pragmas and up-front write locks, and a clear
failure when the database cannot be reached."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.engine import (
    READ_ONLY,
    SQLITE_BUSY_TIMEOUT_MS,
    connect_raw_autocommit,
    make_engine,
    normalise_url,
)
from sqlalchemy.exc import IntegrityError, OperationalError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@db:5432/fa", "postgresql+psycopg://u@db:5432/fa"),
        ("postgres://u@db/fa", "postgresql+psycopg://u@db/fa"),
        ("postgresql+psycopg://u@db/fa", "postgresql+psycopg://u@db/fa"),
        ("sqlite:////var/lib/fa.db", "sqlite:////var/lib/fa.db"),
    ],
)
def test_urls_are_normalised_to_psycopg(given: str, expected: str) -> None:
    """PostgreSQL URLs without a driver get psycopg 3; others are left alone."""
    assert normalise_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "needs a file"),
        ("sqlite:///:memory:", "needs a file"),
        ("mysql://u@db/fa", "unsupported database URL scheme 'mysql'"),
    ],
)
def test_unsupported_urls_are_refused_clearly(url: str, message: str) -> None:
    """In-memory SQLite and other databases are refused with a line saying why."""
    with pytest.raises(ValueError, match=message):
        make_engine(url)


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    """Every SQLite connection is in WAL mode, waits for locks and enforces foreign keys."""
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
            assert pragma("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_commits_are_durable_across_power_loss(sqlite_url: str) -> None:
    """``synchronous=FULL`` on every SQLite connection, the pool's and the raw ones: a commit
    the API has acknowledged is fsynced, not only handed to the operating system (WAL with
    ``NORMAL`` survives a process crash, not power loss)."""
    full = 2
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == full
        raw = connect_raw_autocommit(engine)
        try:
            assert raw.execute("PRAGMA synchronous").fetchone()[0] == full
        finally:
            raw.close()
    finally:
        engine.dispose()


def _try_write_lock(path: str) -> bool:
    """Whether another process-like connection can take the write lock right now."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    finally:
        other.close()


def test_sqlite_write_transactions_take_the_write_lock_up_front(sqlite_url: str) -> None:
    """A write transaction holds SQLite's write lock from its first moment (so two processes
    queue instead of deadlocking); a read-only one does not take it."""
    path = sqlite_url.removeprefix("sqlite:///")
    engine = make_engine(sqlite_url)
    try:
        with engine.begin():
            assert _try_write_lock(path) is False
        assert _try_write_lock(path) is True
        with engine.execution_options(**{READ_ONLY: True}).begin():
            assert _try_write_lock(path) is True
    finally:
        engine.dispose()


def test_store_reads_do_not_block_a_writer(sqlite_url: str) -> None:
    """The store's reads use deferred transactions: a writer in another process can proceed."""
    store = open_store(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    try:
        with store._read():
            assert _try_write_lock(path) is True
        with store._write():
            assert _try_write_lock(path) is False
    finally:
        store.close()


def test_sqlite_foreign_keys_are_enforced(sqlite_url: str) -> None:
    """An outbox row for a record version that does not exist is rejected."""
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"), engine.begin() as c:
            c.exec_driver_sql(
                "INSERT INTO outbox (record_id, record_version, patient, state, attempts,"
                " created_at, updated_at) VALUES ('nope', 1, 'p', 'queued', 0,"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2",
        "sqlite:////nonexistent-directory/fhir-alliance.db",
    ],
    ids=["postgres-port-closed", "sqlite-missing-directory"],
)
def test_ping_raises_when_the_database_is_unreachable(url: str) -> None:
    """``ping`` (behind ``/readyz``) raises when the database cannot be reached."""
    store = SqlStore(make_engine(url))
    try:
        with pytest.raises(OperationalError):
            store.ping()
    finally:
        store.close()


def test_a_new_sqlite_store_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """``db upgrade`` of a new SQLite store under a permissive umask (022, the usual one): the
    file and the ``-wal`` and ``-shm`` SQLite makes beside it are mode 0600. They were 0644,
    patient data left readable by every user of the machine unless the folder was closed."""
    from fhir_alliance_service.store import upgrade

    old = os.umask(0o022)
    try:
        upgrade(f"sqlite:///{tmp_path / 'new.db'}")
        store = open_store(f"sqlite:///{tmp_path / 'new.db'}")
        try:
            store.note_retraction_checks(["Patient/p1"])  # a write: the WAL is there while open
            modes = {
                path.name: stat.S_IMODE(path.stat().st_mode)
                for path in tmp_path.iterdir()
                if path.name.startswith("new.db")
            }
        finally:
            store.close()
    finally:
        os.umask(old)
    assert {"new.db", "new.db-wal", "new.db-shm"} <= set(modes)
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
