"""Upgrading a store that holds data, from each older revision to head, on SQLite and
PostgreSQL: every row of every table survives (the columns it had; migration 0008 rewrites the
patient tokens on purpose, keeping one per patient, and 0009 files every spelling of a patient's
identifier under its canonical key; 0010 adds a column, NULL on every row; 0011 adds a table,
empty; 0012 adds a column, NULL on every row), the current code reads every record, status,
audit entry and key, and sync works afterwards against the FHIR test server.

The data is written by the current code at head (the demo clinic loaded through ``load``, a
patient named by identifier, API keys, one revoked, outbox items queued, held, failed,
dead-lettered and sent, pulled resources, a console session signed out, a pending retraction
check), then the database is taken back to the older revision, which drops what that revision
did not have, and (before 0009) two of the identifier patient's records are filed under other
spellings of the identifier, as the code before 0009 filed records posted so. (Stores written by
the releases at each revision, with the demo clinic, synced, pulled and dead-lettered, were
upgraded by hand the same way when these tests were written, with the same result.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.auth import authenticate, create_api_key, parse_api_key
from fhir_alliance_service.cli_load import load_files
from fhir_alliance_service.store import (
    SqlStore,
    SyncState,
    current_revision,
    head_revision,
    open_store,
    upgrade,
)
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.interface import PullCursor, PulledResource
from fhir_alliance_service.usecases.consents import canonical_patient_key
from fhir_alliance_service.usecases.intake import intake_records
from sqlalchemy import MetaData, insert, select, text, update

from fhir_alliance.cli import main
from tests.fhir_server.plugin import FhirTestServer
from tests.service.api.test_patient_key_spellings import _consent, _rating

from .migrating import downgrade_to

ROOT = Path(__file__).resolve().parents[3]
CLINIC = ROOT / "examples" / "demo" / "clinic"
SERVER = "http://ehr.example/fhir"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
OLDER = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011"]
#: Tables whose rows a migration rewrites on purpose (compared by patient, not row by row).
REWRITTEN = {"patient_tokens"}
#: A patient named by identifier only (a synthetic SSN), filed under the canonical key at head;
#: at the older revision some of their rows are spelt as the code then filed them (migration
#: 0009 makes them one key again).
SSN = "http://hl7.org/fhir/sid/us-ssn|000-00-0042"
SSN_SPELLINGS = [
    "urn:oid:2.16.840.1.113883.4.1|000-00-0042",
    "URN:OID:2.16.840.1.113883.4.1|000-00-0042",
]
#: Columns holding patient keys (rewritten to canonical form by 0009).
KEY_COLUMNS = {"patient", "alias"}


def _rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table but Alembic's, as plain values, in a stable order."""
    engine = make_engine(url)
    try:
        reflected = MetaData()
        reflected.reflect(engine)
        with engine.connect() as connection:
            found = {}
            for name, table in reflected.tables.items():
                if name == "alembic_version":
                    continue
                rows = [dict(row._mapping) for row in connection.execute(select(table))]
                found[name] = sorted(
                    rows, key=lambda row: json.dumps(row, sort_keys=True, default=str)
                )
            return found
    finally:
        engine.dispose()


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its patient keys as migration 0009 leaves them."""
    return {
        column: canonical_patient_key(value)
        if column in KEY_COLUMNS and isinstance(value, str)
        else value
        for column, value in row.items()
    }


def _spell_apart(url: str, patient: str, spellings: list[str]) -> None:
    """File ``patient``'s records under ``spellings`` in turn (every table holding them at the
    database's revision), and give each spelling a console token where tokens are kept: what
    the code before 0009 wrote for records posted in those spellings."""
    engine = make_engine(url)
    try:
        reflected = MetaData()
        reflected.reflect(engine)
        with engine.begin() as connection:
            heads = reflected.tables["record_heads"]
            query = select(heads.c.record_id).where(heads.c.patient == patient)
            record_ids = sorted(connection.execute(query).scalars())
            assert len(record_ids) >= len(spellings)
            for record_id, spelling in zip(record_ids, spellings, strict=False):
                for name in ("records", "record_heads", "outbox", "audit"):
                    table = reflected.tables[name]
                    connection.execute(
                        update(table).where(table.c.record_id == record_id).values(patient=spelling)
                    )
            tokens = reflected.tables.get("patient_tokens")
            if tokens is not None:
                connection.execute(
                    insert(tokens),
                    [{"token": str(uuid.uuid4()), "patient": spelling} for spelling in spellings],
                )
    finally:
        engine.dispose()


def _sql(url: str, statement: str, **values: Any) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement), values)
    finally:
        engine.dispose()


@pytest.fixture
def populated(database_url: str) -> Iterator[dict[str, Any]]:
    """``database_url`` at head with a clinic's data in it; what was written to check it by."""
    store = open_store(database_url)
    try:
        summary = load_files(
            store,
            [CLINIC / "1-consents.json", CLINIC / "2-sessions.json", CLINIC / "3-later.json"],
            batch_size=50,
        )
        assert summary.complete
        intake_records(
            store,
            [
                _consent(SSN, 1, "permit"),
                _rating(SSN, "populated-1"),
                _rating(SSN, "populated-2"),
            ],
            at=NOW,
        )
        keys = {
            "front-desk": create_api_key(store, "front-desk", ["read", "write"]),
            "admin": create_api_key(store, "admin", ["admin", "read"]),
            "old": create_api_key(store, "old", ["read"]),
        }
        old = parse_api_key(keys["old"])
        assert old is not None
        store.revoke_api_key(old[0], at=NOW)
        patients = store.patients()
        store.set_remote_patient(SERVER, patients[0], "Patient/remote-1", at=NOW)
        store.save_pull_cursor(
            PullCursor(SERVER, "Consent", last_updated="2026-11-30T08:00:00Z", generation=2),
            at=NOW,
        )
        store.save_pulled(
            [
                PulledResource(
                    SERVER,
                    "Consent",
                    "c-remote",
                    "3",
                    "2026-11-30T08:00:00Z",
                    patients[0],
                    None,
                    "foreign",
                    "stored",
                )
            ],
            at=NOW,
        )
        store.end_session("session-1", expires_at=NOW + timedelta(days=3650), at=NOW)
        store.note_retraction_checks([patients[0]])
        store.set_meta("fhir.last_contact", NOW.isoformat())
    finally:
        store.close()
    # The outbox in every state (the worker's own transitions are tested elsewhere).
    items = [
        row["item_id"] for row in sorted(_rows(database_url)["outbox"], key=lambda r: r["item_id"])
    ]
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid"}],
    }
    _sql(
        database_url,
        "UPDATE outbox SET state = 'dead-lettered', attempts = 5, last_outcome = :outcome"
        " WHERE item_id = :item",
        outcome=json.dumps(outcome),
        item=items[0],
    )
    _sql(
        database_url,
        "UPDATE outbox SET state = 'failed', attempts = 2, next_attempt_at = :at WHERE item_id = :item",
        at=NOW - timedelta(days=1),
        item=items[1],
    )
    _sql(
        database_url,
        "UPDATE outbox SET state = 'held', held_reason = 'no consent to share with the clinic''s EHR'"
        " WHERE item_id = :item",
        item=items[2],
    )
    sent = [{"resource_type": "Observation", "id": "obs-1", "version_id": "2"}]
    _sql(
        database_url,
        "UPDATE outbox SET state = 'sent', attempts = 1, sent = :sent WHERE item_id = :item",
        sent=json.dumps(sent),
        item=items[3],
    )
    _sql(database_url, "UPDATE audit SET pushed = :yes WHERE id = 1", yes=True)
    yield {"url": database_url, "keys": keys, "patients": patients, "dead": items[0]}


