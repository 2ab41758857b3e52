"""The service's ``fhir-alliance`` subcommands, run through ``fhir_alliance.cli.main`` (or as a real
process for ``serve`` and ``worker``) against a migrated SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir_alliance_service.auth import hash_secret, parse_api_key
from fhir_alliance_service.cli_load import load_files
from fhir_alliance_service.store import SyncState
from fhir_alliance_service.store.interface import Store

from fhir_alliance.cli import main
from tests.fhir_server.plugin import FhirTestServer
from tests.service.conftest import postgres_schema_url
from tests.service.test_review_store_sqlite_lock import outside_write_lock

pytestmark = pytest.mark.usefixtures("root_logging_restored")

ROOT = Path(__file__).resolve().parents[2]
CLINIC = ROOT / "examples" / "demo" / "clinic"
SESSIONS = json.loads((CLINIC / "2-sessions.json").read_text(encoding="utf-8"))
CONSENTS = json.loads((CLINIC / "1-consents.json").read_text(encoding="utf-8"))
FHIR_ALLIANCE_BIN = Path(sys.executable).with_name("fhir-alliance")


def _write_ndjson(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# -- settings and schema ------------------------------------------------------------------------


def test_bad_setting_stops_a_command_with_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad FHIR_ALLIANCE_* value: exit 2 and one line on stderr naming the variable."""
    monkeypatch.setenv("FHIR_ALLIANCE_WORKER_BATCH_SIZE", "many")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: FHIR_ALLIANCE_WORKER_BATCH_SIZE")


def test_commands_refuse_an_unmigrated_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without `db upgrade` a command stops with exit 2 and says what to run."""
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    assert main(["status"]) == 2
    assert "fhir-alliance db upgrade" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No PostgreSQL on the port: exit 2, one line saying why, and the password is not in it."""
    url = f"postgresql://clinic:s3cret-pw@127.0.0.1:{_free_port()}/nothing"
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", url)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FHIR_ALLIANCE_DATABASE_URL: the database cannot be used:")
    assert err.count("\n") == 1
    assert "s3cret-pw" not in err


def test_a_database_that_cannot_be_opened_names_the_variable_to_look_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite path SQLite cannot open (here a folder): SQLite says only "unable to open
    database file"; the line names the variable that gave the URL (the ``…_FILE`` one when the
    URL came from a file), as every other settings error does."""
    url = f"sqlite:///{tmp_path}"
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", url)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: FHIR_ALLIANCE_DATABASE_URL: the database cannot be used: "
        "unable to open database file\n"
    )
    url_file = tmp_path / "database-url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    monkeypatch.delenv("FHIR_ALLIANCE_DATABASE_URL")
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL_FILE", str(url_file))
    assert main(["status"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: FHIR_ALLIANCE_DATABASE_URL_FILE: the database cannot be used: "
    )


@pytest.mark.parametrize(
    "args", [["db", "upgrade"], ["db", "current"], ["status"], ["db", "backup", "copy.db"]]
)
def test_a_sqlite_url_in_a_missing_folder_names_the_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    """The deploy's ``sqlite:////var/lib/fhir-alliance/…`` before its folder exists (or a typo, a
    volume not mounted): every command, ``db upgrade`` too, stops with one line naming the
    variable and the folder, exit 2, and creates nothing. It used to say only "unable to open
    database file", naming no path."""
    folder = tmp_path / "no-such-folder"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{folder / 'fhir-alliance.db'}")
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: FHIR_ALLIANCE_DATABASE_URL: no folder {folder} for the SQLite database: check "
        "the URL (a typo, a volume not mounted) or create the folder; db upgrade creates the "
        "database file, never its folder\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_db_upgrade_migrates_once_and_db_current_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db current` exits 1 on an empty database, `db upgrade` migrates it, a second is a no-op."""
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    assert main(["db", "current"]) == 1
    assert capsys.readouterr().out.startswith("empty")
    assert main(["db", "upgrade"]) == 0
    assert "upgraded from empty" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert "already at the newest" in capsys.readouterr().out
    assert main(["db", "current"]) == 0
    assert "(newest)" in capsys.readouterr().out


