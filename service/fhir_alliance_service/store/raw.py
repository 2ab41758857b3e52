"""Raw DBAPI access for the store's hottest paths (intake's write and its batch lookup), on
SQLite and PostgreSQL alike.

Through SQLAlchemy each intake cost a pool checkout, a ``BEGIN`` event, and per statement the
execution context, parameter processing and result wrapping: several times the database's own
work. Here each thread (of each process) keeps one DBAPI connection outside the pool, in
autocommit mode, and runs plain SQL text on it:

* a write is an explicit transaction (:meth:`RawSql.transaction`): SQLite takes its writer's
  turn (``engine.writer_turn``) and ``BEGIN IMMEDIATE``; PostgreSQL a ``BEGIN``; everything or
  nothing is committed, exactly as with ``engine.begin()``;
* a read outside a transaction is its own read transaction, a fresh snapshot of everything
  committed before it by any process;
* statements are kept prepared by the drivers (sqlite3's statement cache, psycopg's automatic
  prepare), since each statement's text is built once per shape; a PostgreSQL connection whose
  transaction failed is closed and replaced, since psycopg's cache of prepared statements may
  then name statements the server never prepared;
* values are converted with the very bind and result processors SQLAlchemy would use for the
  columns of ``tables.py`` (UTC datetimes, JSON through the engine's serialiser, booleans), so a
  row written here reads back the same through SQLAlchemy, and the other way round.

DBAPI errors come out as SQLAlchemy's (``IntegrityError`` for a lost race, …) with the statement's
parameters hidden, like the engine's own (``hide_parameters``). Listeners added to
:attr:`RawSql.statement_listeners` see each statement's text before it runs (tests count
statements and pause between them with it).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from operator import itemgetter
from typing import Any

from sqlalchemy import Column, Engine, Table
from sqlalchemy.exc import DBAPIError, StatementError

from .engine import connect_raw_autocommit
from .tables import UtcDateTime

__all__ = ["OwnedConnection", "RawSql", "ThreadConnections"]

Processor = Callable[[Any], Any] | None
#: An INSERT's text, the getter of its values from a row, and the processors of those that have one.
_Insert = tuple[
    str, Callable[[Mapping[str, Any]], Any], tuple[tuple[int, Callable[[Any], Any]], ...]
]


def _last_value_kept(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` for immutable values (datetimes), remembering the last one: the same object
    again gives the same result without converting it again. The pair is replaced whole, so
    threads sharing it only ever see a matching pair."""
    last: list[tuple[Any, Any]] = [(_UNSET, None)]

    def kept(value: Any) -> Any:
        seen, result = last[0]
        if seen is value:
            return result
        result = process(value)
        last[0] = (value, result)
        return result

    return kept


_UNSET: Any = object()


class OwnedConnection:
    """A raw connection and the process that opened it; closed when dropped, in that process
    only (closing a PostgreSQL connection inherited through ``fork`` would end the parent's)."""

    __slots__ = ("__weakref__", "connection", "pid")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.pid = os.getpid()

    def close(self) -> None:
        if self.pid == os.getpid():
            with suppress(Exception):
                self.connection.close()

    def __del__(self) -> None:
        self.close()


class ThreadConnections:
    """One raw autocommit DBAPI connection to ``engine``'s database per thread (and process: a
    forked child opens its own), all closed by :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._open: weakref.WeakSet[OwnedConnection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        owned: OwnedConnection | None = getattr(self._local, "owned", None)
        if owned is None or owned.pid != os.getpid():
            owned = OwnedConnection(connect_raw_autocommit(self._engine))
            self._local.owned = owned
            with self._lock:
                self._open.add(owned)
        return owned.connection

    def _drop(self) -> None:
        owned: OwnedConnection | None = getattr(self._local, "owned", None)
        self._local.owned = None
        if owned is not None:
            owned.close()

    def _drop_connection(self, connection: Any) -> None:
        """Close ``connection``, and forget it if it is still this thread's."""
        owned: OwnedConnection | None = getattr(self._local, "owned", None)
        if owned is not None and owned.connection is connection:
            self._drop()
        else:
            with suppress(Exception):
                connection.close()

    def close(self) -> None:
        """Close every thread's connection (for ``SqlStore.close``)."""
        with self._lock:
            owned_connections = list(self._open)
            self._open = weakref.WeakSet()
        for owned in owned_connections:
            owned.close()


