"""The ``fhir-alliance`` command: one entry point, subcommands registered by modules and plugins.

The library's own subcommands (``map``, ``decide``, ``check``) live beside the code they drive.
Other distributions (the sync service) add theirs through the ``fhir_alliance.commands`` entry-point
group, the way Flask discovers ``flask.commands``: each entry point names a callable
``register(subparsers)`` that adds one or more sub-parsers and sets ``handler`` on them.
A handler takes the parsed ``argparse.Namespace`` and returns the process exit code.

While a command runs, the library's warnings (a retried request, an ``$import`` left running) are
printed on stderr as ``warning: <message>``: the library itself only has a ``NullHandler``, so that
applications embedding it print nothing they did not ask for. So are those of the package whose
command runs (the sync service's ``fhir_alliance_service`` for its commands), found by the
handler's module, never by name. Other packages' warnings that Python would print as bare lines
(SQLAlchemy's through the ``warnings`` module or its loggers, for one) come out as
``warning: <category>: <message>``, one line each. A command that sets up logging of its own (the
service's JSON log lines) has them all there instead, never twice.

A reader that stops reading early (``fhir-alliance map … | head -c 10``) ends the command quietly
with exit status 141 (:data:`EXIT_BROKEN_PIPE`), what a shell shows for a tool that SIGPIPE
ended, as Python's "Note on SIGPIPE" describes: no traceback, nothing on stderr. Everything else a
command writes to stdout reaches the reader whole, also under ``PYTHONUNBUFFERED`` and into a
non-blocking pipe (:func:`fhir_alliance.stdout.stdout_writing_everything`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any, TextIO

from fhir_alliance.errors import FhirAllianceError
from fhir_alliance.stdout import stdout_writing_everything

__all__ = ["ENTRY_POINT_GROUP", "EXIT_BROKEN_PIPE", "build_parser", "main"]

ENTRY_POINT_GROUP = "fhir_alliance.commands"
#: Exit status when the command's output went to a pipe whose reader stopped reading (128 + 13,
#: SIGPIPE: what a shell shows for ``yes | head -1``'s ``yes``), as 130 is for Ctrl-C.
EXIT_BROKEN_PIPE = 141

#: Subcommands that ship with the library: name → (one-line help, ``module:function`` registering
#: it). The module is imported only when its command runs: ``fhir-alliance --help`` lists the names
#: and help from here, so start-up does not pay for the FHIR client, fhir.resources or the engine.
#: A test checks that each help line is the one its module registers.
_BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "map": (
        "convert our JSON records to FHIR resources and back",
        "fhir_alliance.mapping.cli:register",
    ),
    "export": (
        "write records as FHIR Bulk Data NDJSON files plus a manifest, gated by consent",
        "fhir_alliance.mapping.bulk:register",
    ),
    "push": (
        "send export --bulk files to a FHIR server: $import where offered, else transactions",
        "fhir_alliance.bulk_push:register",
    ),
    "decide": (
        "decide a request against consents (FHIR R4/R5 or our JSON); LEAP-compatible",
        "fhir_alliance.consent.cli:register",
    ),
    "check": (
        "check a FHIR server: capabilities and a tagged create/search/update/delete round trip",
        "fhir_alliance.check:register",
    ),
}

Register = Callable[[Any], None]


def _load(target: str) -> Register:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    register: Register = getattr(module, attr)
    return register


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word not starting with ``-``), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: a built-in command named there is loaded fully, the others only
    listed (name and help); plugins' commands are loaded unless a built-in command is named.
    Without ``argv`` every command is loaded fully."""
    parser = argparse.ArgumentParser(
        prog="fhir-alliance",
        description="Therapeutic-alliance measures and consents over FHIR.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else _command_in(argv)
    for name, (help_text, target) in _BUILTIN_COMMANDS.items():
        if argv is not None and name != chosen:
            subparsers.add_parser(name, help=help_text, add_help=False)
            continue
        try:
            register = _load(target)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name and target.startswith(exc.name):
                continue
            raise
        register(subparsers)
    if chosen is None or chosen not in _BUILTIN_COMMANDS:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()(subparsers)
    return parser


#: The logger of warnings issued through the ``warnings`` module while a command runs (the one
#: ``logging.captureWarnings`` uses, so that logging set up for it applies).
_WARNINGS_LOGGER = "py.warnings"


class _WarningsOnStderr(logging.Handler):
    """The warnings and errors of the process on stderr while a command runs, one line each,
    unless another handler is on the record's way up (the root logger's included: logging the
    process set up itself, such as the service's JSON lines or a test's capture), which then has
    them alone. Attached to the root logger.

    * The library's and those of the package whose command runs (``own``: the sync service's
      ``fhir_alliance_service`` for its commands): ``warning: <message>``, ``error: <message>``;
      their log messages carry no patient data. Their ``NullHandler`` (the library only has
      one, so that applications embedding it print nothing they did not ask for) is no handler.
    * Any other package's (SQLAlchemy's pool, for one): ``warning: <logger>: <message>``, and
      those of the ``warnings`` module (see :func:`_warning_as_record`): ``warning: <category>:
      <message>``; one line (line breaks become spaces). Only where nothing would have printed
      them but Python's last resort: a package that put a ``NullHandler`` on its logger
      (urllib3, Alembic) asked for silence, which the command keeps.

    The message only, never a traceback (a traceback can quote data). Written to ``sys.stderr``
    as it is at each record, as Python's last-resort handler does."""

    def __init__(self, own: Sequence[str]) -> None:
        super().__init__(logging.WARNING)
        self._own = tuple(own)

    def emit(self, record: logging.LogRecord) -> None:
        own = self._is_own(record.name)
        if self._handled_elsewhere(record.name, null_counts=not own):
            return
        try:
            message = record.getMessage()
            if not own:
                if record.name != _WARNINGS_LOGGER:  # a warning's message names its category
                    message = f"{record.name}: {message}"
                message = " ".join(message.splitlines())
            sys.stderr.write(f"{record.levelname.lower()}: {message}\n")
            sys.stderr.flush()
        except Exception:  # logging must not fail the command (as in logging.StreamHandler)
            self.handleError(record)

    def _is_own(self, name: str) -> bool:
        return any(name == package or name.startswith(f"{package}.") for package in self._own)

    def _handled_elsewhere(self, name: str, *, null_counts: bool) -> bool:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            if any(
                h is not self and (null_counts or not isinstance(h, logging.NullHandler))
                for h in logger.handlers
            ):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


def _command_packages(handler: Callable[[argparse.Namespace], int]) -> list[str]:
    """The library's top package and the one the command's handler comes from (a plugin's, such
    as the sync service's ``fhir_alliance_service``): whose warnings are the command's own."""
    package = (getattr(handler, "__module__", None) or "").partition(".")[0]
    return list(dict.fromkeys(["fhir_alliance", package] if package else ["fhir_alliance"]))


def _warning_as_record(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` while a command runs: a warning Python's filters let through
    (once per place by default) becomes a record of :data:`_WARNINGS_LOGGER`, ``<category>:
    <message>``, without the file, line number and source line Python prints. So it goes where
    the command's log records go: one ``warning:`` line, or the JSON log alone."""
    logging.getLogger(_WARNINGS_LOGGER).warning("%s: %s", category.__name__, message)


@contextmanager
def _warnings_on_stderr(own: Sequence[str]) -> Iterator[None]:
    """The warnings of the process on stderr while a command runs (see
    :class:`_WarningsOnStderr`), those of the ``warnings`` module included."""
    handler = _WarningsOnStderr(own)
    root = logging.getLogger()
    root.addHandler(handler)
    shown_before = warnings.showwarning
    warnings.showwarning = _warning_as_record
    try:
        yield
    finally:
        if warnings.showwarning is _warning_as_record:  # unless the command replaced it itself
            warnings.showwarning = shown_before
        root.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            with stdout_writing_everything():
                return _main(argv)
        finally:
            # What is still buffered goes now, so that a closed pipe shows here and not in
            # Python's last flush at exit ("Exception ignored … BrokenPipeError", exit 120).
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): Python ignores SIGPIPE, so a write failed instead of
        # the process ending. What is unwritten is discarded, as the signal would have done.
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at the null device, so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # no file behind stdout (a test's capture): nothing to flush
        pass


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    with _warnings_on_stderr(_command_packages(handler)):
        return _run(handler, args)


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        code: int = handler(args)
    except FhirAllianceError as exc:
        # Messages of our errors never carry patient data; issues carry field paths.
        lines = [f"{issue.path or '(root)'}: {issue.message}" for issue in exc.issues]
        if len(lines) > 1 and all(line in exc.message for line in lines):
            # An InputError's message lists its issues on one line: one per line reads better.
            print(f"error: invalid input at {len(lines)} places", file=sys.stderr)
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        for line in lines:
            if len(lines) > 1 or line not in exc.message:
                print(f"  {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: the command has said what it left undone (a cancelled $import, the check's
        # leftovers) before letting it through; one line, not a traceback, and the shell's 130.
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
