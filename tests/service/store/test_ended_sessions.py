"""Console sessions ended on sign-out (migration 0007): what one store records every other store
on the database sees (as other ``serve`` processes would), ended sessions are dropped once
expired, and ``db upgrade`` from 0006 adds the table; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fhir_alliance_service.store import SqlStore, current_revision, head_revision, open_store
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.tables import ended_sessions
from sqlalchemy import inspect, select

from fhir_alliance.cli import main
from tests.service.test_cli_api_key_names import cli_url  # noqa: F401 (fixture)

from .builders import at
from .migrating import downgrade_to


def _kept(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = select(ended_sessions.c.session_id).order_by(ended_sessions.c.session_id)
            return list(connection.execute(query).scalars())
    finally:
        engine.dispose()


def test_an_ended_session_is_ended_for_every_store_on_the_database(
    store: SqlStore, database_url: str
) -> None:
    """A session ended through one store is ended for another store opened on the same
    database (another process); other sessions are not; ending it again changes nothing."""
    other = open_store(database_url)
    try:
        assert not other.session_ended("s-1")
        store.end_session("s-1", expires_at=at(3600), at=at(0))
        assert other.session_ended("s-1")
        assert store.session_ended("s-1")
        assert not other.session_ended("s-2")
        other.end_session("s-1", expires_at=at(3600), at=at(10))  # the other copy signs out
        assert other.session_ended("s-1")
        assert _kept(database_url) == ["s-1"]
    finally:
        other.close()


def test_ending_a_session_drops_the_sessions_that_have_expired_since(
    store: SqlStore, database_url: str
) -> None:
    """Ended sessions are kept until they expire: the next sign-out drops those expired before
    its time and keeps the others (one expiring at that very moment too)."""
    store.end_session("s-1", expires_at=at(100), at=at(0))
    store.end_session("s-2", expires_at=at(200), at=at(0))
    store.end_session("s-3", expires_at=at(300), at=at(0))
    store.end_session("s-4", expires_at=at(900), at=at(200))
    assert _kept(database_url) == ["s-2", "s-3", "s-4"]
    assert not store.session_ended("s-1")
    assert store.session_ended("s-2")


@pytest.mark.usefixtures("cli_url")
def test_db_upgrade_from_0006_adds_the_ended_sessions(database_url: str) -> None:
    """At 0006 there is no ``ended_sessions`` table; ``db upgrade`` adds it with its index and
    the store ends sessions; downgrading drops it and upgrading again works."""
    downgrade_to(database_url, "0006")
    engine = make_engine(database_url)
    try:
        assert "ended_sessions" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()

    assert main(["db", "upgrade"]) == 0
    assert current_revision(database_url) == head_revision()
    engine = make_engine(database_url)
    try:
        indexes = {str(ix["name"]) for ix in inspect(engine).get_indexes("ended_sessions")}
    finally:
        engine.dispose()
    assert indexes == {"ix_ended_sessions_expires_at"}
    upgraded = open_store(database_url)
    try:
        upgraded.end_session("s-1", expires_at=at(3600), at=at(0))
        assert upgraded.session_ended("s-1")
    finally:
        upgraded.close()

    downgrade_to(database_url, "0006")
    assert current_revision(database_url) == "0006"
    assert main(["db", "upgrade"]) == 0
    assert _kept(database_url) == []
