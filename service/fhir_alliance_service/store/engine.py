"""Engines for the store's two backends, configured once here.

* SQLite (the embedded default): a file in WAL mode with a ``busy_timeout`` and foreign keys on.
  Write transactions take the write lock up front (``BEGIN IMMEDIATE``), so that a web process
  and a worker process sharing the file queue for the lock instead of deadlocking on an upgrade
  from a read lock. Read-only work uses :data:`READ_ONLY` and a plain deferred ``BEGIN``.
  Before ``BEGIN IMMEDIATE`` the store's writers take their turn from :func:`writer_turn`: a
  lock per process and an advisory ``flock`` on a file beside the database, so that contending
  writers (gunicorn workers and their threads) wait in a queue and are woken as soon as the
  writer before them commits, rather than polling in SQLite's busy handler, whose sleeps (1, 2,
  5 … 100 ms) made the intake's long tail. ``busy_timeout`` still covers other writers
  (migrations, the ``sqlite3`` shell). The wait for a turn is bounded (``write_wait_seconds`` of
  :func:`make_engine`, the setting ``sqlite_write_wait_seconds``): past it the write raises
  :class:`WriterTurnTimeout` before its transaction begins, so nothing is half-written, and the
  caller answers 503 with ``Retry-After`` (intake) or tries again later (the worker). The same
  bound covers a lock held outside the store's writers (the ``sqlite3`` shell, a backup, another
  program): within a turn, ``BEGIN IMMEDIATE`` waits in SQLite's busy handler only for what is
  left of the write wait, and a "database is locked" of the transaction (at ``BEGIN IMMEDIATE``,
  a statement or ``COMMIT``) ends it rolled back as :class:`WriterTurnTimeout`. A blocked
  ``flock`` cannot be interrupted, so a contended one is waited for on a helper thread; a writer
  that gives up leaves the helper to hand the turn on as soon as it gets it.
* PostgreSQL through psycopg 3: ``postgresql://`` URLs are normalised to ``postgresql+psycopg://``;
  a small pool with ``pool_pre_ping`` so that a restarted database does not fail the first call.

Statement parameters (patient keys, identifiers, bodies) never appear in exception messages or
SQL logs (``hide_parameters``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

try:
    import fcntl
except ImportError:  # not POSIX: writers then rely on SQLite's busy_timeout alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_WRITE_WAIT_SECONDS",
    "READ_ONLY",
    "SQLITE_BUSY_TIMEOUT_MS",
    "WriterTurnTimeout",
    "connect_raw_autocommit",
    "is_sqlite_locked",
    "make_engine",
    "normalise_url",
    "writer_turn",
]

#: Execution option marking a read-only transaction (SQLite then begins a deferred transaction).
READ_ONLY = "fhir_alliance_read_only"

SQLITE_BUSY_TIMEOUT_MS = 30_000

#: How long a SQLite writer waits for its turn by default (``sqlite_write_wait_seconds``).
DEFAULT_WRITE_WAIT_SECONDS = 10.0
#: The engine's execution option carrying that bound (set by :func:`make_engine`).
_WRITE_WAIT = "fhir_alliance_write_wait_seconds"


class WriterTurnTimeout(TimeoutError):
    """A write waited longer than its bound for its turn among the SQLite file's writers. It
    never began, so nothing of it was written; trying again later is safe."""


def is_sqlite_locked(error: BaseException) -> bool:
    """``error`` is SQLite's "database is locked" (``SQLITE_BUSY``): another connection held the
    lock past the busy timeout. Nothing is wrong with the data; the same work can be tried again."""
    cause: BaseException | None = error.orig if isinstance(error, DBAPIError) else error
    if not isinstance(cause, sqlite3.OperationalError):
        return False
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "database is locked" in str(cause)


def normalise_url(url: str | URL) -> URL:
    """The URL with its driver made explicit: psycopg 3 for PostgreSQL."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _dump_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(
    url: str | URL, *, write_wait_seconds: float = DEFAULT_WRITE_WAIT_SECONDS
) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL) set up as the module docstring says;
    ``write_wait_seconds`` bounds a SQLite writer's wait for its turn (:func:`writer_turn`)."""
    if not write_wait_seconds > 0:
        raise ValueError("write_wait_seconds must be positive")
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
        _create_owner_only(parsed.database)
        engine = create_engine(
            parsed,
            pool_size=5,
            max_overflow=5,
            connect_args={"factory": _SqliteConnection},
            **common,
        )
        engine.update_execution_options(**{_WRITE_WAIT: float(write_wait_seconds)})
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            parsed, pool_size=5, max_overflow=10, pool_pre_ping=True, pool_recycle=1800, **common
        )
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite or postgresql"
    )


