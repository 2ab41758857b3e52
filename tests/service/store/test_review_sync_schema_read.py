"""The schema check at start is a read: another program holding SQLite's write lock (the sqlite3
shell, a backup) does not delay ``current_revision`` / ``check_at_head`` (it used to begin
IMMEDIATE and wait out the 30 s busy timeout, then ``serve`` exited 2)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.store import current_revision, head_revision
from fhir_alliance_service.store.schema import check_at_head
from sqlalchemy.engine import make_url


@pytest.fixture
def write_locked(sqlite_url: str) -> Iterator[sqlite3.Connection]:
    """A second, plain sqlite3 connection holding the write lock (BEGIN IMMEDIATE, a write)."""
    database = make_url(sqlite_url).database
    assert database is not None and Path(database).exists()
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO meta (name, value) VALUES ('held-by-test', 'x')")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s answer, which must come within ``seconds`` (run on a thread, so that a call
    stuck on the lock fails the test instead of holding it for the busy timeout)."""
    answer: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            answer.append(call())
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s (the write lock)"
    if errors:
        raise errors[0]
    assert time.monotonic() - started < seconds
    return answer[0]


def test_current_revision_answers_while_another_program_holds_the_write_lock(
    sqlite_url: str, write_locked: sqlite3.Connection
) -> None:
    assert _within(3.0, lambda: current_revision(sqlite_url)) == head_revision()


def test_check_at_head_answers_while_another_program_holds_the_write_lock(
    sqlite_url: str, write_locked: sqlite3.Connection
) -> None:
    _within(3.0, lambda: check_at_head(sqlite_url))


def test_the_lock_was_really_held(sqlite_url: str, write_locked: sqlite3.Connection) -> None:
    """The fixture's lock does block a writer (so the tests above do show a read)."""
    database = make_url(sqlite_url).database
    assert database is not None
    writer = sqlite3.connect(database, isolation_level=None, timeout=0.1)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.execute("BEGIN IMMEDIATE")
    finally:
        writer.close()
