"""Migrations: from empty to head, idempotent re-upgrade, the version table in the right
PostgreSQL schema, agreement with ``tables.py``, and ``open_store`` refusing a database that is
not at head."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fhir_alliance_service.store import (
    SchemaVersionError,
    current_revision,
    head_revision,
    open_store,
    upgrade,
)
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.schema import MIGRATIONS
from fhir_alliance_service.store.tables import metadata
from sqlalchemy import inspect, text

from tests.service.conftest import POSTGRES_ADMIN_DSN, postgres_schema_url

TABLES = {"alembic_version", "api_keys", "audit", "meta", "outbox", "record_heads", "records"}
# Two-way sync (migration 0002).
TABLES |= {"patient_aliases", "pull_cursors", "pulled_resources", "remote_patients"}
# The console's opaque patient ids (migration 0003).
TABLES |= {"patient_tokens"}
# Console sessions signed out (migration 0007).
TABLES |= {"ended_sessions"}
# Pending retraction checks (migration 0011).
TABLES |= {"retraction_checks"}


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database (SQLite file or PostgreSQL schema), not migrated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    schema: str = request.getfixturevalue("empty_postgres_schema")
    return postgres_schema_url(schema)


def test_head_is_the_newest_shipped_migration() -> None:
    """The head revision is the last file in ``migrations/versions``."""
    newest = sorted(p.name for p in (MIGRATIONS / "versions").glob("[0-9]*.py"))[-1]
    assert newest.startswith(head_revision() + "_")


def test_upgrade_from_empty_reaches_head_and_is_idempotent(empty_url: str) -> None:
    """An empty database migrates to head with every table; upgrading again changes nothing."""
    assert current_revision(empty_url) is None
    upgrade(empty_url)
    assert current_revision(empty_url) == head_revision()
    upgrade(empty_url)
    assert current_revision(empty_url) == head_revision()
    engine = make_engine(empty_url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
    finally:
        engine.dispose()


def test_migrations_agree_with_the_table_definitions(database_url: str) -> None:
    """The migrated schema is exactly what ``tables.py`` describes (no drift either way)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()
    assert differences == []


@pytest.mark.postgres
def test_postgres_migration_stays_in_the_urls_schema(empty_postgres_schema: str) -> None:
    """On PostgreSQL the tables and Alembic's version table land in the schema named by the
    URL's search_path, and nothing in ``public``."""
    upgrade(postgres_schema_url(empty_postgres_schema))
    with psycopg.connect(POSTGRES_ADMIN_DSN) as connection:
        rows = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_name = ANY(%s) AND table_schema IN (%s, 'public')",
            (sorted(TABLES), empty_postgres_schema),
        ).fetchall()
    assert sorted(rows) == sorted((empty_postgres_schema, name) for name in TABLES)


def test_open_store_refuses_an_empty_database(empty_url: str) -> None:
    """A never-migrated database is refused with one line saying what to run. (SQLite: an
    empty file; where there is no file at all, the line names the path instead:
    ``test_cli_schema_mismatch``.)"""
    if empty_url.startswith("sqlite:///"):
        Path(empty_url.removeprefix("sqlite:///")).touch()
    with pytest.raises(SchemaVersionError) as caught:
        open_store(empty_url)
    assert str(caught.value) == (
        f"database schema is at nothing (empty), expected {head_revision()}: "
        'run "fhir-alliance db upgrade"'
    )


def test_open_store_refuses_a_database_at_another_revision(database_url: str) -> None:
    """A database at a revision other than head (older or newer code) is refused."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaVersionError, match=r"^database schema is at 0000, expected "):
        open_store(database_url)


@pytest.mark.postgres
def test_postgresql_urls_without_a_driver_open_with_psycopg(postgres_url: str) -> None:
    """A plain ``postgresql://`` URL opens through psycopg 3."""
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    store = open_store(plain)
    try:
        assert store.engine.dialect.driver == "psycopg"
        store.ping()
    finally:
        store.close()


def test_concurrent_upgrades_of_one_database_both_succeed(empty_url: str) -> None:
    """Several processes upgrading the same empty database at start-up do not trip over each
    other: all succeed and the schema ends at head."""
    errors: list[BaseException] = []
    # Bounded lock waits, so that a regression fails here instead of hanging the suite.
    url = empty_url.replace("options=", "options=-clock_timeout%3D15000%20", 1)

    def run() -> None:
        try:
            upgrade(url)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert current_revision(empty_url) == head_revision()


def test_a_new_file_answering_locked_to_the_wal_switch_is_asked_again(tmp_path: Path) -> None:
    """While another process switches a new SQLite file to WAL, SQLite may answer "database is
    locked" to ``PRAGMA journal_mode=WAL`` at once, without its busy handler (three threads
    upgrading one new file: 3 of 60 rounds failed on a loaded machine, and once in CI). The
    connection's set-up asks again within the busy timeout instead of failing the start-up.
    Here a real connection answers locked twice, as the racing one did."""
    import sqlite3

    from fhir_alliance_service.store.engine import _set_up_sqlite_connection

    class RacedConnection(sqlite3.Connection):
        refusals = 2

        def cursor(self, *args: object, **kwargs: object) -> sqlite3.Cursor:
            connection = self

            class Cursor(sqlite3.Cursor):
                def execute(self, sql: str, parameters: object = (), /) -> sqlite3.Cursor:
                    if sql == "PRAGMA journal_mode=WAL" and connection.refusals:
                        connection.refusals -= 1
                        raise sqlite3.OperationalError("database is locked")
                    return super().execute(sql, parameters)  # type: ignore[arg-type]

            return Cursor(self)

    connection = sqlite3.connect(tmp_path / "new.db", factory=RacedConnection)
    try:
        _set_up_sqlite_connection(connection)
        assert connection.refusals == 0
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
