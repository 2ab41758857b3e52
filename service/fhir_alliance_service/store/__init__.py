"""The service's store: the :class:`Store` interface, its SQLAlchemy implementation
(:class:`SqlStore`, SQLite or PostgreSQL) and the schema migrations.

``open_store(url)`` is the one way in; it refuses a database whose schema is not at the head
revision (run ``fhir-alliance db upgrade``, i.e. :func:`upgrade`, first)."""

from __future__ import annotations

from sqlalchemy.engine import URL

from .engine import DEFAULT_WRITE_WAIT_SECONDS, WriterTurnTimeout, make_engine, normalise_url
from .interface import (
    ApiKey,
    AuditEntry,
    IntakeResult,
    NewRecord,
    OutboxItem,
    PutOutcome,
    SentResource,
    Store,
    StoredRecord,
    SyncState,
    SyncStatus,
)
from .schema import (
    SchemaVersionError,
    check_at_head,
    current_revision,
    head_revision,
    upgrade,
)
from .sql import SqlStore

__all__ = [
    "ApiKey",
    "AuditEntry",
    "IntakeResult",
    "NewRecord",
    "OutboxItem",
    "PutOutcome",
    "SchemaVersionError",
    "SentResource",
    "SqlStore",
    "Store",
    "StoredRecord",
    "SyncState",
    "SyncStatus",
    "WriterTurnTimeout",
    "current_revision",
    "head_revision",
    "normalise_url",
    "open_store",
    "upgrade",
]


def open_store(
    url: str | URL, *, write_wait_seconds: float = DEFAULT_WRITE_WAIT_SECONDS
) -> SqlStore:
    """A store on the database at ``url`` (``sqlite:///path`` or ``postgresql://…``); raises
    :class:`SchemaVersionError` unless its schema is at the head revision. On SQLite a write
    waits at most ``write_wait_seconds`` for its turn (then :class:`WriterTurnTimeout`)."""
    check_at_head(url)
    return SqlStore(make_engine(url, write_wait_seconds=write_wait_seconds))
