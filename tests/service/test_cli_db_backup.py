"""`fhir-alliance db backup DEST`: a consistent, owner-only copy of the SQLite store made while
writes go on, that opens as a store; it never replaces a file, and PostgreSQL is referred to
pg_dump."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from fhir_alliance_service.store import SqlStore, current_revision, head_revision, open_store

from fhir_alliance.cli import main
from tests.service.conftest import postgres_schema_url
from tests.service.store.builders import T0, audit_entry, record


def _writes_until(store: SqlStore, stop: threading.Event, written: list[int]) -> None:
    """Intake after intake (record, outbox item and audit entry in one transaction each)."""
    number = 0
    while not stop.is_set():
        number += 1
        new = record(number, patient=f"Patient/p{number % 7}")
        store.put_records([new], audit=[audit_entry("intake", new.record_id)], at=T0)
        written.append(number)


def test_a_backup_taken_during_writes_is_one_consistent_snapshot(
    opened: SqlStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Writes go on during the backup. The copy opens as a store at the newest revision and
    holds every record committed before the backup began, each whole (its outbox item and its
    audit entry), and nothing half-written; it is readable by its owner only."""
    for number in range(1, 201):
        new = record(-number)
        opened.put_records([new], audit=[audit_entry("intake", new.record_id)], at=T0)
    stop, written = threading.Event(), list[int]()
    writer = threading.Thread(target=_writes_until, args=(opened, stop, written))
    writer.start()
    try:
        while len(written) < 20:  # the writer is well under way
            threading.Event().wait(0.01)
        destination = tmp_path / "backups" / "store.db"
        destination.parent.mkdir()
        assert main(["db", "backup", str(destination)]) == 0
    finally:
        stop.set()
        writer.join()
    assert "integrity check ok" in capsys.readouterr().out
    assert stat.S_IMODE(destination.stat().st_mode) == 0o600
    assert [p.name for p in destination.parent.iterdir()] == ["store.db"]  # no partial file left

    url = f"sqlite:///{destination}"
    assert current_revision(url) == head_revision()
    copy = open_store(url)
    try:
        records = copy.list_records(limit=100_000)
        numbers = {int(r.record_id.removeprefix("rec-")) for r in records}
        assert set(range(-200, 0)) <= numbers, "a record committed before the backup is missing"
        assert len(numbers - set(range(-200, 0))) >= 20, "the writes before the backup are missing"
        for stored in records:  # each intake whole: its outbox item and its audit entry
            assert copy.sync_status(stored.record_id) is not None, stored.record_id
            assert len(copy.list_audit(record_id=stored.record_id)) == 1, stored.record_id
    finally:
        copy.close()
    assert len(written) > len(numbers) - 200, "the writes did not go on during the backup"


def test_a_backup_never_replaces_a_file(
    opened: SqlStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing destination (even the database itself) is refused with one line; the file
    is left as it was."""
    existing = tmp_path / "existing.db"
    existing.write_text("keep me")
    assert main(["db", "backup", str(existing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "exists; a backup never replaces a file" in err
    assert existing.read_text() == "keep me"


def test_a_missing_database_is_not_created_by_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL naming no file: one line, and neither the store nor the copy is created."""
    missing = tmp_path / "missing.db"
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{missing}")
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 2
    assert "no SQLite database at" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_postgresql_is_referred_to_pg_dump(
    empty_postgres_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PostgreSQL has its own backup tools: one line naming pg_dump, nothing written, and the
    URL (a secret) not printed."""
    url = postgres_schema_url(empty_postgres_schema)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", url)
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err
    assert url not in err
    assert list(tmp_path.iterdir()) == []


def test_a_partial_file_left_by_a_killed_backup_is_not_in_the_way(
    opened: SqlStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup killed half-way leaves its hidden partial file beside DEST (in a container the
    next run has the same PID): the next backup is made all the same, under a name of its own,
    and leaves the stale file alone (an outside review found a FileExistsError traceback)."""
    new = record(1)
    opened.put_records([new], audit=[audit_entry("intake", new.record_id)], at=T0)
    destination = tmp_path / "backups" / "store.db"
    destination.parent.mkdir()
    stale = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    stale.write_bytes(b"left by a backup killed half-way")
    assert main(["db", "backup", str(destination)]) == 0
    assert "integrity check ok" in capsys.readouterr().out
    assert stale.read_bytes() == b"left by a backup killed half-way"
    assert sorted(p.name for p in destination.parent.iterdir()) == [stale.name, "store.db"]