@pytest.mark.postgres
def test_db_upgrade_then_load_and_status_on_postgresql(
    empty_postgres_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same commands on PostgreSQL: an empty schema is migrated, loaded and counted."""
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", postgres_schema_url(empty_postgres_schema))
    assert main(["db", "current"]) == 1
    assert main(["db", "upgrade"]) == 0
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["queued"] == len(CONSENTS)


@pytest.mark.postgres
def test_a_database_user_without_the_privilege_is_told_so_in_one_line(
    empty_postgres_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/service.md's PostgreSQL example made the database as ``postgres`` and connected as
    another role, which PostgreSQL 15 lets create no table in it: ``db upgrade`` said only
    "database error (ProgrammingError)". A privilege the user lacks is now one line naming the
    variable and what was denied (no value of the database), exit 2."""
    import psycopg
    from psycopg import sql

    from tests.service.conftest import POSTGRES_ADMIN_DSN, POSTGRES_HOST, POSTGRES_PORT

    role = f"{empty_postgres_schema}_user"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # it may use the schema (as any role may use a database's schema public), not create in it
        connection.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(empty_postgres_schema), sql.Identifier(role)
            )
        )
    try:
        monkeypatch.setenv(
            "FHIR_ALLIANCE_DATABASE_URL",
            f"postgresql://{role}@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
            f"?options=-csearch_path%3D{empty_postgres_schema}",
        )
        assert main(["db", "upgrade"]) == 2
        assert capsys.readouterr().err == (
            "error: FHIR_ALLIANCE_DATABASE_URL: the database user lacks a privilege: permission "
            f"denied for schema {empty_postgres_schema} (make it the database's owner; see "
            "docs/service.md, PostgreSQL)\n"
        )
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as connection:
            connection.execute(
                sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(
                    sql.Identifier(empty_postgres_schema), sql.Identifier(role)
                )
            )
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- API keys -----------------------------------------------------------------------------------


