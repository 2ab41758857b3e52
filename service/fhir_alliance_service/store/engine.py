"""Engines for the store's two backends, configured once here.

* SQLite (the embedded default): a file in WAL mode with a ``busy_timeout`` and foreign keys on.
  Write transactions take the write lock up front (``BEGIN IMMEDIATE``), so that a web process
  and a worker process sharing the file queue for the lock instead of deadlocking on an upgrade
  from a read lock. Read-only work uses :data:`READ_ONLY` and a plain deferred ``BEGIN``.
* PostgreSQL through psycopg 3: ``postgresql://`` URLs are normalised to ``postgresql+psycopg://``;
  a small pool with ``pool_pre_ping`` so that a restarted database does not fail the first call.

Statement parameters (patient keys, identifiers, bodies) never appear in exception messages or
SQL logs (``hide_parameters``).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

__all__ = ["READ_ONLY", "SQLITE_BUSY_TIMEOUT_MS", "make_engine", "normalise_url"]

#: Execution option marking a read-only transaction (SQLite then begins a deferred transaction).
READ_ONLY = "fhir_alliance_read_only"

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str | URL) -> URL:
    """The URL with its driver made explicit: psycopg 3 for PostgreSQL."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _dump_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL) set up as the module docstring says."""
    parsed = normalise_url(url)
    common: dict[str, Any] = {
        "json_serializer": _dump_json,
        "json_deserializer": orjson.loads,
        # Statement parameters carry patient data: keep them out of exception text and logs.
        "hide_parameters": True,
    }
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("the SQLite store needs a file: sqlite:///path/to/fhir-alliance.db")
        engine = create_engine(parsed, pool_size=5, max_overflow=5, **common)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            parsed, pool_size=5, max_overflow=10, pool_pre_ping=True, pool_recycle=1800, **common
        )
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite or postgresql"
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the sqlite3 module's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL except on power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