class RawSql(ThreadConnections):
    """Per-thread raw DBAPI connections to ``engine``'s database, transactions on them, and
    statements written once per table and column set."""

    def __init__(
        self, engine: Engine, writer_turn: Callable[[], AbstractContextManager[None]]
    ) -> None:
        super().__init__(engine)
        self._dialect = engine.dialect
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._placeholder = "%s" if self.is_postgresql else "?"
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._writer_turn = writer_turn
        self._bind: dict[tuple[str, str], Processor] = {}
        self._result: dict[tuple[str, str], Processor] = {}
        self._inserts: dict[
            tuple[str, tuple[str, ...], str],
            tuple[str, Callable[[Any], Any], tuple[tuple[int, Callable[[Any], Any]], ...]],
        ] = {}
        #: Called with each statement's text before it runs.
        self.statement_listeners: list[Callable[[str], None]] = []

    def _wrapped(self, statement: str, error: Exception) -> StatementError:
        return DBAPIError.instance(statement, None, error, self._dbapi_error, hide_parameters=True)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction on this thread's connection: committed when the block ends,
        rolled back (and nothing of it kept) when it raises."""
        if self.is_postgresql:
            with self._postgresql_transaction():
                yield
            return
        with self._writer_turn():
            connection = self._connection()
            self._run(connection, "BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                try:
                    connection.execute("ROLLBACK")
                except self._dbapi_error:
                    self._drop()
                raise
            self._run(connection, "COMMIT")

    def _begin_postgresql(self) -> Any:
        connection = self._connection()
        try:
            self._run(connection, "BEGIN")
        except DBAPIError:
            if not connection.broken:
                raise
            # A connection the server closed (restarted) fails at BEGIN, before anything was
            # written: begin once more on a new connection (what the pool's pre-ping did).
            connection = self._connection()
            self._run(connection, "BEGIN")
        return connection

    @contextmanager
    def _postgresql_transaction(self) -> Iterator[None]:
        # BEGIN alone (so a dead connection is replaced before anything is sent), then the
        # statements and the COMMIT in pipeline mode: psycopg sends them without waiting for each
        # answer, and syncs only where rows are read and at the end. An error of any of them is
        # raised at the next sync (the first one: a lost race is the IntegrityError of its
        # INSERT); the server skips everything queued after it, the COMMIT included.
        #
        # The connection is then closed (the server rolls the transaction back) and the thread's
        # next transaction opens a new one. It must not be used again: psycopg prepares a
        # statement on its sixth execution, and marks a statement prepared inside the pipeline
        # as such when it is queued, not when the server has parsed it; a statement queued after
        # the error is skipped, yet psycopg's cache keeps its name, so each later use of that
        # statement (the intake's retry included) failed with ``prepared statement "_pg3_…" does
        # not exist`` (ProgrammingError, not IntegrityError) until the process restarted. A new
        # connection costs a few milliseconds, on failed transactions only.
        connection = self._begin_postgresql()
        try:
            try:
                with connection.pipeline():
                    yield
                    self._run(connection, "COMMIT")
            except self._dbapi_error as error:
                raise self._wrapped("COMMIT", error) from error
        except BaseException:
            self._drop_connection(connection)
            raise

    def _run(
        self, connection: Any, statement: str, params: Sequence[Any] = (), *, many: bool = False
    ) -> Any:
        for listener in self.statement_listeners:
            listener(statement)
        try:
            if many:
                cursor = connection.cursor()
                cursor.executemany(statement, params)
                return cursor
            return connection.execute(statement, params)
        except self._dbapi_error as error:
            if self.is_postgresql and connection.broken:
                self._drop()
            raise self._wrapped(statement, error) from error

    # -- statements ----------------------------------------------------------------------------
    def _text(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.is_postgresql else statement

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of ``statement`` (``?`` placeholders, turned into ``%s`` for PostgreSQL)."""
        cursor = self._run(self._connection(), self._text(statement), params)
        try:
            return list(cursor.fetchall())
        except self._dbapi_error as error:  # PostgreSQL's pipeline: errors come with the rows
            raise self._wrapped(statement, error) from error

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        """Run ``statement``, which returns no rows (inside a PostgreSQL transaction it may only
        be sent: its errors then come at the next sync)."""
        self._run(self._connection(), self._text(statement), params)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._run(self._connection(), self._text(statement), rows, many=True)

    def placeholders(self, count: int) -> str:
        """``?, ?, …`` for an ``IN (…)`` of ``count`` values."""
        return ", ".join("?" * count)

    def insert(self, table: Table, rows: Sequence[Mapping[str, Any]], *, suffix: str = "") -> None:
        """Insert ``rows`` (dicts keyed by column name, all with the keys of the first) into
        ``table``, converting each value as SQLAlchemy would for its column."""
        if not rows:
            return
        names = tuple(rows[0])
        shape = (table.name, names, suffix)
        prepared = self._inserts.get(shape)
        if prepared is None:
            statement = (
                f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608 (names from tables.py)
                f"VALUES ({self.placeholders(len(names))}){suffix}"
            )
            processors = tuple(
                (n, process)
                for n, name in enumerate(names)
                if (process := self.bind_processor(table.c[name])) is not None
            )
            prepared = self._inserts[shape] = (statement, itemgetter(*names), processors)
        statement, columns, processors = prepared
        values: list[list[Any]] = []
        for row in rows:
            value = list(columns(row)) if len(names) > 1 else [columns(row)]
            for n, process in processors:
                value[n] = process(value[n])
            values.append(value)
        if len(values) == 1:
            self.execute(statement, values[0])
        else:
            self.executemany(statement, values)

    def bind_processor(self, column: Column[Any]) -> Processor:
        """What SQLAlchemy does to a Python value bound to ``column`` (None: nothing). The
        ``UtcDateTime`` columns share one, which remembers its last value: an intake binds one
        ``at`` to half a dozen columns."""
        key = (column.table.name, column.name)
        if key not in self._bind:
            if isinstance(column.type, UtcDateTime):  # one conversion, shared by all such columns
                key = ("", UtcDateTime.__name__)
                if key in self._bind:
                    return self._bind[key]
            process: Processor = column.type.dialect_impl(self._dialect).bind_processor(
                self._dialect
            )
            if process is not None and isinstance(column.type, UtcDateTime):
                process = _last_value_kept(process)
            self._bind[key] = process
        return self._bind[key]

    def result_processor(self, column: Column[Any]) -> Processor:
        """What SQLAlchemy does to a value of ``column`` read from the database (None: nothing)."""
        key = (column.table.name, column.name)
        if key not in self._result:
            self._result[key] = column.type.dialect_impl(self._dialect).result_processor(
                self._dialect, None
            )
        return self._result[key]