def _create_owner_only(database: str) -> None:
    """A SQLite store file that does not exist yet is created readable by its owner only (mode
    0600, whatever the umask), so that the patient data in it is not left to the folder's mode
    alone; SQLite gives its ``-wal`` and ``-shm`` files the database file's mode. An existing
    file, or a folder that does not exist (SQLite's own error then says so), is left as it is."""
    if database.startswith("file:"):
        return  # a URI filename: SQLite opens it as it says
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


class _TurnState(threading.local):
    """This thread's write turn on a SQLite file: when its write wait ends (``None``: no turn
    held) and the raw connection whose ``BEGIN IMMEDIATE`` it ran."""

    deadline: float | None = None
    connection: _SqliteConnection | None = None


_turn_state = _TurnState()

#: A busy timeout within this much of the rest of the write wait is left as it is (no PRAGMA).
_BUSY_TIMEOUT_SLACK_MS = 100


class _SqliteConnection(sqlite3.Connection):
    """The store's SQLite connections: they remember their ``busy_timeout``, so that a write's
    ``BEGIN IMMEDIATE`` waits in SQLite's busy handler only for what is left of its write wait
    (:func:`_fit_busy_timeout`; the raw path's ``BEGIN IMMEDIATE`` comes through :meth:`execute`,
    the engine's through its ``begin`` event)."""

    busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if sql == "BEGIN IMMEDIATE":
            _fit_busy_timeout(self)
            _turn_state.connection = self
        return super().execute(sql, parameters)


def _fit_busy_timeout(connection: Any) -> None:
    """Before ``BEGIN IMMEDIATE``: the busy timeout of ``connection`` set to the rest of this
    thread's write wait (the default outside a turn), changed only when it is off by more than
    a little, so that uncontended writes send no PRAGMA."""
    if not isinstance(connection, _SqliteConnection):
        return
    deadline = _turn_state.deadline
    if deadline is None:
        wanted = SQLITE_BUSY_TIMEOUT_MS
    else:
        wanted = max(1, int((deadline - time.monotonic()) * 1000))
    if abs(connection.busy_timeout_ms - wanted) > _BUSY_TIMEOUT_SLACK_MS:
        sqlite3.Connection.execute(connection, f"PRAGMA busy_timeout={wanted}")
        connection.busy_timeout_ms = wanted


