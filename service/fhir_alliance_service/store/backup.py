"""An online backup of a SQLite store (``fhir-alliance db backup``).

SQLite's backup API copies the database inside one read transaction, so the copy is one
consistent snapshot (every intake in it whole: record, audit entry and outbox row) while ``serve``
and ``worker`` keep writing. The copy is written beside its destination under a temporary name
no other run uses, created readable by its owner only (it holds patient data), checked with
``PRAGMA integrity_check``, switched from WAL to a rollback journal (one self-contained file),
fsynced, and only then given its name, which it never takes from an existing file. PostgreSQL has its own tools
(``pg_dump``); this module refuses it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

from .engine import normalise_url

__all__ = ["BackupError", "BackupResult", "backup_sqlite"]


class BackupError(Exception):
    """The backup was not made; the message says why in one line (never the database URL)."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    destination: Path
    pages: int
    size_bytes: int


def backup_sqlite(database_url: str, destination: Path) -> BackupResult:
    """Copy the SQLite store at ``database_url`` to the new file ``destination``."""
    url = normalise_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError(
            "db backup copies a SQLite store; back up PostgreSQL with pg_dump "
            "(see docs/service.md, Backups)"
        )
    source_path = Path(url.database or "")
    if not source_path.is_file():
        raise BackupError(f"no SQLite database at {source_path}")
    destination = destination.expanduser()
    if destination.exists() or destination.is_symlink():
        raise BackupError(f"{destination} exists; a backup never replaces a file")
    if not destination.parent.is_dir():
        raise BackupError(f"{destination.parent} is not a directory")
    if destination.resolve() == source_path.resolve():
        raise BackupError("the destination is the database itself")
    # A new name of its own beside DEST (a partial file that a killed backup left is never
    # reused nor in the way), owner-only from the first byte: the copy holds patient data.
    descriptor, name = tempfile.mkstemp(
        prefix=f".{destination.name}.partial-", dir=destination.parent
    )
    os.close(descriptor)
    partial = Path(name)
    try:
        pages = _copy(source_path, partial)
        _fsync(partial)
        os.link(partial, destination)  # fails, rather than replaces, if the name was taken
        _fsync(destination.parent)
    except FileExistsError:
        raise BackupError(f"{destination} exists; a backup never replaces a file") from None
    finally:
        with suppress(FileNotFoundError):
            partial.unlink()
    return BackupResult(destination, pages, destination.stat().st_size)


def _copy(source_path: Path, target_path: Path) -> int:
    # The source is opened read-only: the backup never writes to (nor creates) the store.
    with (
        closing(sqlite3.connect(f"{source_path.resolve().as_uri()}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(target_path, isolation_level=None)) as target,
    ):
        source.execute("PRAGMA busy_timeout=10000")
        try:
            source.backup(target)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"the database could not be read: {_first_line(exc)}") from None
        target.execute("PRAGMA journal_mode=DELETE")
        check = [row[0] for row in target.execute("PRAGMA integrity_check")]
        if check != ["ok"]:
            raise BackupError(f"the copy failed SQLite's integrity check ({len(check)} problems)")
        pages = int(target.execute("PRAGMA page_count").fetchone()[0])
    return pages


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
