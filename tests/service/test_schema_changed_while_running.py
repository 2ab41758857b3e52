"""``serve`` and ``worker`` already running when another release's ``db upgrade`` changes the
store's schema: the app answers 503 (``/healthz`` excepted), the worker exits 2 with one line.
The revision is read again at most once every ``SCHEMA_CHECK_SECONDS``, never per request."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store import SqlStore, head_revision, schema_watch
from fhir_alliance_service.store.schema_watch import SchemaWatch
from flask import Flask
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from fhir_alliance.cli import main
from tests.service.test_cli_schema_mismatch import NEWER, _error_line, _free_port, _set_revision

EXPECTED_LINE = f"database schema is at {NEWER}, expected {head_revision()}: it changed while"


def test_the_revision_is_read_at_most_once_per_interval_and_a_change_sticks() -> None:
    """Calls within the interval read nothing; a failed read is no change; once changed, always
    changed without reading again."""
    now = [0.0]
    reads: list[str] = []
    answers = iter(["0010", "0010", "error", "0999"])

    def read() -> str:
        answer = next(answers)
        reads.append(answer)
        if answer == "error":
            raise OperationalError("SELECT", {}, Exception("down"))
        return answer

    watch = SchemaWatch(read, expected="0010", interval=10.0, clock=lambda: now[0])
    for at in (0.0, 5.0, 9.9):
        now[0] = at
        assert watch.mismatch() is None
    assert reads == []  # the process's start checked it
    for at in (10.0, 15.0, 20.0, 25.0, 30.0):
        now[0] = at
        watch.mismatch()
    assert reads == ["0010", "0010", "error"]
    now[0] = 40.0
    assert watch.mismatch() == (
        "database schema is at 0999, expected 0010: it changed while this process was running "
        '(another release\'s "fhir-alliance db upgrade"?); restart it with the release that '
        "matches the database"
    )
    now[0] = 100.0
    assert watch.mismatch() is not None and len(reads) == 4


def _version_reads(app: Flask) -> list[str]:
    """The statements reading ``alembic_version`` on the app's store, as they happen."""
    seen: list[str] = []

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "alembic_version" in statement:
            seen.append(statement)

    event.listen(app.extensions["fhir_alliance"].store.engine, "before_cursor_execute", note)
    return seen


def test_the_app_does_not_read_the_revision_per_request(
    make_app: Callable[..., Flask], sqlite_url: str
) -> None:
    """Within the interval (30 requests here) the revision is not read at all."""
    app = make_app()
    reads = _version_reads(app)
    key = create_api_key(app.extensions["fhir_alliance"].store, "ops", ["read"])
    client = app.test_client()
    _set_revision(sqlite_url, NEWER)
    for _ in range(30):
        assert client.get("/metrics", headers={"X-API-Key": key}).status_code == 200
    assert reads == []


def test_the_app_answers_503_once_the_schema_changed(
    make_app: Callable[..., Flask],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every route but /healthz answers 503 with an OperationOutcome saying to restart (API,
    /readyz, a request without a key); /healthz stays 200; one error line is logged. It used to
    go on taking records in under the old schema's rules."""
    monkeypatch.setattr(schema_watch, "SCHEMA_CHECK_SECONDS", 0.0)
    app = make_app()
    key = create_api_key(app.extensions["fhir_alliance"].store, "ops", ["read", "write"])
    client = app.test_client()
    headers = {"X-API-Key": key}
    assert client.get("/metrics", headers=headers).status_code == 200
    assert client.get("/readyz").status_code == 200
    _set_revision(sqlite_url, NEWER)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "exception",
                "details": {"text": "the store's schema changed; restart the service"},
            }
        ],
    }
    with caplog.at_level(logging.ERROR):
        for method, path, kwargs in [
            ("get", "/metrics", {"headers": headers}),
            ("post", "/records", {"headers": headers, "json": {}}),
            ("get", "/readyz", {}),
            ("get", "/metrics", {}),
        ]:
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == 503, path
            assert response.mimetype == "application/fhir+json"
            assert response.get_json() == outcome
        assert client.get("/healthz").status_code == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(EXPECTED_LINE), errors


def test_the_worker_command_exits_2_once_the_schema_changed(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    root_logging_restored: None,
) -> None:
    """``fhir-alliance worker`` running (in this process) when the revision changes stops by
    itself: exit 2, one ``error:`` line like the start-up check's. It used to run on until
    stopped (here: SIGTERM after 10 s, exit 0)."""
    monkeypatch.setattr(schema_watch, "SCHEMA_CHECK_SECONDS", 0.0)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", f"http://127.0.0.1:{_free_port()}/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", "Organization/clinic-ehr")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("FHIR_ALLIANCE_POLL_INTERVAL_SECONDS", "0.1")
    finished = threading.Event()
    terminated: list[bool] = []
    # A stray SIGTERM (the worker exited before the timer below) must not end the test run.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def change_then_stop() -> None:
        time.sleep(0.5)
        _set_revision(database, NEWER)
        if not finished.wait(10):
            terminated.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Thread(target=change_then_stop)
    timer.start()
    try:
        code = main(["worker", "--no-pull"])
    finally:
        finished.set()
        timer.join()
        signal.signal(signal.SIGTERM, previous)
    err = capfd.readouterr().err
    assert not terminated, "the worker ran on until stopped"
    assert code == 2, err
    assert _error_line(err).startswith(f"error: {EXPECTED_LINE}")
    assert "worker stopped" in err


def test_the_store_reads_its_revision(store: SqlStore, database_url: str) -> None:
    """``schema_revision`` is the ``alembic_version`` row (SQLite and PostgreSQL), read afresh."""
    assert store.schema_revision() == head_revision()
    _set_revision(database_url, NEWER)
    assert store.schema_revision() == NEWER
