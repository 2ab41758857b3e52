"""``fhir-alliance serve``: the Flask app under gunicorn (never the development server), embedded
through ``gunicorn.app.base.BaseApplication`` so that gunicorn reads no command line and no config
file of its own: bind and workers come from the settings (or ``--bind`` / ``--workers``); each
worker process runs ``threads`` threads (gunicorn's ``gthread`` worker, keep-alive; the setting
``web_threads`` by default).

Each gunicorn worker process builds its own app with ``create_app(settings)`` after the fork, so
no database connection is shared between processes. The access log is off: request paths may
carry a patient reference (``/v1/patients/{ref}/…``); the app logs requests itself without PHI.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.glogging import Logger

if TYPE_CHECKING:
    from flask import Flask

    from fhir_alliance_service.config import Settings

__all__ = [
    "JsonGunicornLogger",
    "RequestTextFilter",
    "ServiceApplication",
    "boot_failure",
    "gunicorn_options",
    "serve",
]

#: Settings only newer gunicorn releases know; skipped on older ones.
_NEWER_SETTINGS = frozenset({"control_socket_disable"})
#: gunicorn's graceful timeout: how long a worker may finish its requests after SIGTERM.
GRACEFUL_TIMEOUT_SECONDS = 20


class JsonGunicornLogger(Logger):
    """gunicorn's logger, its error log written by the service's ``JsonFormatter``: one JSON object
    a line (``time``, ``level``, ``logger``, ``message``; an exception by its type only, never a
    traceback) instead of gunicorn's ``[time] [pid] [LEVEL] message`` text. The master sets it up
    (again on SIGHUP); the workers it forks inherit its handlers. The access log stays off."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        from fhir_alliance_service.logs import JsonFormatter

        formatter = JsonFormatter()
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)


def gunicorn_options(
    settings: Settings, *, bind: str, workers: int, threads: int | None = None
) -> dict[str, Any]:
    """The gunicorn settings ``serve`` uses (the benchmarks run their baseline with the same):
    ``threads`` per worker process, ``settings.web_threads`` when not given."""
    return {
        "bind": [bind],
        "workers": workers,
        # Threaded workers keep client connections alive and overlap SQLite commits with request
        # parsing: 3x the intake rate of sync workers (benchmarks/bench_service_intake.py).
        "worker_class": "gthread",
        "threads": settings.web_threads if threads is None else threads,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "errorlog": "-",
        # gunicorn's own lines (master and workers) as JSON, like the service's.
        "logger_class": JsonGunicornLogger,
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "proc_name": "fhir-alliance",
        # gunicorn >= 25 opens a control socket at one fixed path per user; two services (or a
        # service and a benchmark) on one machine would fight over it. Nothing here uses it.
        "control_socket_disable": True,
        # Body size is capped by the app (max_body_bytes); gunicorn caps header lines itself.
    }


class RequestTextFilter(logging.Filter):
    """Keeps request text out of gunicorn's own log lines. gunicorn quotes a request line it cannot
    parse ("Invalid request from ip=…: Invalid HTTP request line: 'GET /v1/patients/…'") and names
    the URI of a request that failed outside the app; paths carry patient references. Such lines
    are kept, without the request's text and without the exception's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Invalid request from ip="):
            record.msg = "invalid HTTP request refused (its text is not logged)"
        elif message.startswith("Error handling request"):
            kind = record.exc_info[0] if record.exc_info else None
            record.msg = "error handling a request outside the app" + (
                f" ({kind.__name__})" if kind is not None else ""
            )
        else:
            return True
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def keep_request_text_out_of_gunicorn_logs() -> None:
    """Install :class:`RequestTextFilter` on gunicorn's error log (once per process)."""
    error_log = logging.getLogger("gunicorn.error")
    if not any(isinstance(f, RequestTextFilter) for f in error_log.filters):
        error_log.addFilter(RequestTextFilter())


