"""The service's own warnings while one of its commands runs: as ``warning: <message>`` lines on
stderr, as the library's are, in the commands that set up no logging (``status``, ``load``, …);
only as JSON lines in those that do (``sync-once``, …); never twice, never a traceback. Each
command runs as a real process: in this one, pytest's handlers on the root logger would have
the records."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from fhir_alliance import cli

pytestmark = pytest.mark.usefixtures("database")

RUPTURE = Path(__file__).resolve().parents[2] / "examples" / "observations" / "rupture.json"
WARNING = "a service warning during load"


def _python(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_load_shows_a_service_warning_as_a_warning_line() -> None:
    """A service module warns while ``load`` runs (here from inside the store's write call).
    ``load`` sets up no logging, so Python's last-resort handler printed the bare message; it is
    one ``warning:`` line, as for the library's warnings."""
    ran = _python(
        f"""
        import logging, sys
        from fhir_alliance_service.store.sql import SqlStore
        from fhir_alliance.cli import main

        put_records = SqlStore.put_records

        def with_a_service_warning(self, records, **kwargs):
            logging.getLogger("fhir_alliance_service.usecases.intake").warning("{WARNING}")
            return put_records(self, records, **kwargs)

        SqlStore.put_records = with_a_service_warning
        sys.exit(main(["load", {str(RUPTURE)!r}]))
        """
    )
    assert ran.returncode == 0, ran.stderr
    assert "loaded 1 record(s)" in ran.stdout
    assert ran.stderr.splitlines() == [f"warning: {WARNING}"]


def test_a_service_error_with_its_exception_is_one_line_without_the_traceback() -> None:
    """``log.exception`` in a service module during ``status``: ``error: <message>`` and no
    traceback. Python's last-resort handler printed the bare message and then the traceback,
    with the exception's text (which can quote data: here a patient reference)."""
    ran = _python(
        """
        import logging, sys
        import fhir_alliance_service.cli as service_cli
        from fhir_alliance.cli import main

        status = service_cli._status

        def status_with_an_error(args):
            try:
                raise ValueError("Patient/secret-7 not shown")
            except ValueError:
                logging.getLogger("fhir_alliance_service.sync").exception("a step failed")
            return status(args)

        service_cli._status = status_with_an_error
        sys.exit(main(["status"]))
        """
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("queued 0")
    assert ran.stderr.splitlines() == ["error: a step failed"]
    assert "secret-7" not in ran.stderr


def test_a_command_with_json_logs_has_the_service_warnings_there_alone() -> None:
    """``sync-once`` against a FHIR server that is down: its warnings (the library's retries and
    the service's "FHIR server unreachable") are JSON lines, never also ``warning:`` lines."""
    env = dict(os.environ)
    env["FHIR_ALLIANCE_FHIR_BASE_URL"] = f"http://127.0.0.1:{_closed_port()}/fhir"
    env["FHIR_ALLIANCE_FHIR_TIMEOUT_SECONDS"] = "1"
    ran = subprocess.run(
        [sys.executable, "-m", "fhir_alliance", "sync-once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert ran.returncode == 1, ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.startswith("{")]
    service = [
        json.loads(line)
        for line in lines
        if json.loads(line)["logger"].startswith("fhir_alliance_service")
    ]
    assert any(line["level"] == "WARNING" for line in service), ran.stderr
    assert "warning:" not in ran.stderr


def test_the_command_removes_its_handler_from_the_service_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a service command the service's logger, the root logger and ``warnings`` are as
    before: nothing of the command's stays behind for the rest of the process."""
    service = logging.getLogger("fhir_alliance_service")
    before = list(service.handlers)
    root_before = list(logging.getLogger().handlers)
    shown_before = warnings.showwarning
    assert cli.main(["status"]) == 0
    capsys.readouterr()
    assert service.handlers == before
    assert logging.getLogger().handlers == root_before
    assert warnings.showwarning is shown_before


#: Code for a program: ``cartesian()`` makes SQLAlchemy warn through ``warnings`` (its
#: from-linter: a SELECT over two tables without a join, ``SAWarning``); ``refused_reset()`` makes
#: its pool log an error with the exception (a connection that fails to reset on its return, the
#: exception's text quoting a reference): both from SQLAlchemy's own code.
THIRD_PARTY = """
    import os, tempfile
    from sqlalchemy import Column, Integer, MetaData, Table, create_engine, event, select, text

    metadata = MetaData()
    a = Table("a", metadata, Column("x", Integer))
    b = Table("b", metadata, Column("y", Integer))
    engine = create_engine("sqlite://")
    metadata.create_all(engine)

    def cartesian():
        with engine.connect() as connection:
            connection.execute(select(a.c.x, b.c.y)).all()

    pooled = create_engine("sqlite:///" + os.path.join(tempfile.mkdtemp(), "pool.db"))

    @event.listens_for(pooled, "reset")
    def refuse(dbapi_connection, record, reset_state):
        raise RuntimeError("Patient/secret-9 not shown")

    def refused_reset():
        with pooled.connect() as connection:
            connection.execute(text("SELECT 1"))
"""
#: The SAWarning's text, around the tables' names (in either order: SQLAlchemy walks a set).
SA_WARNING = re.compile(
    r'SAWarning: SELECT statement has a cartesian product between FROM element\(s\) "[ab]" and '
    r'FROM element "[ab]"\.  Apply join condition\(s\) between each element to resolve\.'
)
POOL_ERROR = "sqlalchemy.pool.impl.QueuePool: Exception during reset or similar"


def _python_file(
    tmp_path: Path, program: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``program`` from a file, so that Python's own warning output would quote its source
    lines."""
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(program), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_third_party_warnings_are_one_line_each_without_json_logs(tmp_path: Path) -> None:
    """During ``status`` (no JSON logs) SQLAlchemy warns through ``warnings`` (twice from one
    place) and its pool logs an error with its exception: one line each, ``warning:
    <category>: <message>`` and ``error: <logger>: <message>``, with no file, line, source or
    traceback, nothing twice. Python printed ``file:line: SAWarning: …`` with the source line
    under it, and the pool's bare message with the traceback and the exception's text."""
    ran = _python_file(
        tmp_path,
        THIRD_PARTY
        + """
    import sys
    import fhir_alliance_service.cli as service_cli
    from fhir_alliance.cli import main

    status = service_cli._status

    def status_with_third_party_warnings(args):
        cartesian()
        cartesian()  # the same warning from the same place: shown once, as Python does
        refused_reset()
        return status(args)

    service_cli._status = status_with_third_party_warnings
    sys.exit(main(["status"]))
    """,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("queued 0")
    lines = ran.stderr.splitlines()
    assert len(lines) == 2, ran.stderr
    assert lines[0].startswith("warning: ") and SA_WARNING.fullmatch(lines[0][9:]), lines
    assert lines[1] == f"error: {POOL_ERROR}"
    assert "secret-9" not in ran.stderr


def test_third_party_warnings_go_into_the_json_logs_alone(tmp_path: Path) -> None:
    """The same during ``sync-once`` (JSON logs, the FHIR server down): JSON lines alone (the
    ``warnings`` one under the logger ``py.warnings``, ``<category>: <message>``), no
    ``warning:`` line and no line of Python's own. The SAWarning came out as Python's two lines
    beside the JSON."""
    ran = _python_file(
        tmp_path,
        THIRD_PARTY
        + """
    import sys
    from fhir_alliance_service.sync import worker
    from fhir_alliance.cli import main

    sync_once = worker.sync_once

    def sync_once_with_third_party_warnings(*args, **kwargs):
        cartesian()
        refused_reset()
        return sync_once(*args, **kwargs)

    worker.sync_once = sync_once_with_third_party_warnings
    sys.exit(main(["sync-once"]))
    """,
        env={
            **os.environ,
            "FHIR_ALLIANCE_FHIR_BASE_URL": f"http://127.0.0.1:{_closed_port()}/fhir",
        },
    )
    assert ran.returncode == 1, ran.stderr  # the FHIR server is down
    lines = [line for line in ran.stderr.splitlines() if not line.startswith("error: ")]
    logged = [json.loads(line) for line in lines]  # every other line is JSON
    warned = [line for line in logged if line["logger"] == "py.warnings"]
    assert len(warned) == 1 and warned[0]["level"] == "WARNING", warned
    assert SA_WARNING.fullmatch(warned[0]["message"]), warned
    pool = [line for line in logged if line["logger"] == "sqlalchemy.pool.impl.QueuePool"]
    assert [(line["level"], line["message"], line["error_type"]) for line in pool] == [
        ("ERROR", "Exception during reset or similar", "RuntimeError")
    ]
    assert "warning:" not in ran.stderr and "secret-9" not in ran.stderr
