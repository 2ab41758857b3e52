"""``fhir-alliance status`` counts the audit push queue and ``replay --audit`` re-queues its dead
letters (``sync/audit_push.py``), against a migrated SQLite store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import AuditEntry, AuditPushFailure, AuditPushState

from fhir_alliance.cli import main

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


@pytest.fixture
def store(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqlStore]:
    for name in list(os.environ):
        if name.startswith("FHIR_ALLIANCE_") and name != "FHIR_ALLIANCE_TEST_BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    opened = open_store(sqlite_url)
    try:
        yield opened
    finally:
        opened.close()


def _queue(store: SqlStore, n: int, *, dead: int) -> None:
    """``n`` audit rows queued for pushing, ``dead`` of them dead-lettered."""
    at = datetime.now(UTC)
    entry = AuditEntry("disclose", "rec-1", "Patient/p1", {"resourceType": "AuditEvent"}, at)
    store.add_audit([replace(entry, push_state=AuditPushState.PENDING) for _ in range(n)])
    claimed = store.claim_audit_pushes(limit=dead, lease_seconds=0, now=at)
    failures = [AuditPushFailure(e.id, OUTCOME, None) for e in claimed if e.id is not None]
    store.record_audit_pushes([], failures, at=at)


def test_status_counts_pending_and_dead_lettered_audit_pushes(
    store: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` and `status` show the audit rows waiting and those refused for good."""
    _queue(store, 3, dead=1)
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["audit_push"] == {"pending": 2, "dead-lettered": 1}
    assert main(["status"]) == 0
    assert "audit pushes: pending 2, dead-lettered 1" in capsys.readouterr().out


def test_replay_audit_requeues_dead_lettered_pushes(
    store: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay --audit` makes every dead-lettered audit push pending again."""
    _queue(store, 3, dead=2)
    assert main(["replay", "--audit"]) == 0
    assert "re-queued 2 dead-lettered audit push(es)" in capsys.readouterr().out
    assert store.audit_push_counts() == {AuditPushState.PENDING: 3}