@pytest.mark.slow
@pytest.mark.local_fhir_server  # sync-once pushes untagged resources: only on the suite's own server
@pytest.mark.parametrize("revision", OLDER)
def test_a_populated_store_upgrades_from_each_older_revision_without_loss(
    populated: dict[str, Any],
    revision: str,
    fhir_server: FhirTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """From ``revision`` to head: every row kept with the values it had, the records, statuses,
    audit trail and keys read by the current code, one token per patient, and afterwards the
    dead letter is replayed and the queue synced to the FHIR server."""
    url = populated["url"]
    downgrade_to(url, revision)
    assert current_revision(url) == revision
    if revision < "0009":  # filed as the code before 0009 filed them; 0009 makes them one key
        _spell_apart(url, SSN, SSN_SPELLINGS)
    before = _rows(url)
    upgrade(url)
    after = _rows(url)
    for table, rows in before.items():
        if table in REWRITTEN:
            continue
        kept = [{column: row[column] for column in rows[0]} for row in after[table]] if rows else []
        if table == "meta" and revision < "0008":  # 0008 adds the secret for patient tokens
            kept = [row for row in kept if row["name"] != "console.patient_token_key"]
        # 0009 files every spelling of a patient's identifier under its canonical key.
        expected = [_canonical(row) for row in rows]
        assert sorted(map(repr, kept)) == sorted(map(repr, expected)), table
    tokens = after["patient_tokens"]
    assert sorted(row["patient"] for row in tokens) == sorted(populated["patients"])

    opened: SqlStore = open_store(url)
    try:
        records = opened.list_records(limit=10_000)
        assert len(records) == len(before["record_heads"])
        kinds = {stored.kind for stored in records}
        assert {"consent"} < kinds, kinds  # records of several kinds
        for stored in records:
            assert opened.get_record(stored.record_id) is not None
            assert opened.sync_status(stored.record_id) is not None
        assert sum(len(opened.list_audit(record_id=r.record_id)) for r in records) > 0
        counts = opened.counts_by_state()
        assert counts[SyncState.DEAD_LETTERED] == 1 and counts[SyncState.FAILED] == 1
        assert counts[SyncState.SENT] == 1 and counts[SyncState.HELD] == 1
        for patient in populated["patients"]:
            assert opened.patient_for_token(opened.patient_token(patient)) == patient
        assert authenticate(opened, populated["keys"]["front-desk"]) is not None
        assert authenticate(opened, populated["keys"]["admin"]) is not None
        assert authenticate(opened, populated["keys"]["old"]) is None  # revoked stays revoked
        if revision >= "0007":
            assert opened.session_ended("session-1")
    finally:
        opened.close()

    # Sync works afterwards: the dead letter is replayed and everything claimable is processed.
    for name in list(os.environ):
        if name.startswith("FHIR_ALLIANCE_") and name != "FHIR_ALLIANCE_TEST_BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", url)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", fhir_server.base_url)
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", "Organization/demo-ehr")
    assert main(["replay", "--all"]) == 0
    assert main(["sync-once"]) == 0
    capsys.readouterr()
    opened = open_store(url)
    try:
        counts = opened.counts_by_state()
        assert counts.get(SyncState.QUEUED, 0) == 0
        assert counts.get(SyncState.SENT, 0) > 0
    finally:
        opened.close()