def _set_up_sqlite_connection(dbapi_connection: Any) -> None:
    # No implicit BEGIN from the sqlite3 module: SQLAlchemy emits BEGIN itself (below), and a
    # raw autocommit read (``connect_raw``) runs each statement in its own read transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL takes an exclusive lock, which
    # processes opening the same new database at once (several upgrading at start-up) must wait
    # for rather than fail on ("database is locked").
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    if isinstance(dbapi_connection, _SqliteConnection):
        dbapi_connection.busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a commit is on disk (the WAL fsynced) before it returns, so a record the API has
    # acknowledged survives power loss too; NORMAL would survive only a process crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while the database is locked, within the busy
    timeout. While another connection is switching a new file to WAL (several processes
    upgrading it at start-up), SQLite may answer "database is locked" at once, without waiting in
    its busy handler: seen in 3 of 60 rounds of three threads upgrading one new file at once on
    a loaded machine."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if not is_sqlite_locked(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def connect_raw_autocommit(engine: Engine) -> Any:
    """A new DBAPI connection to ``engine``'s database, outside its pool, in autocommit mode.

    For hot single-statement reads: each statement is then its own read transaction (a fresh
    snapshot that sees everything committed before it started, by any process), with no
    ``BEGIN``/``COMMIT`` round trips and no pool checkout. The caller owns and closes it; it may
    be closed from another thread than the one that uses it (SQLite: ``check_same_thread`` off).
    """
    dialect = engine.dialect
    args, kwargs = dialect.create_connect_args(engine.url)
    if dialect.name == "sqlite":
        kwargs["check_same_thread"] = False
        kwargs["factory"] = _SqliteConnection
        connection = dialect.loaded_dbapi.connect(*args, **kwargs)
        _set_up_sqlite_connection(connection)
        return connection
    kwargs["autocommit"] = True
    return dialect.loaded_dbapi.connect(*args, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _set_up_sqlite_connection(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            _fit_busy_timeout(connection.connection.dbapi_connection)
            connection.exec_driver_sql("BEGIN IMMEDIATE")


class _WriterQueue:
    """The writers of one SQLite file in this process: a thread lock, then ``flock`` on the lock
    file (one open file per process, so other processes' writers queue on the same file).

    Holding the thread lock is holding this process's place: whoever has it either holds the
    ``flock`` or is waiting for it. A turn is given back exactly once, by the writer after its
    transaction, or by the helper thread of a writer that gave up waiting."""

    def __init__(self, lock_path: str) -> None:
        self._thread_lock = threading.Lock()
        self._lock_file = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        os.close(self._lock_file)

    @contextmanager
    def turn(self, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=timeout):
            raise WriterTurnTimeout(_timeout_message(timeout))
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process writes: wait in line, within the bound
            if not self._wait_for_file_lock(deadline - time.monotonic()):
                raise WriterTurnTimeout(_timeout_message(timeout)) from None
        except BaseException:
            self._thread_lock.release()
            raise
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._thread_lock.release()

    def _wait_for_file_lock(self, remaining: float) -> bool:
        """Wait up to ``remaining`` seconds for the ``flock`` (the thread lock is held). False:
        given up; the thread lock then belongs to the helper, which hands the turn on."""
        waiter = _FileLockWaiter()
        helper = threading.Thread(
            target=self._block_for_file_lock, args=(waiter,), name="sqlite-writer-turn", daemon=True
        )
        helper.start()
        waiter.done.wait(max(0.0, remaining))
        with waiter.guard:
            if not waiter.done.is_set():
                waiter.abandoned = True
                return False
        if waiter.error is not None:
            self._thread_lock.release()
            raise waiter.error
        return True

    def _block_for_file_lock(self, waiter: _FileLockWaiter) -> None:
        error: OSError | None = None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        except OSError as exc:  # the file was closed under us: no turn to hand on
            error = exc
        with waiter.guard:
            if not waiter.abandoned:
                waiter.error = error
                waiter.done.set()
                return
        # The writer gave up: hand the turn on at once.
        if error is None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._thread_lock.release()


class _FileLockWaiter:
    """Between a writer and the helper thread blocked in ``flock`` for it."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.error: OSError | None = None


def _timeout_message(timeout: float) -> str:
    return (
        f"timed out after {timeout:g} s waiting for the SQLite store's write turn "
        "(other writers hold it); nothing was written"
    )


#: This process's queues by lock file path.
_writer_queues: dict[str, _WriterQueue] = {}
_writer_queues_lock = threading.Lock()


def _forget_queues_in_child() -> None:
    # A forked child must not share its parent's open lock file (``flock`` locks belong to the
    # open file, which ``fork`` shares) nor inherit a thread lock some other thread held.
    global _writer_queues_lock
    _writer_queues_lock = threading.Lock()
    for queue in _writer_queues.values():
        queue.close()
    _writer_queues.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_queues_in_child)


def writer_turn(engine: Engine) -> Callable[[], AbstractContextManager[None]]:
    """A context manager factory to hold around each write transaction on ``engine``: for SQLite,
    the turn of this thread among all writers of the file (see the module docstring), or
    :class:`WriterTurnTimeout` after the engine's ``write_wait_seconds``, also when a lock held
    outside the store's writers keeps the transaction from beginning or committing (it is then
    rolled back); for PostgreSQL, nothing (its row locks need no queue)."""
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return nullcontext
    lock_path = os.path.abspath(engine.url.database) + "-writer.lock"
    timeout = float(engine.get_execution_options().get(_WRITE_WAIT, DEFAULT_WRITE_WAIT_SECONDS))

    @contextmanager
    def turn() -> Iterator[None]:
        state = _turn_state
        deadline = time.monotonic() + timeout
        if fcntl is None:  # no queue: the busy handler alone waits, within the bound
            queue_turn: AbstractContextManager[None] = nullcontext()
        else:
            with _writer_queues_lock:
                queue = _writer_queues.get(lock_path)
                if queue is None:
                    queue = _writer_queues[lock_path] = _WriterQueue(lock_path)
            queue_turn = queue.turn(timeout)
        with queue_turn:
            state.deadline, state.connection = deadline, None
            try:
                yield
            except (DBAPIError, sqlite3.OperationalError) as error:
                if not is_sqlite_locked(error):
                    raise
                _roll_back(state.connection)
                raise WriterTurnTimeout(_locked_message(timeout)) from error
            finally:
                state.deadline, state.connection = None, None

    return turn


def _roll_back(connection: _SqliteConnection | None) -> None:
    """Whatever of the raw ``connection``'s transaction is still open (a ``COMMIT`` that found
    the database locked leaves it open) is rolled back: nothing of it is kept."""
    if connection is not None and connection.in_transaction:
        sqlite3.Connection.execute(connection, "ROLLBACK")


def _locked_message(timeout: float) -> str:
    return (
        f"timed out after {timeout:g} s waiting for the SQLite database's write lock "
        "(held outside this service's writers); nothing was written"
    )