#: A setting's name at the start of a ``ConfigError``'s text (the rest may quote its value).
_SETTING_NAME = re.compile(r"FHIR_ALLIANCE_[A-Z0-9_]+")
#: A module's dotted name, as ``ImportError.name`` gives it.
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def boot_failure(error: BaseException) -> tuple[str, dict[str, str]]:
    """The log line (message and ``extra`` fields) for a worker whose app could not be built:
    a fixed message for the kind of error, with the setting to look at where it is known
    (``setting``) and the exception's type (``error_type``). Never the exception's text, which
    may quote a value, a path or a row."""
    fields = {"error_type": type(error).__name__}
    prefix = "worker failed to boot: "
    if isinstance(error, ImportError):  # first: the imports below may be what is missing
        module = error.name if error.name and _MODULE_NAME.fullmatch(error.name) else None
        which = f"module {module}" if module else "a module"
        return (
            prefix + f"{which} cannot be imported (is fhir-alliance installed with its "
            "'service' extra, in the environment serve runs in?)",
            fields,
        )
    from sqlalchemy.exc import SQLAlchemyError

    from fhir_alliance_service.config import ConfigError
    from fhir_alliance_service.store.engine import WriterTurnTimeout
    from fhir_alliance_service.store.schema import SchemaVersionError

    if isinstance(error, ConfigError):
        named = _SETTING_NAME.match(str(error))
        if named is None:
            return prefix + "a setting is wrong", fields
        fields["setting"] = named[0]
        return prefix + f"the setting {named[0]} is wrong", fields
    if isinstance(error, SchemaVersionError):
        fields["setting"] = "FHIR_ALLIANCE_DATABASE_URL"
        return (
            prefix + "the database's schema is not the one this code expects "
            '(run "fhir-alliance db upgrade" with this version)',
            fields,
        )
    if isinstance(error, SQLAlchemyError | WriterTurnTimeout):
        fields["setting"] = "FHIR_ALLIANCE_DATABASE_URL"
        return prefix + "the database cannot be used", fields
    code = errno.errorcode.get(error.errno) if isinstance(error, OSError) and error.errno else None
    if code is not None:
        return prefix + f"an operating system error ({code})", fields
    return (
        prefix + "building the app failed (the error's text is not logged: it may quote data)",
        fields,
    )


class ServiceApplication(BaseApplication):
    """A gunicorn application whose app comes from a factory called in each worker. A factory that
    fails ends the worker as gunicorn does on a boot error (exit status 3, after which the master
    stops), with one JSON line from :func:`boot_failure` instead of gunicorn's plain line with
    the exception's text."""

    def __init__(self, factory: Any, options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            if name in _NEWER_SETTINGS and name not in self.cfg.settings:
                continue  # an older gunicorn without this setting
            self.cfg.set(name, value)

    def load(self) -> Any:  # a Flask app; gunicorn's stubs type WSGI apps narrower than Flask's
        keep_request_text_out_of_gunicorn_logs()  # in each worker, where requests are parsed
        try:
            app: Flask = self._factory()
        except Exception as error:
            # gunicorn would log "Exception in worker process" and then print str(error) on
            # stderr as it is: a plain line that may quote data. SystemExit passes through
            # gunicorn untouched; its master reads status 3 as "Worker failed to boot." and stops.
            message, fields = boot_failure(error)
            logging.getLogger("gunicorn.error").error(message, extra=fields)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        return app


def serve(settings: Settings, *, bind: str, workers: int, threads: int | None = None) -> int:
    """Run gunicorn in the foreground until it is stopped (SIGTERM / SIGINT: graceful)."""

    def service_app() -> Flask:
        from fhir_alliance_service.app import create_app
        from fhir_alliance_service.logs import configure_logging

        configure_logging(settings.log_level)
        return create_app(settings)

    options = gunicorn_options(settings, bind=bind, workers=workers, threads=threads)
    try:
        ServiceApplication(service_app, options).run()
    except HaltServer as halted:
        # gunicorn's master, stopping because a worker failed to boot, can meet the next
        # worker's boot failure while it reaps them on the way out: it then lets HaltServer
        # escape (a plain traceback, exit 1) instead of exiting with the status it names.
        # The lines gunicorn's halt writes when it is not interrupted.
        log = logging.getLogger("gunicorn.error")
        log.info("Shutting down: Master")
        log.error("Reason: %s", halted.reason)
        return int(halted.exit_status)
    return 0
