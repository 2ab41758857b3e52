"""The raw DBAPI path of intake (``store/raw.py``): its connection per thread survives a failed
batch and a connection the server closed, and what it writes reads back through SQLAlchemy
exactly as SQLAlchemy would have written it. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from fhir_alliance_service.store import PutOutcome, SqlStore, SyncState, open_store
from sqlalchemy import select

from tests.service.conftest import POSTGRES_ADMIN_DSN

from .builders import T0, at, audit_entry, record


class NotJson:
    """A value no JSON encoder accepts."""


def test_after_a_failed_batch_the_next_intake_on_the_same_thread_is_stored(
    store: SqlStore,
) -> None:
    """A batch that fails half-way is rolled back on the thread's connection, which then takes
    the next intake normally (no transaction left open, nothing of the failed batch kept)."""
    bad = dataclasses.replace(record(2), body={"x": NotJson()})
    with pytest.raises(TypeError):
        store.put_records([record(1), bad], audit=[audit_entry("intake", "rec-000001")], at=T0)
    [result] = store.put_records([record(3)], audit=[audit_entry("intake", "rec-000003")], at=T0)
    assert result.outcome is PutOutcome.CREATED
    assert [r.record_id for r in store.list_records()] == ["rec-000003"]
    assert [e.record_id for e in store.list_audit()] == ["rec-000003"]
    assert store.counts_by_state()[SyncState.QUEUED] == 1


def test_rows_written_raw_read_back_as_sqlalchemy_writes_them(store: SqlStore) -> None:
    """Times (UTC), JSON bodies and flags written on the raw path come back through
    SQLAlchemy's typed columns unchanged."""
    from fhir_alliance_service.store.tables import audit, outbox

    store.put_records(
        [record(1, score={"a": [1, 2.5, None]})], audit=[audit_entry("x", None)], at=at(3)
    )
    stored = store.get_record("rec-000001")
    assert stored is not None
    assert stored.body["score"] == {"a": [1, 2.5, None]}
    assert stored.created_at == at(3) and stored.updated_at == at(3)
    assert store.get_records(["rec-000001"])["rec-000001"] == stored
    with store.engine.connect() as connection:
        item = connection.execute(select(outbox.c.created_at, outbox.c.attempts)).one()
        entry = connection.execute(select(audit.c.at, audit.c.pushed, audit.c.resource)).one()
    assert tuple(item) == (at(3), 0)
    assert entry.at == T0 and entry.pushed is False
    assert entry.resource["resourceType"] == "AuditEvent"


@pytest.mark.postgres
def test_a_connection_the_server_closed_is_replaced_before_the_next_intake(
    postgres_url: str,
) -> None:
    """PostgreSQL ends the thread's raw connection (a restart, an idle timeout): the next intake
    begins on a new connection instead of failing."""
    store = open_store(postgres_url)
    try:
        _survives_a_terminated_connection(store)
    finally:
        store.close()


def _survives_a_terminated_connection(store: SqlStore) -> None:
    store.put_records([record(1)], audit=[], at=T0)
    [[backend]] = store.raw.query("SELECT pg_backend_pid()")
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])
    [result] = store.put_records([record(2)], audit=[], at=T0)
    assert result.outcome is PutOutcome.CREATED
    [[again]] = store.raw.query("SELECT pg_backend_pid()")
    assert again != backend
    assert [r.record_id for r in store.list_records()] == ["rec-000001", "rec-000002"]
