"""A SQLite lock held outside the store's writers (the ``sqlite3`` shell, a backup, another
program holding ``BEGIN IMMEDIATE``): a write waits no longer than ``sqlite_write_wait_seconds``
and ends as ``WriterTurnTimeout`` (503 with ``Retry-After`` in the API), nothing half-written; a
lock error at ``COMMIT`` rolls the transaction back; and ``fhir-alliance worker`` waits a locked
database out at start instead of exiting."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store import SqlStore, WriterTurnTimeout, open_store
from fhir_alliance_service.store import engine as engine_module
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from fhir_alliance.cli import main
from tests.service.store.builders import T0, record
from tests.service.usecases.payloads import observation

WAIT = 0.3  # sqlite_write_wait_seconds of these tests
#: A write given up after the write wait, not after SQLite's 30 s busy timeout.
AT_MOST = 3.0


@contextmanager
def outside_write_lock(sqlite_url: str) -> Iterator[None]:
    """Another program's connection holding the database's write lock (``BEGIN IMMEDIATE``)."""
    database = make_url(sqlite_url).database
    assert database
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def nobody_holds_the_write_lock(sqlite_url: str) -> bool:
    database = make_url(sqlite_url).database
    assert database
    probe = sqlite3.connect(database, isolation_level=None, timeout=0.0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


@pytest.fixture
def quick_store(sqlite_url: str) -> Iterator[SqlStore]:
    store = open_store(sqlite_url, write_wait_seconds=WAIT)
    try:
        yield store
    finally:
        store.close()


def test_an_intake_write_under_an_outside_lock_times_out_within_the_write_wait(
    quick_store: SqlStore, sqlite_url: str
) -> None:
    """The raw intake path (``put_records``): WriterTurnTimeout after about the write wait,
    nothing stored; once the other program lets go, the same write goes through."""
    with outside_write_lock(sqlite_url):
        started = time.monotonic()
        with pytest.raises(WriterTurnTimeout, match="nothing was written"):
            quick_store.put_records([record(1)], audit=[], at=T0)
        elapsed = time.monotonic() - started
        assert WAIT * 0.8 <= elapsed < AT_MOST, elapsed
        # Again, now that the connection's busy timeout was fitted to the write wait.
        started = time.monotonic()
        with pytest.raises(WriterTurnTimeout):
            quick_store.put_records([record(1)], audit=[], at=T0)
        assert time.monotonic() - started < AT_MOST
    assert quick_store.list_records(limit=10) == []
    [result] = quick_store.put_records([record(1)], audit=[], at=T0)
    assert [r.record_id for r in quick_store.list_records(limit=10)] == [result.record_id]


def test_an_engine_write_under_an_outside_lock_times_out_within_the_write_wait(
    quick_store: SqlStore, sqlite_url: str
) -> None:
    """The SQLAlchemy path (a worker's claim) ends the same way, and works once the lock goes."""
    quick_store.put_records([record(1)], audit=[], at=T0)
    with outside_write_lock(sqlite_url):
        started = time.monotonic()
        with pytest.raises(WriterTurnTimeout, match="nothing was written"):
            quick_store.claim("w1", limit=5, lease_seconds=60, now=T0)
        assert time.monotonic() - started < AT_MOST
    assert len(quick_store.claim("w1", limit=5, lease_seconds=60, now=T0)) == 1


def test_a_lock_error_at_commit_rolls_the_write_back(
    quick_store: SqlStore, sqlite_url: str
) -> None:
    """A COMMIT that finds the database locked ends as WriterTurnTimeout with the transaction
    rolled back: nothing of it is stored and no lock is left held."""
    failures = ["COMMIT"]

    def locked_at_commit(statement: str) -> None:
        if failures and statement == failures[0]:
            failures.pop()
            error = sqlite3.OperationalError("database is locked")
            raise OperationalError(statement, None, error)

    quick_store.raw.statement_listeners.append(locked_at_commit)
    with pytest.raises(WriterTurnTimeout):
        quick_store.put_records([record(1)], audit=[], at=T0)
    assert nobody_holds_the_write_lock(sqlite_url), "the failed transaction still holds the lock"
    assert quick_store.list_records(limit=10) == []
    [result] = quick_store.put_records([record(2)], audit=[], at=T0)
    assert [r.record_id for r in quick_store.list_records(limit=10)] == [result.record_id]


def test_the_api_answers_503_with_retry_after_under_an_outside_lock(sqlite_url: str) -> None:
    """POST /v1/records while another program holds the lock: 503 OperationOutcome with
    Retry-After within about the write wait (not a 500 after 30 s); 201 once it lets go."""
    application = create_app({"database_url": sqlite_url, "sqlite_write_wait_seconds": WAIT})
    application.testing = True
    store = application.extensions["fhir_alliance"].store
    try:
        headers = {"Authorization": f"Bearer {create_api_key(store, 'lock test', ['write'])}"}
        client = application.test_client()
        payload = observation("srs-administration")
        with outside_write_lock(sqlite_url):
            started = time.monotonic()
            response = client.post("/v1/records", json=payload, headers=headers)
            elapsed = time.monotonic() - started
        assert response.status_code == 503, response.json
        assert elapsed < AT_MOST, elapsed
        assert response.headers["Retry-After"] == "1"
        [issue] = response.json["issue"]
        assert issue["code"] == "transient", issue
        assert "nothing was written" in json.dumps(issue)
        assert store.list_records(limit=10) == []
        assert client.post("/v1/records", json=payload, headers=headers).status_code == 201
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("exclusive", [False, True], ids=["write-lock", "exclusive-lock"])
def test_the_worker_waits_out_a_locked_database_at_start(
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    exclusive: bool,
) -> None:
    """`fhir-alliance worker` started while another program holds the lock past SQLite's busy
    timeout (shortened here) stops with 0 on SIGTERM (it used to exit 2: "the database cannot be
    used: database is locked"). Behind a write lock it starts at once (its schema check is a
    read) and rides the lock out; behind an exclusive lock, which stops reads too (``PRAGMA
    locking_mode=EXCLUSIVE``), it logs that it waits to start and starts once the lock goes."""
    for name in list(os.environ):
        if name.startswith("FHIR_ALLIANCE_") and name != "FHIR_ALLIANCE_TEST_BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", f"http://127.0.0.1:{_free_port()}/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", "Organization/demo-ehr")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("FHIR_ALLIANCE_POLL_INTERVAL_SECONDS", "0.2")
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    finished = threading.Event()
    # A stray SIGTERM (the worker exited before the timer below) must not end the test run.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def release_then_stop(unlock: threading.Event) -> None:
        time.sleep(1.5)
        unlock.set()
        time.sleep(1.5)
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    unlock = threading.Event()
    database = make_url(sqlite_url).database
    assert database
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    if exclusive:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("CREATE TABLE outside_lock (x)")  # a write: the lock is exclusive now
    else:
        other.execute("BEGIN IMMEDIATE")

    def hold() -> None:
        unlock.wait()
        other.execute("ROLLBACK")
        other.close()

    holder = threading.Thread(target=hold)
    timer = threading.Thread(target=release_then_stop, args=(unlock,))
    holder.start()
    timer.start()
    try:
        code = main(["worker", "--no-pull"])
    finally:
        finished.set()
        unlock.set()
        holder.join()
        timer.join()
        signal.signal(signal.SIGTERM, previous)
    err = capfd.readouterr().err
    assert code == 0, err
    assert "the database cannot be used" not in err
    assert ("database is locked by another program: waiting to start" in err) is exclusive, err
    assert "worker started" in err and "worker stopped" in err
