"""The service's subcommands of ``fhir-alliance`` (serve, worker, sync-once, status, replay,
resolve-conflict, create-api-key, list-api-keys, revoke-api-key, db upgrade/current/backup, load, pull, reconcile), registered through the ``fhir_alliance.commands`` entry
point.

Every command reads its settings with :func:`~fhir_alliance_service.config.load_settings` (the
environment, ``FHIR_ALLIANCE_*``); secrets never come from the command line. A bad setting stops
the command with one line on stderr and exit status 2. Heavy modules (Flask, SQLAlchemy, gunicorn)
are imported inside the handlers, so that the library's own subcommands stay fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_alliance_service.config import Settings
    from fhir_alliance_service.store.interface import Store

__all__ = ["register"]

#: Exit status when settings (or the database's schema) stop a command before it starts.
EXIT_CONFIG = 2
#: PostgreSQL's SQLSTATE for a privilege the database user lacks (``permission denied for …``).
INSUFFICIENT_PRIVILEGE = "42501"
#: Records handed to ``intake_records`` at a time by ``load``.
DEFAULT_LOAD_BATCH = 500
#: How many held items ``status`` reads to summarise the held reasons.
HELD_REASONS_SCAN = 10_000


class _StopCommand(Exception):
    """Ends a command early with a one-line message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.status = status


def register(subparsers: Any) -> None:
    """Add the service's sub-parsers to ``fhir-alliance``."""
    serve = subparsers.add_parser(
        "serve", help="run the HTTP API under gunicorn", description=_serve.__doc__
    )
    serve.add_argument("--bind", help="host:port to listen on (default: FHIR_ALLIANCE_BIND)")
    serve.add_argument(
        "--workers", type=int, help="gunicorn worker processes (default: FHIR_ALLIANCE_WEB_WORKERS)"
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="threads per worker process (default: FHIR_ALLIANCE_WEB_THREADS)",
    )
    serve.set_defaults(handler=_guarded(_serve))

    worker = subparsers.add_parser(
        "worker",
        help="sync the outbox to the FHIR server until stopped",
        description=_worker.__doc__,
    )
    worker.add_argument(
        "--name", help="this worker's id in leases (default: host-pid-random, unique per process)"
    )
    worker.add_argument(
        "--no-pull",
        action="store_true",
        help=(
            "no pulls of remote changes and no retraction passes (the retraction checks noted "
            "in the store are still made)"
        ),
    )
    worker.set_defaults(handler=_guarded(_worker))

    pull = subparsers.add_parser(
        "pull",
        help="read remote consent changes once, re-run the gate, retract by policy",
        description=_pull.__doc__,
    )
    pull.add_argument("--full", action="store_true", help="list everything (notices deletions)")
    pull.add_argument("--json", action="store_true", help="machine-readable output")
    pull.set_defaults(handler=_guarded(_pull))

    reconcile = subparsers.add_parser(
        "reconcile",
        help="compare sent records with the FHIR server: missing, duplicated, drifted",
        description=_reconcile.__doc__,
    )
    named = reconcile.add_mutually_exclusive_group()
    named.add_argument(
        "--patient",
        metavar="KEY",
        help="only this patient's records (Patient/<id> or system|value); '-' reads it from "
        "stdin, which keeps it out of the command line that ps shows every user (a value here "
        "is warned about on stderr)",
    )
    named.add_argument(
        "--patient-file",
        metavar="PATH",
        help="only the records of the patient named on the one line of this file",
    )
    reconcile.add_argument("--fix", action="store_true", help="repair what is found")
    reconcile.add_argument("--json", action="store_true", help="machine-readable report")
    reconcile.set_defaults(handler=_guarded(_reconcile))

    subscribe = subparsers.add_parser(
        "subscribe",
        help="register a rest-hook Subscription for consent changes (where the server offers one)",
        description=_subscribe.__doc__,
    )
    subscribe.add_argument(
        "--endpoint",
        required=True,
        help="this service's notification URL as the FHIR server reaches it, "
        "e.g. https://sync.clinic.example/v1/fhir/notifications",
    )
    subscribe.add_argument(
        "--key-env",
        metavar="VARIABLE",
        help="an environment variable holding an API key of scope notify (create-api-key NAME "
        "--scope notify) that the server sends as 'Authorization: Bearer …' with each "
        "notification (never the key itself on the command line); a key with more scopes, or "
        "one this service's store does not accept, is warned about on stderr",
    )
    subscribe.add_argument("--json", action="store_true", help="machine-readable output")
    subscribe.set_defaults(handler=_guarded(_subscribe))

    sync_once = subparsers.add_parser(
        "sync-once",
        help="sync until nothing is claimable, then exit",
        description=_sync_once.__doc__,
    )
    sync_once.add_argument(
        "--one-batch", action="store_true", help="claim and process one batch only"
    )
    sync_once.set_defaults(handler=_guarded(_sync_once))

    status = subparsers.add_parser(
        "status",
        help="outbox counts by state, held reasons, FHIR server contact",
        description=_status.__doc__,
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_guarded(_status))

    replay = subparsers.add_parser(
        "replay", help="re-queue dead-lettered records", description=_replay.__doc__
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "record",
        nargs="?",
        metavar="RECORD_ID",
        help="a record id (or its identifier system|value)",
    )
    which.add_argument("--all", action="store_true", help="every dead-lettered record")
    which.add_argument(
        "--audit",
        action="store_true",
        help="every dead-lettered audit push (AuditEvent/Provenance, push_audit)",
    )
    replay.set_defaults(handler=_guarded(_replay))

    resolve = subparsers.add_parser(
        "resolve-conflict",
        help="decide a conflict flagged for a person (CONFLICT_POLICY=flag)",
        description=_resolve_conflict.__doc__,
    )
    resolve.add_argument(
        "record", metavar="RECORD_ID", help="a record id (or its identifier system|value)"
    )
    decision = resolve.add_mutually_exclusive_group(required=True)
    decision.add_argument(
        "--overwrite",
        dest="decision",
        action="store_const",
        const="overwrite",
        help="write our version over the server's (gated again; If-Match the server's version "
        "the conflict was flagged against)",
    )
    decision.add_argument(
        "--keep-remote",
        dest="decision",
        action="store_const",
        const="keep-remote",
        help="keep the server's version (recorded as sent; nothing is sent)",
    )
    resolve.add_argument(
        "--against",
        metavar="VERSIONS",
        type=_conflict_versions,
        help="decide only the conflict flagged against these server versions, as this command "
        "prints them (Type/id/_history/version, joined by commas; '' for none noted); default: "
        "the versions the record is flagged against when the command reads it",
    )
    resolve.add_argument(
        "--record-version",
        metavar="N",
        type=int,
        help="decide only if the conflict is on this version of our record, as this command "
        "prints it (a newer version may be flagged against the same server versions); default: "
        "the version flagged when the command reads it",
    )
    resolve.set_defaults(handler=_guarded(_resolve_conflict))

    create_key = subparsers.add_parser(
        "create-api-key",
        help="create an API key (printed once; only its hash is stored)",
        description=_create_api_key.__doc__,
    )
    create_key.add_argument("name", metavar="NAME", help="who or what the key is for")
    create_key.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=("read", "write", "admin", "consult", "notify"),
        help="a scope the key grants (repeat for several)",
    )
    create_key.set_defaults(handler=_guarded(_create_api_key))

    list_keys = subparsers.add_parser(
        "list-api-keys",
        help="list the API keys: id, name, scopes, created, revoked (never a secret)",
        description=_list_api_keys.__doc__,
    )
    list_keys.add_argument("--json", action="store_true", help="machine-readable output")
    list_keys.set_defaults(handler=_guarded(_list_api_keys))

    revoke_key = subparsers.add_parser(
        "revoke-api-key",
        help="revoke an API key by its id (fa_…, as list-api-keys shows)",
        description=_revoke_api_key.__doc__,
    )
    revoke_key.add_argument(
        "key_id", metavar="KEY_ID", help="the key's id, fa_<hex> (never the whole key)"
    )
    revoke_key.set_defaults(handler=_guarded(_revoke_api_key))

    db = subparsers.add_parser("db", help="the database schema (Alembic migrations)")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    db_commands.add_parser(
        "upgrade", help="migrate the database to the newest schema", description=_db_upgrade.__doc__
    ).set_defaults(handler=_guarded(_db_upgrade))
    db_commands.add_parser(
        "current", help="print the schema revision in use", description=_db_current.__doc__
    ).set_defaults(handler=_guarded(_db_current))
    db_backup = db_commands.add_parser(
        "backup",
        help="copy a SQLite store to a new file while serve and worker run",
        description=_db_backup.__doc__,
    )
    db_backup.add_argument("destination", type=Path, metavar="DEST", help="a new file")
    db_backup.set_defaults(handler=_guarded(_db_backup))

    load = subparsers.add_parser(
        "load", help="bulk intake of JSON / NDJSON record files", description=_load.__doc__
    )
    load.add_argument("files", nargs="+", type=Path, metavar="FILE")
    load.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_LOAD_BATCH,
        help=f"records stored per transaction (default {DEFAULT_LOAD_BATCH})",
    )
    load.set_defaults(handler=_guarded(_load))


