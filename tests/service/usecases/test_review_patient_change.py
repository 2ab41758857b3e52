"""A record's patient cannot change (privacy, deny by default): a new version of a stored record
(same business identifier) naming another patient is refused with 422 and an issue at
``patient`` saying what to do instead, and nothing is stored; otherwise the copy already sent for
the first patient would stay on the FHIR server, untracked, while the new version is held.
Observations, consents and notes alike; keys linked as aliases of one patient are the same
patient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.usecases.intake import intake_records
from flask import Flask

from fhir_alliance.errors import InputError
from tests.service.usecases.payloads import for_patient, observation, plain_sharing

AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


def _note(patient: str) -> dict[str, Any]:
    note: dict[str, Any] = json.loads(
        (ROOT / "examples" / "notes" / "ai-drafted-progress-note.json").read_text()
    )
    note["id"] = "https://clinic.example.org/notes|n-review-1"
    note["patient"] = {"reference": patient, "type": "Patient"}
    note["session_at"] = "2026-11-20T15:00:00+00:00"
    note["written_at"] = "2026-11-20T16:00:00+00:00"
    del note["ai_drafting"]
    return note


def _observation(patient: str) -> dict[str, Any]:
    return for_patient(observation("srs-administration"), patient)


def _consent(patient: str) -> dict[str, Any]:
    return plain_sharing(patient)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SqlStore]:
    opened = open_store(sqlite_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.parametrize("make", [_observation, _consent, _note], ids=["obs", "consent", "note"])
def test_a_new_version_for_another_patient_is_refused(store: SqlStore, make: Any) -> None:
    [first] = intake_records(store, [make("Patient/p1")], at=AT)
    with pytest.raises(InputError) as caught:
        intake_records(store, [make("Patient/p2")], at=AT)
    [issue] = caught.value.issues
    assert issue.path == "0.patient"
    assert "a record's patient cannot change" in issue.message
    assert "amended" in issue.message and "entered-in-error" in issue.message
    assert "new identifier" in issue.message
    assert "Patient/p1" not in issue.message  # the other patient is not disclosed
    [stored] = store.list_records(limit=10)
    assert (stored.record_id, stored.version, stored.patient) == (first.record_id, 1, "Patient/p1")


def test_a_new_version_under_the_same_patient_is_still_taken(store: SqlStore) -> None:
    intake_records(store, [_observation("Patient/p1")], at=AT)
    changed = _observation("Patient/p1")
    changed["status"] = "amended"
    [result] = intake_records(store, [changed], at=AT)
    assert result.version == 2


def test_an_alias_of_the_same_patient_is_the_same_patient(store: SqlStore) -> None:
    intake_records(store, [_observation("Patient/p1")], at=AT)
    store.add_patient_alias("Patient/p1", "Patient/p1-old", at=AT)
    changed = _observation("Patient/p1-old")
    changed["status"] = "amended"
    [result] = intake_records(store, [changed], at=AT)
    assert result.version == 2


def test_the_api_answers_422_at_patient(app: Flask) -> None:
    """POST /v1/records of the repro: 422 OperationOutcome with the issue at ``patient``;
    the stored record stays version 1 under its first patient."""
    store = app.extensions["fhir_alliance"].store
    headers = {"Authorization": f"Bearer {create_api_key(store, 'review', ['write', 'read'])}"}
    client = app.test_client()
    created = client.post("/v1/records", json=_observation("Patient/p1"), headers=headers)
    assert created.status_code == 201, created.json
    moved = client.post("/v1/records", json=_observation("Patient/p2"), headers=headers)
    assert moved.status_code == 422, moved.json
    assert moved.json["resourceType"] == "OperationOutcome"
    [issue] = moved.json["issue"]
    assert issue["expression"] == ["patient"], issue
    assert "a record's patient cannot change" in json.dumps(issue)
    [stored] = store.list_records(limit=10)
    assert (stored.version, stored.patient) == (1, "Patient/p1")
