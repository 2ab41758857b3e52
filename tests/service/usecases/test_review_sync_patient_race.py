"""The rule "a record's patient cannot change" holds under a race: two intakes of the same
identifier at the same moment with different patients both pass the use case's check (each read
the store before the other wrote), so the store checks again inside its write transaction and the
loser gets the same 422 at ``patient``, nothing of its batch stored. Keys linked as aliases of one
patient are still the same patient. SQLite and PostgreSQL alike (the same ``_put_records``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import (
    NewRecord,
    PatientChangeRefused,
    SyncState,
)
from fhir_alliance_service.usecases.intake import (
    PATIENT_CHANGE_REFUSED,
    content_hash,
    intake_records,
)

from fhir_alliance.errors import InputError
from tests.service.usecases.payloads import for_patient, observation
from tests.service.usecases.races import write_after

AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _observation(patient: str, *, suffix: str = "") -> dict[str, Any]:
    return for_patient(observation("srs-administration"), patient, suffix=suffix)


def test_the_intake_that_loses_the_race_is_refused_at_patient(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_stores
    won: list[Any] = []
    write_after(
        monkeypatch,
        first,
        lambda: won.extend(intake_records(second, [_observation("Patient/p2")], at=AT)),
    )
    other = _observation("Patient/p1", suffix="-other")  # a record of the same batch
    with pytest.raises(InputError) as caught:
        intake_records(first, [_observation("Patient/p1"), other], at=AT)
    [issue] = caught.value.issues
    assert issue.path == "0.patient"
    assert issue.message == PATIENT_CHANGE_REFUSED
    # The winner's record stands as it was, alone: nothing of the loser's batch was stored.
    [winner] = won
    [stored] = second.list_records(limit=10)
    assert (stored.record_id, stored.version, stored.patient) == (
        winner.record_id,
        1,
        "Patient/p2",
    )
    assert second.counts_by_state()[SyncState.QUEUED] == 1
    assert [e.action for e in second.list_audit(record_id=winner.record_id)] == ["intake"]


def test_an_alias_of_the_winners_patient_is_the_same_patient(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_stores
    second.add_patient_alias("Patient/p1", "Patient/p1-old", at=AT)
    write_after(
        monkeypatch, first, lambda: intake_records(second, [_observation("Patient/p1")], at=AT)
    )
    [result] = intake_records(first, [_observation("Patient/p1-old")], at=AT)
    assert result.version == 2
    stored = second.get_record(result.record_id)
    assert stored is not None and stored.patient == "Patient/p1-old"


def test_the_winner_may_be_the_alias(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_stores
    second.add_patient_alias("Patient/p1", "Patient/p1-old", at=AT)
    write_after(
        monkeypatch,
        first,
        lambda: intake_records(second, [_observation("Patient/p1-old")], at=AT),
    )
    [result] = intake_records(first, [_observation("Patient/p1")], at=AT)
    assert result.version == 2


def _new(patient: str, record_id: str = "rec-1") -> NewRecord:
    body = {"kind": "k", "patient": patient}
    return NewRecord(
        record_id, f"urn:x|{record_id}", "k", "observation", patient, body, content_hash(body)
    )


def test_the_store_refuses_a_new_version_for_another_patient(store: SqlStore) -> None:
    """``put_records`` itself: PatientChangeRefused naming the record, the batch rolled back."""
    store.put_records([_new("Patient/p1")], audit=[], at=AT)
    with pytest.raises(PatientChangeRefused) as caught:
        store.put_records([_new("Patient/p1", "rec-2"), _new("Patient/p2")], audit=[], at=AT)
    assert caught.value.record_ids == ("rec-1",)
    assert [r.record_id for r in store.list_records(limit=10)] == ["rec-1"]
    stored = store.get_record("rec-1")
    assert stored is not None and (stored.version, stored.patient) == (1, "Patient/p1")
    # Pulled records are not the intake's: their patient is the pull's business.
    [pulled] = store.put_remote_records(
        [_new("Patient/p2")], origin="https://ehr.example", audit=[], at=AT
    )
    assert pulled.version == 2
