"""Schema migrations, run programmatically (no ``alembic.ini`` on disk): ``upgrade``,
``current_revision`` and ``head_revision``. The migration scripts live in ``migrations/``.

Only :func:`upgrade` creates a SQLite file: the schema check of every other command (and of
``serve`` and ``worker``) refuses a path where there is no file, so that a mistyped
``FHIR_ALLIANCE_DATABASE_URL`` is not taken for a new, empty store. A database at a revision
these migrations do not know (written by a newer release) is refused by the check and by
:func:`upgrade` alike, with one line saying so, and nothing is written to it."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import URL

from .engine import READ_ONLY, make_engine, normalise_url

__all__ = ["MIGRATIONS", "SchemaVersionError", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: PostgreSQL advisory lock key held while migrating (any fixed 64-bit number of our own).
_LOCK_KEY = 0x66_68_69_72_61_6C_6C_69  # "fhiralli"


class SchemaVersionError(RuntimeError):
    """The database is not at the schema this code expects; ``str(exc)`` says what to run."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration shipped with this code."""
    head = _scripts().get_current_head()
    assert head is not None, "no migrations found"
    return head


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def missing_sqlite_file(url: str | URL) -> str | None:
    """The path of the SQLite database at ``url`` when its folder holds no file of that name
    (else None; None for PostgreSQL too, and when the folder itself is missing: SQLite cannot
    open nor create the file then, and says so)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = parsed.database
    if os.path.exists(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return None
    return path


def missing_sqlite_folder(url: str | URL) -> str | None:
    """The folder of the SQLite database at ``url`` when that folder does not exist (a typo, a
    volume not mounted): SQLite can neither open nor create the file then, and says only "unable
    to open database file". None when it exists, and for PostgreSQL."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.query.get("uri"):
        return None
    folder = os.path.dirname(os.path.abspath(parsed.database))
    return None if os.path.isdir(folder) else folder


def _unknown_revision_message(current: str, head: str) -> str:
    return (
        f"database schema is at {current}, expected {head}: {current} is not a revision this "
        "release knows (a newer release of fhir-alliance upgraded the database); run that "
        'release, or restore a backup taken before that upgrade ("fhir-alliance db upgrade" '
        "cannot go back)"
    )


def current_revision(url: str | URL) -> str | None:
    """The migration the database at ``url`` is at (None: never migrated, or no SQLite file
    there, which is not created). A read: on SQLite a deferred transaction, so a write lock
    held by another program does not delay it."""
    if missing_sqlite_file(url) is not None:
        return None
    engine = make_engine(url)
    try:
        with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``; idempotent. A database at a revision
    these migrations do not know raises :class:`SchemaVersionError`, nothing changed."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Several processes may upgrade at start-up: one migrates, the others then find
                # the schema at head. (SQLite's BEGIN IMMEDIATE serialises them already.)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            current = MigrationContext.configure(connection).get_current_revision()
            if current is not None and not is_known_revision(current):
                raise SchemaVersionError(_unknown_revision_message(current, head_revision()))
            config = _config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def is_known_revision(revision: str) -> bool:
    """``revision`` is one of this code's migrations."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:  # "Can't locate revision identified by …"
        return False


def check_at_head(url: str | URL) -> None:
    """Raise :class:`SchemaVersionError` unless the database is at the head revision (one line
    saying what to do: no SQLite file there, older, or newer than this code)."""
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise SchemaVersionError(
            f"no SQLite database at {missing}: check FHIR_ALLIANCE_DATABASE_URL, or run "
            '"fhir-alliance db upgrade" to create a new, empty store there'
        )
    current, expected = current_revision(url), head_revision()
    if current is not None and current != expected and not is_known_revision(current):
        raise SchemaVersionError(_unknown_revision_message(current, expected))
    if current != expected:
        raise SchemaVersionError(
            f"database schema is at {current or 'nothing (empty)'}, expected {expected}: "
            'run "fhir-alliance db upgrade"'
        )
