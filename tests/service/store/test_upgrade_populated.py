"""Upgrading a store that holds data, from each older revision to head, on SQLite and
PostgreSQL: every row of every table survives (the columns it had; migration 0008 rewrites the
patient tokens on purpose, keeping one per patient), the current code reads every record, status,
audit entry and key, and sync works afterwards against the FHIR test server.

The data is written by the current code at head (the demo clinic loaded through ``load``, API
keys, one revoked, outbox items queued, held, failed, dead-lettered and sent, pulled resources, a
console session signed out), then the database is taken back to the older revision, which drops
what that revision did not have. (Stores written by the releases at each revision, with the demo
clinic, synced, pulled and dead-lettered, were upgraded by hand the same way when these tests
were written, with the same result.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from sqlalchemy import MetaData, select, text

from fhir_alliance.cli import main
from tests.fhir_server.plugin import FhirTestServer

from .migrating import downgrade_to

ROOT = Path(__file__).resolve().parents[3]
CLINIC = ROOT / "examples" / "demo" / "clinic"
SERVER = "http://ehr.example/fhir"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
OLDER = ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
#: Tables whose rows a migration rewrites on purpose (compared by patient, not row by row).
REWRITTEN = {"patient_tokens"}


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
    before = _rows(url)
    upgrade(url)
    after = _rows(url)
    for table, rows in before.items():
        if table in REWRITTEN:
            continue
        kept = [{column: row[column] for column in rows[0]} for row in after[table]] if rows else []
        if table == "meta":  # 0008 adds the installation's secret for patient tokens
            kept = [row for row in kept if row["name"] != "console.patient_token_key"]
        assert sorted(map(repr, kept)) == sorted(map(repr, rows)), table
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
