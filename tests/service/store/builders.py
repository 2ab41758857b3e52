"""Small builders for the store's contract tests: records, audit entries and a fixed clock."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_alliance_service.store import AuditEntry, NewRecord

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """``seconds`` after the tests' fixed start time ``T0``."""
    return T0 + timedelta(seconds=seconds)


def record(
    number: int,
    *,
    patient: str = "Patient/p1",
    family: str = "observation",
    score: Any = 1,
    kind: str = "wai-sr",
) -> NewRecord:
    """Record ``number`` of ``patient``; changing ``score`` changes its content (and hash)."""
    identifier = f"urn:test:record|{number}"
    body = {"identifier": identifier, "patient": patient, "score": score}
    content_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return NewRecord(
        record_id=f"rec-{number:06d}",
        identifier=identifier,
        kind=kind,
        family=family,
        patient=patient,
        body=body,
        content_hash=content_hash,
    )


def consent(number: int, *, patient: str = "Patient/p1", status: str = "active") -> NewRecord:
    """A consent record of ``patient``; changing ``status`` changes its content."""
    return record(number, patient=patient, family="consent", kind="consent", score=status)


def audit_entry(action: str, record_id: str | None, *, when: datetime = T0) -> AuditEntry:
    """A minimal AuditEvent about ``record_id``."""
    return AuditEntry(
        action=action,
        record_id=record_id,
        patient="Patient/p1",
        resource={"resourceType": "AuditEvent", "action": "C", "recorded": when.isoformat()},
        at=when,
    )