def _upgrade_process(url: str) -> subprocess.Popen[str]:
    """``fhir-alliance db upgrade`` as a process of this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "service")])
    # Bounded lock waits on PostgreSQL, so that a regression fails here instead of hanging.
    env["FHIR_ALLIANCE_DATABASE_URL"] = url.replace(
        "options=", "options=-clock_timeout%3D30000%20", 1
    )
    return subprocess.Popen(
        [sys.executable, "-m", "fhir_alliance", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_upgrading_a_populated_store_at_once_both_succeed(
    populated: dict[str, Any],
) -> None:
    """Two ``db upgrade`` processes started together on a store at 0002 with data (two
    machines' start-up scripts): both exit 0 without a traceback, the migrations run once (the
    rows are as one upgrade leaves them) and the schema ends at head."""
    url = populated["url"]
    downgrade_to(url, "0002")
    before = _rows(url)
    processes = [_upgrade_process(url) for _ in range(2)]
    results = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert "Traceback" not in err
        assert out.startswith("database "), out
    assert current_revision(url) == head_revision()
    after = _rows(url)
    for table, rows in before.items():
        added = 1 if table == "meta" else 0  # 0008's secret for patient tokens, made once
        assert len(after[table]) == len(rows) + added, table
    assert sorted(row["patient"] for row in after["patient_tokens"]) == sorted(
        populated["patients"]
    )
