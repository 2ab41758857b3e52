"""``serve`` when a gunicorn worker cannot build the app: every line it writes is still JSON, the
worker's line names the kind of error (and the setting to look at) but never the exception's
text, and serve stops with gunicorn's boot-error status 3."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
from fhir_alliance_service.cli_serve import boot_failure
from fhir_alliance_service.config import ConfigError
from fhir_alliance_service.store import SchemaVersionError
from sqlalchemy.exc import OperationalError

#: Runs ``fhir-alliance`` with ``fhir_alliance_service.app.<FUNCTION>`` raising ``ERROR``, so that
#: the master's checks pass and each worker fails while building the app (after the schema check
#: when FUNCTION is ``register_console``).
_FAILING_SERVE = """
import sys
import fhir_alliance_service.app as app
from fhir_alliance_service.config import ConfigError

def failing(*args, **kwargs):
    raise {error}

setattr(app, {function!r}, failing)
{extra}
from fhir_alliance.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: What the injected errors say; none of it may reach the output.
PATIENT_TEXT = "Patient/mrn-4711 (Jane Doe, born 1961-04-02)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: gunicorn's race, made certain: the master, stopping for one worker's boot failure, meets the
#: other's while it reaps them (``HaltServer`` escapes ``Arbiter.stop``; seen about once in five
#: runs of two failing workers).
_REAP_RACE = """
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
_stop = Arbiter.stop

def stop(self, graceful=True):
    _stop(self, graceful)
    raise HaltServer("Worker failed to boot.", self.WORKER_BOOT_ERROR)

Arbiter.stop = stop
"""


def _serve_failing(
    database: str, function: str, error: str, *, extra: str = ""
) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``serve --workers 2`` whose workers fail to boot
    (``extra``: more code run before the command)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env["FHIR_ALLIANCE_DATABASE_URL"] = database
    script = _FAILING_SERVE.format(function=function, error=error, extra=extra)
    bind = f"127.0.0.1:{_free_port()}"
    result = subprocess.run(
        [sys.executable, "-c", script, "serve", "--bind", bind, "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout, result.stderr


def _json_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for text in output.splitlines():
        line = json.loads(text)  # a plain line fails here
        assert isinstance(line, dict), text
        assert {"time", "level", "logger", "message"} <= line.keys(), text
        lines.append(line)
    return lines


def test_a_worker_failing_to_boot_writes_json_lines_only_without_the_errors_text(
    database: str,
) -> None:
    """The app's factory fails in each worker with an error quoting patient data: serve exits 3;
    every stdout and stderr line is JSON (gunicorn's, Alembic's schema check in the worker, the
    worker's failure); the failure names its type, not its text; no traceback."""
    error = f"RuntimeError({PATIENT_TEXT!r})"
    status, out, err = _serve_failing(database, "register_console", error)
    assert status == 3, err
    assert out == ""
    assert PATIENT_TEXT not in err and "mrn-4711" not in err and "Jane Doe" not in err
    assert "Traceback" not in err
    lines = _json_lines(err)
    failures = [line for line in lines if line["message"].startswith("worker failed to boot")]
    assert failures, err
    for line in failures:
        assert line["level"] == "ERROR"
        assert line["error_type"] == "RuntimeError"
        assert line["message"] == (
            "worker failed to boot: building the app failed (the error's text is not logged: "
            "it may quote data)"
        )
    assert not any(line["message"] == "Exception in worker process" for line in lines)
    said = {line["message"] for line in lines}
    assert "Reason: Worker failed to boot." in said
    # Alembic's INFO lines from the worker's schema check are JSON lines too.
    alembic = [line for line in lines if line["logger"].startswith("alembic")]
    assert alembic, err
    assert all(line["level"] == "INFO" for line in alembic)


def test_a_worker_failing_on_a_setting_names_the_setting_not_its_value(database: str) -> None:
    """A ConfigError in the worker: the JSON line names the setting (``setting`` and message),
    never the value or path the error quotes."""
    error = f"ConfigError({'FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE: cannot read ' + PATIENT_TEXT!r})"
    status, out, err = _serve_failing(database, "create_app", error)
    assert status == 3, err
    assert out == ""
    assert "mrn-4711" not in err
    failures = [
        line for line in _json_lines(err) if line["message"].startswith("worker failed to boot")
    ]
    assert failures, err
    for line in failures:
        assert line["message"] == (
            "worker failed to boot: the setting FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE is wrong"
        )
        assert (line["setting"], line["error_type"]) == (
            "FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE",
            "ConfigError",
        )


def test_a_second_boot_failure_met_while_stopping_still_exits_3_without_a_traceback(
    database: str,
) -> None:
    """gunicorn's master stopping for one worker's boot failure meets the other's while reaping:
    gunicorn lets ``HaltServer`` escape (a traceback, exit 1). ``serve`` exits with its status, 3,
    and the lines gunicorn's halt writes, as JSON lines."""
    error = f"RuntimeError({PATIENT_TEXT!r})"
    status, out, err = _serve_failing(database, "create_app", error, extra=_REAP_RACE)
    assert status == 3, err
    assert out == "" and "Traceback" not in err and "mrn-4711" not in err
    lines = _json_lines(err)
    said = {line["message"] for line in lines}
    assert {"Shutting down: Master", "Reason: Worker failed to boot."} <= said, err


@pytest.mark.parametrize(
    ("error", "message", "setting"),
    [
        pytest.param(
            ConfigError(f"{PATIENT_TEXT}: unknown setting"), "a setting is wrong", None, id="config"
        ),
        pytest.param(
            SchemaVersionError("database schema is at 0001, expected 0005"),
            "the database's schema is not the one this code expects "
            '(run "fhir-alliance db upgrade" with this version)',
            "FHIR_ALLIANCE_DATABASE_URL",
            id="schema",
        ),
        pytest.param(
            OperationalError("SELECT 1", {}, Exception(f"no such file {PATIENT_TEXT}")),
            "the database cannot be used",
            "FHIR_ALLIANCE_DATABASE_URL",
            id="database",
        ),
        pytest.param(
            ModuleNotFoundError(f"no module {PATIENT_TEXT}", name="flask_smorest"),
            "module flask_smorest cannot be imported (is fhir-alliance installed with its "
            "'service' extra, in the environment serve runs in?)",
            None,
            id="import",
        ),
        pytest.param(
            ModuleNotFoundError("x", name=PATIENT_TEXT),
            "a module cannot be imported (is fhir-alliance installed with its 'service' extra, "
            "in the environment serve runs in?)",
            None,
            id="import-odd-name",
        ),
        pytest.param(
            PermissionError(errno.EACCES, "denied", f"/data/{PATIENT_TEXT}"),
            "an operating system error (EACCES)",
            None,
            id="os",
        ),
    ],
)
def test_boot_failure_lines_name_the_kind_of_error_never_its_text(
    error: BaseException, message: str, setting: str | None
) -> None:
    """Each kind of error gets a fixed message (and the setting to look at where known)."""
    said, fields = boot_failure(error)
    assert said == f"worker failed to boot: {message}"
    assert fields.get("setting") == setting
    assert fields["error_type"] == type(error).__name__
    assert "mrn-4711" not in said + json.dumps(fields)
