"""Schema migrations, run programmatically (no ``alembic.ini`` on disk): ``upgrade``,
``current_revision`` and ``head_revision``. The migration scripts live in ``migrations/``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import URL

from .engine import READ_ONLY, make_engine

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
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(url: str | URL) -> str | None:
    """The migration the database at ``url`` is at (None: never migrated). A read: on SQLite a
    deferred transaction, so a write lock held by another program does not delay it."""
    engine = make_engine(url)
    try:
        with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``; idempotent."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Several processes may upgrade at start-up: one migrates, the others then find
                # the schema at head. (SQLite's BEGIN IMMEDIATE serialises them already.)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            config = _config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def check_at_head(url: str | URL) -> None:
    """Raise :class:`SchemaVersionError` unless the database is at the head revision."""
    current, expected = current_revision(url), head_revision()
    if current != expected:
        raise SchemaVersionError(
            f"database schema is at {current or 'nothing (empty)'}, expected {expected}: "
            'run "fhir-alliance db upgrade"'
        )