# -- plumbing -----------------------------------------------------------------------------------


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``handler``; a bad setting, a refused start or a missing extra becomes one line on
    stderr."""
    from fhir_alliance_service.config import ConfigError

    def run(args: argparse.Namespace) -> int:
        try:
            return run_handler(args)
        except ModuleNotFoundError as exc:
            # The wheel registers these commands even when installed without its extras (so
            # --help lists them): say which extra to install, not a traceback.
            missing = (exc.name or "").partition(".")[0]
            if not missing or missing in {"fhir_alliance", "fhir_alliance_service"}:
                raise
            extra = "postgres" if missing == "psycopg" else "service"
            print(
                f"error: fhir-alliance {args.command} needs the '{extra}' extra, which is not "
                f"installed (no module {missing}): pip install 'fhir-alliance[{extra}]'",
                file=sys.stderr,
            )
            return EXIT_CONFIG

    def run_handler(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

        from fhir_alliance_service.store.engine import WriterTurnTimeout

        try:
            return handler(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except _StopCommand as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.status
        except WriterTurnTimeout as exc:
            # SQLite's write lock stayed with another program: nothing of it was written. The
            # message says so and holds no stored value.
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OperationalError as exc:
            # Cannot connect or open the file: the driver's first line says why (host, port or
            # path; never the password, never statement parameters, which the engine hides).
            # Named by the variable that gave the URL, as every settings error is.
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            print(
                f"error: {_database_url_variable()}: the database cannot be used: {reason}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        except ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                print(f"error: database error ({type(exc).__name__})", file=sys.stderr)
                return 1
            # The database user may not do this (PostgreSQL 15 lets only a database's owner
            # create tables in its schema public): the driver's first line names the object,
            # never a value.
            reason = str(exc.orig).strip().splitlines()[0]
            print(
                f"error: {_database_url_variable()}: the database user lacks a privilege: "
                f"{reason} (make it the database's owner; see docs/service.md, PostgreSQL)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        except SQLAlchemyError as exc:
            # Other database errors may quote stored values: name the error type only.
            print(f"error: database error ({type(exc).__name__})", file=sys.stderr)
            return 1

    run.__doc__ = handler.__doc__
    return run


def _database_url_variable() -> str:
    """The variable that gave the database URL: ``…_DATABASE_URL_FILE`` when that is set (the
    two together are refused), else ``FHIR_ALLIANCE_DATABASE_URL`` (also for the default and the
    settings file's ``database_url``, which that variable would override)."""
    variable = "FHIR_ALLIANCE_DATABASE_URL"
    return f"{variable}_FILE" if f"{variable}_FILE" in os.environ else variable


def _settings() -> Settings:
    """The settings, checked; a SQLite URL whose folder does not exist is refused here, naming the
    folder, for every command (``db upgrade`` makes the database file, never its folder)."""
    from fhir_alliance_service.config import ConfigError, load_settings
    from fhir_alliance_service.store.schema import missing_sqlite_folder

    settings = load_settings()
    folder = missing_sqlite_folder(settings.database_url)
    if folder is not None:
        raise ConfigError(
            f"{_database_url_variable()}: no folder {folder} for the SQLite database: check the "
            "URL (a typo, a volume not mounted) or create the folder; db upgrade creates the "
            "database file, never its folder"
        )
    return settings


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _opened_store(settings: Settings) -> Iterator[Store]:
    """The store, after checking its schema is the newest (else: run ``db upgrade``)."""
    _require_migrated(settings)
    from fhir_alliance_service.store import open_store

    store = open_store(settings.database_url, write_wait_seconds=settings.sqlite_write_wait_seconds)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _opened_key_store(settings: Settings) -> Iterator[Store]:
    """:func:`_opened_store` for ``list-api-keys`` and ``revoke-api-key``, which also open a
    database at an older revision of this code's migrations: they read and revoke keys through
    columns every revision has, and keys not revoked that share a name stop ``db upgrade``
    (migration 0005) until all but one are revoked."""
    from fhir_alliance_service.store import SqlStore, current_revision
    from fhir_alliance_service.store.engine import make_engine

    if current_revision(settings.database_url) not in _older_revisions():
        _require_migrated(settings)  # at head, or one line saying what to run
    store = SqlStore(
        make_engine(settings.database_url, write_wait_seconds=settings.sqlite_write_wait_seconds)
    )
    try:
        yield store
    finally:
        store.close()


def _older_revisions() -> frozenset[str]:
    """The revisions of this code's migrations before the newest."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from fhir_alliance_service.store.schema import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_current_head()
    return frozenset(s.revision for s in scripts.walk_revisions() if s.revision != head)


def _require_migrated(settings: Settings) -> None:
    from fhir_alliance_service.store.schema import SchemaVersionError, check_at_head

    try:
        check_at_head(settings.database_url)
    except SchemaVersionError as exc:
        raise _StopCommand(str(exc)) from None


def _configure_logging(settings: Settings) -> None:
    """The service's JSON log lines on stderr (no PHI; see ``logs.py``)."""
    from fhir_alliance_service.logs import configure_logging

    configure_logging(settings.log_level)


def _client(settings: Settings) -> Any:
    if not settings.fhir_base_url:
        raise _StopCommand("FHIR_ALLIANCE_FHIR_BASE_URL is not set: there is nowhere to sync to")
    from fhir_alliance.errors import InputError
    from fhir_alliance_service.sync.target import client_from_settings

    try:
        return client_from_settings(settings)
    except InputError as exc:
        # The SMART key file holds no usable key: name the setting (never the key's content).
        key_issues = [issue.message for issue in exc.issues if issue.path == "private_key"]
        if not key_issues:
            raise
        raise _StopCommand(
            f"FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE: {'; '.join(key_issues)} "
            f"in {settings.smart_private_key_file!r} "
            f"(FHIR_ALLIANCE_SMART_ALGORITHM is {settings.smart_algorithm})"
        ) from None


# -- serve --------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API with gunicorn (never Flask's development server). Each gunicorn worker
    builds its own app with ``create_app(settings)``; SIGTERM stops gracefully."""
    settings = _settings()
    bind = settings.bind if args.bind is None else _checked_bind(args.bind)
    workers = args.workers if args.workers is not None else settings.web_workers
    if workers < 1:
        raise _StopCommand("--workers must be at least 1")
    threads = args.threads if args.threads is not None else settings.web_threads
    if threads < 1:
        raise _StopCommand("--threads must be at least 1")
    _require_migrated(settings)
    _require_free(bind, "FHIR_ALLIANCE_BIND" if args.bind is None else "--bind")
    from fhir_alliance_service.cli_serve import serve

    return serve(settings, bind=bind, workers=workers, threads=threads)


def _require_free(bind: str, source: str) -> None:
    """Stop with one line naming ``source`` when ``bind`` (``host:port``) cannot be listened on:
    gunicorn would retry for about 5 s and exit 1 with lines naming no setting. Bound and
    released at once, with gunicorn's SO_REUSEADDR; a ``unix:`` path is left to gunicorn."""
    import socket

    if bind.startswith("unix:"):
        return
    host, _, port = bind.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise _StopCommand(f"{source}: cannot listen on {bind}: {reason}") from None


def _checked_bind(given: str) -> str:
    """``--bind`` checked as FHIR_ALLIANCE_BIND is (host:port or unix:PATH)."""
    from fhir_alliance_service.config import _bind, _Invalid

    try:
        return _bind(given)
    except _Invalid as exc:
        raise _StopCommand(f"--bind: {exc}") from None


# -- worker and sync-once -------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    """Claim, gate, map and send outbox items until stopped; between batches, every
    FHIR_ALLIANCE_PULL_INTERVAL_SECONDS, pull remote consent changes and retract by policy
    (``--no-pull``: no pulls and no retraction passes; the retraction checks noted in the store
    are still made). SIGTERM or SIGINT (Ctrl-C) sets the stop event: the batch in hand
    is finished and recorded, then the process exits 0. A second Ctrl-C leaves at once (the
    batch's leases expire and it is sent again later). The store's schema revision is read again
    every SCHEMA_CHECK_SECONDS (10 s): once another release's db upgrade changed it, the batches
    in hand are finished, nothing more is claimed, and the process exits 2 saying so."""
    settings = _settings()
    client = _client(settings)
    _configure_logging(settings)
    from fhir_alliance_service.sync.pull import TwoWaySync
    from fhir_alliance_service.sync.worker import Worker

    stop = threading.Event()
    with _stop_on_signals(stop), _opened_store_once_unlocked(settings, stop) as store:
        if store is None:  # stopped while the database was locked
            _close(client)
            return 0
        # --no-pull: no pulls and no retraction passes, but the checks noted in the store.
        two_way = TwoWaySync(settings, store, client, pull=not args.no_pull).tick
        worker = Worker(settings, store, client, worker_id=args.name, between_batches=two_way)
        stop_metrics = _no_metrics
        try:
            stop_metrics = _publish_metrics(settings, store)
            worker.run_forever(stop)
        finally:
            stop_metrics()
            _close(client)
        changed = worker.schema.mismatch()
        if changed is not None:  # another release's db upgrade ran: restart with that release
            raise _StopCommand(changed)
    return 0


def _no_metrics() -> None:
    return None


@contextmanager
def _opened_store_once_unlocked(
    settings: Settings, stop: threading.Event
) -> Iterator[Store | None]:
    """:func:`_opened_store` for the worker: a SQLite database locked by another program (its
    schema check cannot begin) is waited out, logged and tried again every
    ``poll_interval_seconds``, like an outage once running; None if ``stop`` is set meanwhile."""
    import logging

    from sqlalchemy.exc import OperationalError

    from fhir_alliance_service.store import open_store
    from fhir_alliance_service.store.engine import is_sqlite_locked

    while True:
        try:
            _require_migrated(settings)
            store = open_store(
                settings.database_url, write_wait_seconds=settings.sqlite_write_wait_seconds
            )
            break
        except OperationalError as exc:
            if not is_sqlite_locked(exc):
                raise
            logging.getLogger("fhir_alliance_service.sync").warning(
                "database is locked by another program: waiting to start"
            )
            if stop.wait(settings.poll_interval_seconds):
                yield None
                return
    try:
        yield store
    finally:
        store.close()


def _publish_metrics(settings: Settings, store: Store) -> Callable[[], None]:
    """Serve this worker's metrics at ``worker_metrics_bind`` (if set); returns the stopper."""
    if settings.worker_metrics_bind is None:
        return _no_metrics
    from fhir_alliance_service.metrics import serve_metrics

    bind = settings.worker_metrics_bind
    try:
        return serve_metrics(bind, store)
    except OSError as exc:  # in use (another worker's port), or an address not of this host
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise _StopCommand(
            f"FHIR_ALLIANCE_WORKER_METRICS_BIND: cannot listen on {bind}: {reason} "
            "(each worker process needs its own address)"
        ) from None


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            # Ctrl-C twice: leave now. The unfinished batch's leases expire and another worker
            # (or this one, restarted) sends it again; sends are idempotent.
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sync_once(args: argparse.Namespace) -> int:
    """One pass: process batches until nothing is claimable right now (items waiting for their
    next attempt stay waiting), or only one batch with ``--one-batch``; then print what happened.
    Exit 1 when the FHIR server could not be reached."""
    settings = _settings()
    client = _client(settings)
    _configure_logging(settings)
    from fhir_alliance_service.sync.worker import sync_once

    with _opened_store(settings) as store:
        try:
            report = sync_once(settings, store, client, max_batches=1 if args.one_batch else None)
        finally:
            _close(client)
        counts = store.counts_by_state()
    print(
        f"processed {report.claimed} item(s): sent {report.sent}, held {report.held}, "
        f"failed {report.failed}, dead-lettered {report.dead}, "
        f"superseded {report.superseded} "
        f"({report.resources_sent} FHIR resource(s) sent)"
    )
    print("outbox: " + _counts_line(counts))
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
        return 1
    return 0


def _pull(args: argparse.Namespace) -> int:
    """One pull of the Consents (and, with FHIR_ALLIANCE_PULL_OBSERVATIONS, Observations) of the
    store's patients from the FHIR server; the gate is re-run for changed patients, then every
    patient's shared records are checked against the retraction policy. Exit 1 when the server
    could not be reached."""
    settings = _settings()
    client = _client(settings)
    _configure_logging(settings)
    from fhir_alliance_service.sync.pull import Puller
    from fhir_alliance_service.sync.retract import Retractor

    with _opened_store(settings) as store:
        try:
            report = Puller(settings, store, client).pull(full_listing=True if args.full else None)
            retracted = Retractor(settings, store, client).run_pass(everyone=True)
        finally:
            _close(client)
    summary = {
        "read": report.read,
        "duplicates": report.duplicates,
        "stale": report.stale,  # older than a copy seen before (or unsure), not merged
        "merged": report.merged,
        "ignored": report.ignored,
        "ignored_why": report.ignored_why,  # other server, not our patient, no patient
        "unreadable": report.unreadable,
        "withdrawn": report.withdrawn,
        "conflicts": report.conflicts,
        "reasserted": report.reasserted,  # withdrawals undone on the server, written back
        # permits pulled under another FHIR base URL, which no pull reads any more: revoked
        "withdrawn_elsewhere": report.withdrawn_elsewhere,
        "deleted": report.deleted,
        "observations": report.observations,
        "released": report.released,
        "full_listing": report.full_listing,
        "deletions": report.deletions,  # per type: history, listing or none
        "retraction": {
            "policy": settings.retraction_policy,
            "kept": retracted.kept,
            "entered_in_error": retracted.entered_in_error,
            "deleted": retracted.deleted,
            "failed": retracted.failed,
        },
        "error": report.error,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"pulled {report.read} resource(s): {report.merged} merged, "
            f"{report.ignored} ignored (not our patients), "
            f"{report.duplicates} already seen, {report.stale} older than a copy seen before, "
            f"{report.unreadable} unreadable, "
            f"{report.withdrawn} of ours withdrawn, {report.conflicts} conflict(s) "
            f"({report.reasserted} withdrawal(s) undone on the server, written back), "
            f"{report.deleted} deleted; {report.released} held item(s) re-queued"
        )
        print(
            f"retraction ({settings.retraction_policy}): kept {retracted.kept}, "
            f"entered-in-error {retracted.entered_in_error}, deleted {retracted.deleted}, "
            f"failed {retracted.failed}"
        )
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
        return 1
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """Compare every sent record with the FHIR server by business identifier and report the
    resources that are missing, duplicated or drifted (content differs from what the mapping
    gives now); ``--fix`` repairs them (the gate is asked again first). Exit 1 when something is
    found and not fixed. ``--patient -`` (stdin) or ``--patient-file PATH`` limit it to one
    patient without putting the patient on the command line."""
    settings = _settings()
    patient = _reconcile_patient(args)  # before the client: a refusal leaves nothing open
    client = _client(settings)
    _configure_logging(settings)
    from fhir_alliance_service.sync.reconcile import Reconciler

    with _opened_store(settings) as store:
        try:
            report = Reconciler(settings, store, client).run(patient=patient, fix=args.fix)
        finally:
            _close(client)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        summary = report.to_json()
        print(
            f"checked {report.records} record(s), {report.resources} resource(s): "
            f"{summary['missing']} missing, {summary['duplicated']} duplicated, "
            f"{summary['drifted']} drifted; {summary['fixed']} fixed"
        )
        from fhir_alliance_service.sync.gate import HoldReason

        reasons = {reason.code: reason.words for reason in HoldReason}
        for finding in report.findings:
            state = "fixed" if finding.fixed else "open"
            if finding.held:
                state = f"held by the gate: {reasons.get(finding.held_reason or '', 'no permit')}"
            print(f"  {finding.problem:10} record {finding.record_id} {finding.resource} ({state})")
    unfixed = [f for f in report.findings if not f.fixed]
    return 1 if unfixed else 0


#: One ``warning:`` line for a patient given on the command line (the value is never echoed).
PATIENT_IN_ARGV_WARNING = (
    "warning: --patient with a value puts the patient on the command line, where ps shows it to "
    "every user of this machine; use --patient - (stdin) or --patient-file PATH"
)


def _reconcile_patient(args: argparse.Namespace) -> str | None:
    """The canonical key of the patient ``reconcile`` is limited to, or None: from ``--patient``
    (``-``: stdin's one line; a value: warned about, since argv is public on the machine) or from
    ``--patient-file``'s one line. A value that cannot be read or is no patient stops the command
    with one line naming the option, never the value."""
    if args.patient_file is not None:
        option = "--patient-file"
        try:
            text = Path(args.patient_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _StopCommand(
                f"{option}: cannot read {args.patient_file!r} ({type(exc).__name__})"
            ) from None
        value = _one_line(text, option, "in the file")
    elif args.patient == "-":
        option = "--patient"
        value = _one_line(sys.stdin.read(), option, "on stdin")
    elif args.patient:
        option = "--patient"
        print(PATIENT_IN_ARGV_WARNING, file=sys.stderr)
        value = args.patient
    else:
        return None
    from fhir_alliance.errors import InputError
    from fhir_alliance_service.usecases.consents import patient_key
    from fhir_alliance_service.usecases.decisions import parse_party

    try:
        # Filed under the canonical key: any spelling of the identifier names the patient.
        return patient_key(parse_party(value, path=option))
    except InputError:
        raise _StopCommand(f"{option}: expected Patient/<id> or system|value") from None


def _one_line(text: str, option: str, where: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise _StopCommand(f"{option}: no patient {where}")
    if len(lines) > 1:
        raise _StopCommand(f"{option}: expected one line (one patient) {where}")
    return lines[0]


def _subscribe(args: argparse.Namespace) -> int:
    """Register (or refresh) the rest-hook Subscription for consent changes on the FHIR server,
    notifying --endpoint; registering twice leaves one Subscription. Where the server offers no
    Subscription, say so: polling (the worker's pulls) is then the only way changes arrive, as it
    is the fallback everywhere. The key of --key-env is kept in the Subscription on the server,
    where whoever can read the Subscription reads it: it is checked against the store first, and
    one ``warning:`` line on stderr says so when it can do more than deliver notifications (a
    key of scope notify only is what it should be), when the service would refuse it, or when
    the store cannot be read to check it; the registration goes on. Exit 0 when registered, 1
    when not."""
    import os

    settings = _settings()
    header: list[str] = []
    if args.key_env:
        key = os.environ.get(args.key_env, "")
        if not key:
            raise _StopCommand(f"{args.key_env} is not set or empty")
        warning = _notification_key_warning(settings, args.key_env, key)
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
        header.append(f"Authorization: Bearer {key}")
    client = _client(settings)
    _configure_logging(settings)
    from fhir_alliance_service.sync.subscriptions import register_subscription

    try:
        result = register_subscription(client, args.endpoint, header=header)
    finally:
        _close(client)
    if args.json:
        print(
            json.dumps(
                {
                    "registered": result.registered,
                    "reason": result.reason,
                    "id": result.id,
                    "version_id": result.version_id,
                }
            )
        )
    elif result.registered:
        print(f"subscription Subscription/{result.id} registered; polling continues as well")
    else:
        print(f"not registered: {result.reason}; polling stays the only way changes arrive")
    return 0 if result.registered else 1


def _notification_key_warning(settings: Settings, variable: str, raw_key: str) -> str | None:
    """What is amiss with the key ``subscribe`` is about to store in the Subscription on the FHIR
    server: more than the ``notify`` scope, a key the notification endpoint would refuse, or a
    store that cannot be read to tell; None for a key of scope notify only. Names the key by its
    public id (as ``list-api-keys`` does), never the key or its secret."""
    from sqlalchemy.exc import SQLAlchemyError

    from fhir_alliance_service.auth import authenticate, grants

    advice = "use a key of scope notify (fhir-alliance create-api-key NAME --scope notify)"
    try:
        with _opened_key_store(settings) as store:
            # As the endpoint will check it: the Bearer value is stripped there too.
            key = authenticate(store, raw_key.strip())
    except (_StopCommand, SQLAlchemyError):  # not migrated, not there, not reachable from here
        return (
            f"the key in {variable} could not be checked: this service's store "
            f"({_database_url_variable()}) cannot be read here; the Subscription should carry a "
            "key of scope notify only"
        )
    if key is None:
        return (
            f"{variable} holds no API key this service accepts (unknown, revoked or mistyped): "
            f"every notification would be refused (401); {advice}"
        )
    described = f"the key in {variable} ({key.key_id}, scopes {', '.join(sorted(key.scopes))})"
    if not grants(key.scopes, "notify"):
        return f"{described} lacks notify: every notification would be refused (403); {advice}"
    if key.scopes != {"notify"}:
        return (
            f"{described} can do more than deliver notifications, yet the FHIR server keeps it in "
            f"clear in the Subscription for anyone who can read it there; {advice} instead, then "
            "revoke this one if nothing else uses it"
        )
    return None


def _close(client: Any) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()


# -- status and replay ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    """Counts of outbox items by state, the reasons items are held (of the oldest 10,000 held),
    items whose lost send may have landed and is not read back yet (landing unknown), the
    retraction checks noted in the store (all, and those due now), audit pushes pending and
    dead-lettered, the FHIR server's last contact and the FHIR version the
    worker maps to (FHIR_ALLIANCE_FHIR_VERSION when set, else what the server announced).
    ``--json``: the same as one object."""
    settings = _settings()
    from fhir_alliance_service.store.interface import AuditPushState, SyncState
    from fhir_alliance_service.sync.target import META_FHIR_VERSION, META_LAST_CONTACT

    with _opened_store(settings) as store:
        counts = store.counts_by_state()
        audit_push = store.audit_push_counts()
        held = Counter(
            status.held_reason or "(no reason recorded)"
            for status in store.list_by_state(SyncState.HELD, limit=HELD_REASONS_SCAN)
        )
        report: dict[str, Any] = {
            "counts": {state.value: counts.get(state, 0) for state in SyncState},
            "held_reasons": dict(held.most_common()),
            # Reasons are counted over the oldest HELD_REASONS_SCAN held items at most.
            "held_reasons_of": sum(held.values()),
            # Sends whose answer was lost that may have landed: read back by the workers.
            "landing_unknown": store.landing_unknown_count(),
            # Patients whose sends are owed a retraction check (a failed one, or one a worker
            # did not finish): due now, or leased (a check running, or its worker died).
            "retraction_checks": _retraction_checks(store),
            # Audit rows for the FHIR server (push_audit): waiting, and refused for good.
            "audit_push": {
                state.value: audit_push.get(state, 0)
                for state in (AuditPushState.PENDING, AuditPushState.DEAD_LETTERED)
            },
            "fhir_server": {
                "base_url": settings.fhir_base_url,
                "last_contact": store.get_meta(META_LAST_CONTACT),
                # what the worker maps to: the setting when given, else what the server announced
                "fhir_version": settings.fhir_version or store.get_meta(META_FHIR_VERSION),
                "fhir_version_from": "setting" if settings.fhir_version else "server",
            },
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(_counts_line(counts))
    if held:
        scanned = sum(held.values())
        more = counts.get(SyncState.HELD, 0) > scanned
        print(f"held{f' (reasons of the oldest {scanned})' if more else ''}:")
        for reason, count in held.most_common():
            print(f"  {count:6d}  {reason}")
    if report["landing_unknown"]:
        print(
            f"landing unknown: {report['landing_unknown']} (a lost send may have landed; "
            "the workers read it back)"
        )
    checks = report["retraction_checks"]
    if checks["pending"]:
        print(
            f"retraction checks pending: {checks['pending']} (due now {checks['due']}; the "
            "workers' next retraction pass makes them)"
        )
    if audit_push:
        pushes = report["audit_push"]
        print(f"audit pushes: pending {pushes['pending']}, dead-lettered {pushes['dead-lettered']}")
    server = report["fhir_server"]
    print(f"FHIR server: {server['base_url'] or '(not configured)'}")
    print(f"  last contact: {server['last_contact'] or 'never'}")
    if server["fhir_version"]:
        forced = " (FHIR_ALLIANCE_FHIR_VERSION)" if server["fhir_version_from"] == "setting" else ""
        print(f"  FHIR version: {server['fhir_version']}{forced}")
    return 0


def _retraction_checks(store: Store) -> dict[str, int]:
    pending = store.pending_retraction_checks(now=_now())
    return {"pending": pending.total, "due": pending.due}


def _counts_line(counts: dict[Any, int]) -> str:
    from fhir_alliance_service.store.interface import SyncState

    return ", ".join(f"{state.value} {counts.get(state, 0)}" for state in SyncState)


def _replay(args: argparse.Namespace) -> int:
    """Re-queue dead-lettered records after the cause is fixed: one (by record id, or by its
    business identifier ``system|value``) or ``--all``; ``--audit``: every dead-lettered audit
    push. Attempts start again at 0. A dead-lettered version of a record that has a newer version
    is superseded instead (sending it would overwrite the newer one): one line says so."""
    settings = _settings()
    if args.audit:
        with _opened_store(settings) as store:
            count = store.replay_audit_pushes()
        print(f"re-queued {count} dead-lettered audit push(es)")
        return 0
    record_id = None if args.all else _record_id(args.record)
    with _opened_store(settings) as store:
        if record_id is not None and store.get_record(record_id) is None:
            raise _StopCommand("no such record", status=1)
        replayed = store.replay(record_id, at=_now())
        for superseded_id, version, newest in replayed.superseded:
            print(
                f"record {superseded_id} version {version}: superseded by version {newest}, "
                "not re-queued (sending it would overwrite the newer version)"
            )
        if record_id is not None and not replayed.requeued:
            raise _StopCommand(_not_replayed(record_id, store.sync_status(record_id)), status=1)
    superseded = len(replayed.superseded)
    print(
        f"re-queued {replayed.requeued} dead-lettered item(s)"
        + (f"; superseded {superseded} by a newer version" if superseded else "")
    )
    return 0


def _resolve_conflict(args: argparse.Namespace) -> int:
    """Decide a conflict the conflict policy ``flag`` held for a person (someone else changed
    the record's resource on the FHIR server): ``--overwrite`` queues our version again, gated
    as any send and sent If-Match the server's version the conflict was flagged against (a
    change made since is flagged again); ``--keep-remote`` keeps the server's version, recorded
    as sent. Audited (by ``cli``). It prints the server versions it decided against;
    ``--against`` decides only if the record is still flagged against those (the status's
    ``conflict_versions``, the console's record page), and ``--record-version`` only if the
    conflict is still on that version of our record. Exit status 1, nothing changed, when the
    record has no flagged conflict, one against other versions or on another version of our
    record, or when the store holds no such record."""
    settings = _settings()
    from fhir_alliance_service.usecases.conflicts import (
        ConflictChanged,
        NotFlagged,
        ServerVersionsUnknown,
        decide_conflict,
        format_versions,
    )
    from fhir_alliance_service.usecases.status import RecordNotFound

    record_id = _record_id(args.record)
    against, record_version = args.against, args.record_version
    with _opened_store(settings) as store:
        try:
            if against is None or record_version is None:  # as flagged now, printed below
                status = store.sync_status(record_id)
                if against is None:
                    against = status.conflict_versions if status is not None else ()
                if record_version is None:
                    record_version = status.record_version if status is not None else 0
            found = decide_conflict(
                store,
                record_id,
                args.decision,
                against=against,
                record_version=record_version,
                decided_by="cli",
                at=_now(),
            )
        except RecordNotFound:
            raise _StopCommand("no such record", status=1) from None
        except NotFlagged:
            status = store.sync_status(record_id)
            state = "has no outbox item" if status is None else f"is {status.state.value}"
            raise _StopCommand(
                f"record {record_id} {state}, with no conflict flagged for a person to decide: "
                "nothing changed",
                status=1,
            ) from None
        except (ConflictChanged, ServerVersionsUnknown) as exc:
            raise _StopCommand(f"record {record_id}: {exc}", status=1) from None
    assert found.sync is not None
    print(
        f"record {record_id} version {found.sync.record_version}: {args.decision} decided "
        f"against {format_versions(against) or 'no noted server version'}; "
        f"{found.sync.state.value}"
    )
    return 0


def _not_replayed(record_id: str, status: Any) -> str:
    """Why ``replay RECORD_ID`` re-queued nothing: the state of the record's newest outbox item."""
    from fhir_alliance_service.store.interface import SyncState

    if status is None:
        return f"record {record_id} has no outbox item: nothing to re-queue"
    state: SyncState = status.state
    detail = ""
    if state is SyncState.HELD and status.held_reason:
        detail = f" ({status.held_reason})"
    elif state is SyncState.FAILED and status.next_attempt_at is not None:
        detail = f" (next attempt at {_when(status.next_attempt_at)})"
    return (
        f"record {record_id} is {state.value}{detail}, not dead-lettered "
        f"(version {status.record_version}): nothing to re-queue; replay takes dead-lettered "
        "records only"
    )


def _conflict_versions(given: str) -> Any:
    """``--against``: server versions as ``resolve-conflict`` prints them."""
    from fhir_alliance_service.usecases.conflicts import parse_versions

    try:
        return parse_versions(given)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _record_id(given: str) -> str:
    """A record id as given, or the id of a business identifier ``system|value``."""
    if "|" not in given:
        return given
    from fhir_alliance.mapping._ids import resource_id
    from fhir_alliance.model.common import Identifier

    system, _, value = given.partition("|")
    return resource_id(Identifier(system=system, value=value))


# -- API keys and the schema ---------------------------------------------------------------------


def _create_api_key(args: argparse.Namespace) -> int:
    """Create an API key with the given scopes and print it once on stdout; only its hash is
    stored, so it cannot be shown again. Names identify keys: a name (compared without case)
    that a key not revoked already has is refused; revoke that key first."""
    if not args.name.strip():
        # A bad argument, refused before the settings and the store as revoke-api-key's key id.
        raise _StopCommand("an API key needs a name")
    settings = _settings()
    from fhir_alliance_service.auth import create_api_key
    from fhir_alliance_service.store.interface import ApiKeyNameTaken

    with _opened_store(settings) as store:
        try:
            # The database refuses the name (a unique index on the names of keys not revoked),
            # so two runs at the same moment cannot both add it.
            raw_key = create_api_key(store, args.name, sorted(set(args.scopes)))
        except ApiKeyNameTaken as taken:
            raise _StopCommand(
                f"{taken}; revoke it first (fhir-alliance revoke-api-key {taken.key_id}) or "
                "choose another name"
            ) from None
        except ValueError as exc:  # an argument create_api_key refuses: exit 2, as argparse's
            raise _StopCommand(str(exc)) from None
    print(raw_key)
    print(
        f"created API key {args.name!r} with scopes {', '.join(sorted(set(args.scopes)))}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


#: What ``list-api-keys`` and ``revoke-api-key`` accept as a key id (never a whole key).
_KEY_ID_SHAPE = "fa_ followed by hex digits"


def _list_api_keys(args: argparse.Namespace) -> int:
    """List every API key, revoked ones too, oldest first: its id (the public part of the key,
    ``fa_<hex>``), name, scopes, when it was created and when it was revoked. Never the secret
    or its hash."""
    settings = _settings()
    with _opened_key_store(settings) as store:
        keys = store.list_api_keys()
    if args.json:
        listing = [
            {
                "key_id": key.key_id,
                "name": key.name,
                "scopes": sorted(key.scopes),
                "created_at": key.created_at.isoformat(),
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key in keys
        ]
        print(json.dumps(listing, indent=2))
        return 0
    if not keys:
        print("no API keys (fhir-alliance create-api-key NAME --scope S creates one)")
        return 0
    rows = [
        (
            key.key_id,
            ",".join(sorted(key.scopes)),
            _when(key.created_at),
            _when(key.revoked_at) if key.revoked_at else "-",
            key.name,
        )
        for key in keys
    ]
    header = ("KEY ID", "SCOPES", "CREATED", "REVOKED", "NAME")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print("  ".join([*cells, row[4]]))
    return 0


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _revoke_api_key(args: argparse.Namespace) -> int:
    """Revoke an API key by its id (``fa_<hex>``, as ``list-api-keys`` shows; never the whole
    key). A running service stops accepting it within FHIR_ALLIANCE_API_KEY_CACHE_SECONDS.
    Revoking a key that is already revoked changes nothing and exits 0."""
    import re

    from fhir_alliance_service.auth import parse_api_key

    given = args.key_id.strip()
    if parse_api_key(given) is not None:
        # A whole key: never echo it (its secret), and do not take it from the command line.
        raise _StopCommand(
            "give the key's id (fa_<hex>, the part before the second '_'; list-api-keys shows "
            "it), not the whole key"
        )
    if not re.fullmatch(r"fa_[0-9a-f]+", given):
        raise _StopCommand(
            f"not an API key id: expected {_KEY_ID_SHAPE} (list-api-keys shows them)"
        )
    settings = _settings()
    with _opened_key_store(settings) as store:
        key = store.find_api_key(given)
        if key is None:
            raise _StopCommand(f"no API key {given} (list-api-keys shows the keys)")
        revoked = key.revoked_at is None and store.revoke_api_key(given, at=_now())
        if not revoked:
            key = store.find_api_key(given) or key
    if not revoked:
        when = f" at {_when(key.revoked_at)}" if key.revoked_at else ""
        print(f"API key {key.key_id} ({key.name!r}) was already revoked{when}; nothing changed")
        return 0
    print(
        f"revoked API key {key.key_id} ({key.name!r}); running services stop accepting it within "
        f"FHIR_ALLIANCE_API_KEY_CACHE_SECONDS ({settings.api_key_cache_seconds:g} s)"
    )
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    """Create the store, or migrate it to the newest schema (Alembic); a second run changes
    nothing. The only command that creates a SQLite database file (never its folder). A database
    a newer release has upgraded is refused: no release migrates a database back."""
    settings = _settings()
    from fhir_alliance_service.store import SchemaVersionError, current_revision, upgrade
    from fhir_alliance_service.store.interface import ApiKeyNamesShared

    before = current_revision(settings.database_url)
    try:
        upgrade(settings.database_url)
    except (ApiKeyNamesShared, SchemaVersionError) as exc:
        raise _StopCommand(str(exc)) from None
    after = current_revision(settings.database_url)
    if before == after:
        print(f"database already at the newest revision {after}")
    else:
        print(f"database upgraded from {before or 'empty'} to {after}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    """Print the schema revision in use. Exit status 1 when it is not the newest (also for a
    revision of a newer release, and for a SQLite file that is not there, which it does not
    create)."""
    settings = _settings()
    from fhir_alliance_service.store import current_revision, head_revision
    from fhir_alliance_service.store.schema import is_known_revision, missing_sqlite_file

    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        print(f"empty (no database at {missing}; db upgrade creates one)")
        return 1
    current, head = current_revision(settings.database_url), head_revision()
    if current == head:
        note = "newest"
    elif current is not None and not is_known_revision(current):
        note = f"not known to this release, whose newest is {head}"
    else:
        note = f"newest is {head}"
    print(f"{current or 'empty'} ({note})")
    return 0 if current == head else 1


def _db_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the SQLite store in the new file DEST (readable by its owner only),
    made while serve and worker keep running; restore by stopping them and putting the copy in
    the database's place. PostgreSQL: use pg_dump. See docs/service.md, Backups."""
    settings = _settings()
    from fhir_alliance_service.store.backup import BackupError, backup_sqlite

    try:
        result = backup_sqlite(settings.database_url, args.destination)
    except BackupError as exc:
        raise _StopCommand(str(exc)) from None
    print(
        f"backed up the store to {result.destination} "
        f"({result.pages} pages, {result.size_bytes / 1e6:.1f} MB; integrity check ok)"
    )
    return 0


# -- load ----------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> int:
    """Bulk intake of record files: ``.json`` (one record or a list) and ``.ndjson``/``.jsonl``
    (one a line), in batches of ``--batch-size`` through the same intake as the API. A bad record
    is reported as ``file:line`` with its field paths, and its whole batch stores nothing; the
    other batches go on. A line that is not JSON counts as a bad record of its batch (reported
    as ``file:line``; the batch's records read before it store nothing) and the rest of that
    file is not read; the file's earlier batches and the other files load. A record id repeated
    in a file is a bad record whatever the batch size. The SQLite write turn not obtained in time
    ends the load: the summary, then one ``error:`` line naming the batch (which wrote nothing),
    exit 1. Ctrl-C: the summary on stderr before ``interrupted``. Exit status 0 only when every
    record loaded."""
    if args.batch_size < 1:
        raise _StopCommand("--batch-size must be at least 1")
    settings = _settings()
    from fhir_alliance_service.cli_load import LoadSummary, load_files

    summary = LoadSummary()
    try:
        with _opened_store(settings) as store:
            load_files(store, args.files, batch_size=args.batch_size, summary=summary)
    except KeyboardInterrupt:
        print(summary.describe_interrupted(), file=sys.stderr)  # the earlier batches are stored
        raise
    print(summary.describe())
    if summary.stopped:
        raise _StopCommand(summary.stopped, status=1)
    return 0 if summary.complete else 1