def test_create_api_key_prints_the_key_once_and_stores_only_its_hash(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The raw key goes to stdout; the store holds its id, scopes and the hash of its secret."""
    assert main(["create-api-key", "front desk", "--scope", "read", "--scope", "write"]) == 0
    raw_key = capsys.readouterr().out.strip()
    parsed = parse_api_key(raw_key)
    assert parsed is not None
    key_id, secret = parsed
    stored = opened.find_api_key(key_id)
    assert stored is not None
    assert stored.name == "front desk"
    assert stored.scopes == frozenset({"read", "write"})
    assert stored.secret_hash == hash_secret(secret)
    assert secret not in repr(stored)


def test_create_api_key_makes_a_notify_key(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--scope notify` makes the key for an EHR's Subscription: it opens only the notification
    endpoint."""
    assert main(["create-api-key", "ehr subscription", "--scope", "notify"]) == 0
    parsed = parse_api_key(capsys.readouterr().out.strip())
    assert parsed is not None
    stored = opened.find_api_key(parsed[0])
    assert stored is not None and stored.scopes == frozenset({"notify"})


def test_a_command_that_cannot_get_the_write_turn_says_so_in_one_line(
    opened: Store,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another program holds the SQLite write lock past FHIR_ALLIANCE_SQLITE_WRITE_WAIT_SECONDS:
    a writing command (here create-api-key) ends with one ``error:`` line saying nothing was
    written, exit 1, no traceback; and indeed nothing was."""
    monkeypatch.setenv("FHIR_ALLIANCE_SQLITE_WRITE_WAIT_SECONDS", "0.3")
    with outside_write_lock(database):
        code = main(["create-api-key", "front desk", "--scope", "read"])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert captured.out == "" and "Traceback" not in captured.err
    [error] = captured.err.splitlines()
    assert error.startswith("error: timed out after 0.3 s") and "nothing was written" in error
    assert opened.list_api_keys() == []


def test_create_api_key_refuses_an_unknown_scope(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scopes are checked by the parser: an unknown one exits 2 before anything is stored."""
    with pytest.raises(SystemExit) as exit_info:
        main(["create-api-key", "x", "--scope", "everything"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["", "   "], ids=["empty", "blank"])
def test_create_api_key_refuses_a_blank_name_as_a_bad_argument(
    opened: Store, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A blank NAME is a bad argument, as an unknown scope, a name taken or a malformed key id of
    revoke-api-key are: one line and exit 2 (it exited 1), nothing stored."""
    assert main(["create-api-key", name, "--scope", "read"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "error: an API key needs a name\n")
    assert opened.list_api_keys() == []


# -- load ---------------------------------------------------------------------------------------


def test_load_stores_json_lists_and_ndjson_files(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Consents from a JSON list and sessions from NDJSON are stored and queued; exit 0."""
    sessions = _write_ndjson(tmp_path / "sessions.ndjson", SESSIONS)
    assert main(["load", str(CLINIC / "1-consents.json"), str(sessions), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert f"loaded {len(CONSENTS) + len(SESSIONS)} record(s)" in out
    assert len(opened.list_records(limit=1000)) == len(CONSENTS) + len(SESSIONS)
    assert opened.counts_by_state()[SyncState.QUEUED] == len(CONSENTS) + len(SESSIONS)


def test_load_again_changes_nothing(opened: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Loading the same file twice reports every record unchanged the second time."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    assert f"unchanged {len(CONSENTS)}" in capsys.readouterr().out


def test_a_bad_record_names_file_line_and_field_and_its_batch_stores_nothing(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Record 4 of 5 is bad: its batch (records 3-4) stores nothing, the others load, exit 1."""
    records = [dict(r) for r in SESSIONS[:5]]
    records[3]["responses"] = {"1": "high", "2": 4, "3": 4, "4": 4}
    path = _write_ndjson(tmp_path / "bad.ndjson", records)
    assert main(["load", str(path), "--batch-size", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:4: responses.1.value:" in out
    assert "loaded 3 record(s)" in out
    stored_ids = {r.identifier for r in opened.list_records(limit=100)}
    assert stored_ids == {records[i]["id"] for i in (0, 1, 4)}
    assert "high" not in out  # the rejected value itself is never echoed


def test_a_bad_record_in_a_json_list_is_located_by_its_line(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a pretty-printed list the report names the line the bad record starts on."""
    records = [dict(SESSIONS[0]), dict(SESSIONS[1])]
    records[1]["colour"] = "blue"
    path = tmp_path / "list.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    lines = json.dumps(records, indent=2).splitlines()
    second_line = [n for n, line in enumerate(lines, start=1) if line == "  {"][1]
    assert main(["load", str(path)]) == 1
    assert f"{path}:{second_line}: colour: Unknown field." in capsys.readouterr().out
    assert opened.list_records() == []


def test_a_file_that_is_not_json_is_reported_and_the_rest_loads(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken NDJSON line stops that file at its line; the records of its batch read before it
    store nothing; other files load."""
    path = tmp_path / "broken.ndjson"
    path.write_text(json.dumps(SESSIONS[0]) + "\n{not json\n", encoding="utf-8")
    assert main(["load", str(path), str(CLINIC / "1-consents.json")]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2:" in out
    assert len(opened.list_records(limit=100)) == len(CONSENTS)


def test_load_shows_no_progress_bar_when_stderr_is_not_a_terminal(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped or captured stderr stays quiet (tqdm is disabled)."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    assert capsys.readouterr().err == ""


def test_load_draws_a_progress_bar_on_stderr_when_asked(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """With progress on (a terminal), tqdm counts the records on stderr, not stdout."""
    summary = load_files(opened, [CLINIC / "1-consents.json"], batch_size=2, progress=True)
    assert summary.complete
    captured = capsys.readouterr()
    assert f"load: {len(CONSENTS)}record" in captured.err
    assert captured.out == ""


# -- status and replay --------------------------------------------------------------------------


def _dead_letter_one(store: Store) -> str:
    """Claim the oldest item and dead-letter it the way the worker does; returns its record id."""
    now = datetime.now(UTC)
    (item,) = store.claim("test-worker", limit=1, lease_seconds=60, now=now)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid"}],
    }
    assert store.mark_dead(item.item_id, "test-worker", outcome=outcome, audit=[], at=now)
    return item.record_id


def test_status_counts_states_and_says_the_server_was_never_contacted(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` counts items by state; with no sync yet the last contact is null."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    _dead_letter_one(opened)
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["queued"] == len(CONSENTS) - 1
    assert report["counts"]["dead-lettered"] == 1
    assert report["fhir_server"]["last_contact"] is None
    assert main(["status"]) == 0
    assert "dead-lettered 1" in capsys.readouterr().out


def test_status_lists_held_reasons(opened: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Held items are summarised by their reason, most frequent first."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    now = datetime.now(UTC)
    for reason in ("no consent permits it", "no consent permits it", "PSYTHPN needs a permit"):
        (item,) = opened.claim("w", limit=1, lease_seconds=60, now=now)
        assert opened.mark_held(item.item_id, "w", reason=reason, audit=[], at=now)
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["held_reasons"] == {"no consent permits it": 2, "PSYTHPN needs a permit": 1}
    assert report["held_reasons_of"] == 3
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("held:") + 1].split() == ["2", "no", "consent", "permits", "it"]


def test_status_counts_the_retraction_checks_pending(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retraction checks noted in the store (a failed check, one a worker did not finish) are
    counted: all of them and those due now (the others are leased: a check running, or its
    worker died). Nothing showed them: a check that never succeeds, or that no worker makes,
    went unseen."""
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["retraction_checks"] == {"pending": 0, "due": 0}
    assert main(["status"]) == 0
    assert "retraction checks" not in capsys.readouterr().out
    opened.note_retraction_checks(["Patient/p1", "Patient/p2"])
    later = datetime.now(UTC) + timedelta(hours=1)
    opened.note_retraction_checks(["Patient/p3"], lease_until=later)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["retraction_checks"] == {"pending": 3, "due": 2}
    assert main(["status"]) == 0
    assert "retraction checks pending: 3 (due now 2" in capsys.readouterr().out


def test_status_shows_the_fhir_version_the_worker_maps_to(
    opened: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With FHIR_ALLIANCE_FHIR_VERSION set, the worker maps to that version whatever the server
    announced; status showed the announced one (4.0.1 while R5 resources were sent). It now shows
    the version the worker uses and where it comes from."""
    from fhir_alliance_service.sync.target import META_FHIR_VERSION

    opened.set_meta(META_FHIR_VERSION, "4.0.1")  # what the server announced last
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    server = json.loads(capsys.readouterr().out)["fhir_server"]
    assert (server["fhir_version"], server["fhir_version_from"]) == ("4.0.1", "server")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_VERSION", "5.0.0")
    assert main(["status", "--json"]) == 0
    server = json.loads(capsys.readouterr().out)["fhir_server"]
    assert (server["fhir_version"], server["fhir_version_from"]) == ("5.0.0", "setting")
    assert main(["status"]) == 0
    assert "  FHIR version: 5.0.0 (FHIR_ALLIANCE_FHIR_VERSION)" in capsys.readouterr().out


def test_replay_requeues_one_dead_letter_by_id_or_identifier(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay RECORD_ID` and `replay system|value` re-queue that record's dead letter."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    record_id = _dead_letter_one(opened)
    assert main(["replay", record_id]) == 0
    assert "re-queued 1" in capsys.readouterr().out
    status = opened.sync_status(record_id)
    assert status is not None and status.state is SyncState.QUEUED and status.attempts == 0

    record_id = _dead_letter_one(opened)
    record = opened.get_record(record_id)
    assert record is not None
    assert main(["replay", record.identifier]) == 0
    status = opened.sync_status(record_id)
    assert status is not None and status.state is SyncState.QUEUED


def test_replay_all_and_unknown_records(opened: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --all` re-queues every dead letter; an unknown record id exits 1."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    _dead_letter_one(opened)
    _dead_letter_one(opened)
    assert main(["replay", "--all"]) == 0
    assert "re-queued 2" in capsys.readouterr().out
    assert opened.counts_by_state().get(SyncState.DEAD_LETTERED, 0) == 0
    assert main(["replay", "00000000-0000-0000-0000-000000000000"]) == 1
    assert "no such record" in capsys.readouterr().err


# -- serve and worker as real processes ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env["FHIR_ALLIANCE_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


def test_serve_runs_gunicorn_that_answers_healthz_and_stops_on_sigterm(
    database: str, tmp_path: Path
) -> None:
    """`serve --bind … --workers 1 --threads 2` starts gunicorn; /healthz answers 200; SIGTERM
    ends it. Every line it writes, gunicorn's own included (master and worker), is one JSON
    object with the documented fields."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            str(FHIR_ALLIANCE_BIN),
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
        env=_service_env(database),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # gunicorn's master listens before its worker has imported the app: on a loaded machine
        # the first request can wait for it, so a slow answer is retried, not failed.
        deadline = time.monotonic() + 90
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
                break
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.2)
        assert answer is not None, (tmp_path / "serve.log").read_text(errors="replace")
        assert answer.status_code == 200
        assert "gunicorn" in (tmp_path / "serve.log").read_text(errors="replace")
        # A request line gunicorn cannot parse, naming a patient: refused, and its text kept out
        # of gunicorn's log line about it.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /v1/patients/Patient/mrn-4711/records HTTP/1.1 x\r\nHost: a\r\n\r\n")
            assert raw.recv(4096).startswith(b"HTTP/1.1 400")
    finally:
        code = _stop(process)
        log.close()
    assert code == 0
    logged = (tmp_path / "serve.log").read_text(errors="replace")
    assert "mrn-4711" not in logged
    assert "Traceback" not in logged
    lines = [json.loads(line) for line in logged.splitlines() if line.strip()]
    for line in lines:
        assert isinstance(line, dict)
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
    gunicorn_said = {line["message"] for line in lines if line["logger"] == "gunicorn.error"}
    assert "invalid HTTP request refused (its text is not logged)" in gunicorn_said
    assert any(message.startswith("Listening at: ") for message in gunicorn_said)  # master
    assert any(message.startswith("Booting worker with pid: ") for message in gunicorn_said)
    assert any(message.startswith("Shutting down") for message in gunicorn_said)
    assert any(line["logger"] == "fhir_alliance_service.request" for line in lines)  # worker app


def test_serve_with_a_bad_setting_stops_before_binding(database: str) -> None:
    """A bad bind address stops `serve` with exit 2 and one line; nothing listens."""
    result = subprocess.run(
        [str(FHIR_ALLIANCE_BIN), "serve"],
        env=_service_env(database, FHIR_ALLIANCE_BIND="nowhere"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: FHIR_ALLIANCE_BIND")


def test_serve_refuses_zero_workers(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --workers 0` stops before gunicorn starts, with one line."""
    assert main(["serve", "--workers", "0"]) == 2
    assert capsys.readouterr().err == "error: --workers must be at least 1\n"


def test_serve_refuses_zero_threads(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --threads 0` stops before gunicorn starts, with one line."""
    assert main(["serve", "--threads", "0"]) == 2
    assert capsys.readouterr().err == "error: --threads must be at least 1\n"


def test_gunicorn_threads_come_from_the_option_else_the_setting() -> None:
    """`serve --threads N` sets gunicorn's threads per worker; without it, web_threads does."""
    from fhir_alliance_service.cli_serve import gunicorn_options
    from fhir_alliance_service.config import Settings

    settings = Settings(web_threads=3)
    assert gunicorn_options(settings, bind="127.0.0.1:1", workers=2)["threads"] == 3
    options = gunicorn_options(settings, bind="127.0.0.1:1", workers=2, threads=1)
    assert (options["threads"], options["workers"], options["worker_class"]) == (1, 2, "gthread")


def test_worker_without_a_fhir_server_setting_refuses_to_start(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no FHIR_ALLIANCE_FHIR_BASE_URL there is nowhere to sync: exit 2, one line."""
    assert main(["worker"]) == 2
    assert "FHIR_ALLIANCE_FHIR_BASE_URL" in capsys.readouterr().err


# -- sync against the real FHIR test server ------------------------------------------------------


def _sync_env(monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", base_url)
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", "Organization/demo-ehr")


@pytest.mark.local_fhir_server  # pushes untagged resources: only on the suite's own server
def test_sync_once_sends_what_consent_permits_and_exits(
    opened: Store,
    fhir_server: FhirTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sync-once` drains the queue: the permitted records are on the server, the rest held."""
    _sync_env(monkeypatch, fhir_server.base_url)
    assert main(["load", str(CLINIC / "1-consents.json"), str(CLINIC / "2-sessions.json")]) == 0
    capsys.readouterr()
    assert main(["sync-once"]) == 0
    out = capsys.readouterr().out
    counts = opened.counts_by_state()
    assert counts.get(SyncState.QUEUED, 0) == 0
    assert counts[SyncState.SENT] > 0 and counts[SyncState.HELD] > 0
    assert f"sent {counts[SyncState.SENT]}" in out
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fhir_server"]["last_contact"] is not None
    srs = next(r for r in SESSIONS if r.get("instrument") == "srs")
    found = fhir_server.http.get(
        fhir_server.url("Observation"), params={"identifier": srs["id"]}
    ).json()
    assert found.get("total", len(found.get("entry", []))) == 1
    rupture = next(r for r in SESSIONS if r["kind"] == "rupture")
    status = opened.sync_status(opened_record_id(opened, rupture["id"]))
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason


@pytest.mark.local_fhir_server
def test_sync_once_one_batch_processes_one_batch_only(
    opened: Store,
    fhir_server: FhirTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--one-batch` with a batch size of 2 handles 2 items and leaves the rest queued."""
    _sync_env(monkeypatch, fhir_server.base_url)
    monkeypatch.setenv("FHIR_ALLIANCE_WORKER_BATCH_SIZE", "2")
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    assert main(["sync-once", "--one-batch"]) == 0
    assert "processed 2 item(s)" in capsys.readouterr().out
    assert opened.counts_by_state()[SyncState.QUEUED] == len(CONSENTS) - 2


def test_sync_once_reports_an_unreachable_server(
    opened: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the FHIR server down nothing is claimed, the items stay queued, and exit is 1."""
    _sync_env(monkeypatch, f"http://127.0.0.1:{_free_port()}/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_TIMEOUT_SECONDS", "2")
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    assert main(["sync-once"]) == 1
    assert "could not be reached" in capsys.readouterr().err
    assert opened.counts_by_state()[SyncState.QUEUED] == len(CONSENTS)


def test_sync_once_reports_a_server_down_after_it_was_known(
    opened: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that announced its version before and is down now still makes `sync-once`
    exit 1 (cron alerts on it): the sends fail and the items wait for their retry."""
    from fhir_alliance_service.sync.target import META_FHIR_BASE_URL, META_FHIR_VERSION

    base_url = f"http://127.0.0.1:{_free_port()}/fhir"
    _sync_env(monkeypatch, base_url)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_TIMEOUT_SECONDS", "2")
    opened.set_meta(META_FHIR_BASE_URL, base_url)  # as the last contact left them
    opened.set_meta(META_FHIR_VERSION, "4.0.1")
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    assert main(["sync-once", "--one-batch"]) == 1
    assert "could not be reached" in capsys.readouterr().err
    assert opened.counts_by_state()[SyncState.FAILED] > 0


def test_sync_once_reports_a_server_down_with_the_version_set(
    opened: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With FHIR_ALLIANCE_FHIR_VERSION set (no /metadata asked) a server that is down makes
    `sync-once` exit 1 too: its sends fail for want of an answer."""
    _sync_env(monkeypatch, f"http://127.0.0.1:{_free_port()}/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_VERSION", "4.0.1")
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    assert main(["sync-once", "--one-batch"]) == 1
    assert "could not be reached" in capsys.readouterr().err
    assert opened.counts_by_state()[SyncState.FAILED] > 0


def opened_record_id(store: Store, identifier: str) -> str:
    (record,) = [r for r in store.list_records(limit=1000) if r.identifier == identifier]
    return record.record_id


@pytest.mark.local_fhir_server
def test_worker_syncs_until_sigterm_and_then_exits_zero(
    opened: Store, database: str, fhir_server: FhirTestServer, tmp_path: Path
) -> None:
    """A `worker` process drains the queue, keeps polling, and exits 0 on SIGTERM."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [str(FHIR_ALLIANCE_BIN), "worker"],
        env=_service_env(
            database,
            FHIR_ALLIANCE_FHIR_BASE_URL=fhir_server.base_url,
            FHIR_ALLIANCE_RECIPIENTS="Organization/demo-ehr",
            FHIR_ALLIANCE_POLL_INTERVAL_SECONDS="0.2",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if opened.counts_by_state().get(SyncState.QUEUED, 0) == 0:
                break
            time.sleep(0.2)
        assert opened.counts_by_state().get(SyncState.QUEUED, 0) == 0, (
            tmp_path / "worker.log"
        ).read_text(errors="replace")
        assert process.poll() is None, "the worker keeps running when the queue is empty"
        started = time.monotonic()
        code = _stop(process)
        assert time.monotonic() - started < 10
    finally:
        _stop(process)
        log.close()
    assert code == 0
    assert "worker stopped" in (tmp_path / "worker.log").read_text(errors="replace")


@pytest.mark.local_fhir_server  # registers an untagged Subscription (deleted at the end)
def test_subscribe_registers_one_subscription_and_keeps_the_key_off_the_command_line(
    database: str,
    fhir_server: FhirTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`subscribe --endpoint URL --key-env VAR` registers the rest-hook Subscription with the
    key from the environment; a missing variable stops with one line naming it."""
    _sync_env(monkeypatch, fhir_server.base_url)
    endpoint = "https://sync.clinic.example/v1/fhir/notifications"
    assert main(["subscribe", "--endpoint", endpoint, "--key-env", "NOT_SET_ANYWHERE"]) == 2
    assert "NOT_SET_ANYWHERE" in capsys.readouterr().err
    monkeypatch.setenv("SYNC_NOTIFY_KEY", "fa_test_secret")
    try:
        assert main(["subscribe", "--endpoint", endpoint, "--key-env", "SYNC_NOTIFY_KEY"]) == 0
        assert main(["subscribe", "--json", "--endpoint", endpoint]) == 0
        out = capsys.readouterr().out
        answer = json.loads(out.splitlines()[-1])
        assert answer["registered"] is True
        stored = fhir_server.http.get(fhir_server.url(f"Subscription/{answer['id']}")).json()
        assert stored["channel"]["endpoint"] == endpoint
        assert "fa_test_secret" not in out
    finally:
        from fhir_alliance_service.sync.subscriptions import subscription_id

        fhir_server.http.delete(fhir_server.url(f"Subscription/{subscription_id(endpoint)}"))


def _leaf_parsers(parser: Any, prefix: str = "") -> dict[str, Any]:
    """``name`` → parser of every command (``db upgrade`` for a nested one)."""
    import argparse

    found: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_leaf_parsers(sub, f"{prefix}{name} ") or {f"{prefix}{name}": sub})
    return found


def test_every_service_command_help_says_what_it_does() -> None:
    """``fhir-alliance COMMAND --help`` of every service command has a description, not only its
    usage: ``status``, ``db upgrade`` and ``db current`` had none."""
    import argparse

    from fhir_alliance_service.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    bare = sorted(name for name, sub in _leaf_parsers(parser).items() if not sub.description)
    assert bare == []


def test_create_api_key_offers_exactly_the_scopes_auth_knows() -> None:
    """``--scope`` choices are spelled out in the CLI (which must not import Flask to build its
    parser): they are auth's SCOPES, so a new scope cannot be left out of the command."""
    import argparse

    from fhir_alliance_service.auth import SCOPES
    from fhir_alliance_service.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    [scope] = [
        action
        for action in _leaf_parsers(parser)["create-api-key"]._actions
        if "--scope" in action.option_strings
    ]
    assert set(scope.choices or ()) == SCOPES
