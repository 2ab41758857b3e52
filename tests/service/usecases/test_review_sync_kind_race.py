"""The rule "an id belongs to a record of one kind" holds under a race: two intakes of the same
identifier at the same moment with different kinds both pass the use case's check (each read the
store before the other wrote), so the store checks again inside its write transaction and the
loser gets the same 422 at ``id``, nothing of its batch stored. SQLite and PostgreSQL alike (the
same ``_put_records``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import (
    KindChangeRefused,
    NewRecord,
    SyncState,
)
from fhir_alliance_service.usecases.intake import (
    KIND_CHANGE_REFUSED,
    content_hash,
    intake_records,
)

from fhir_alliance.errors import InputError
from tests.service.usecases.payloads import consent, for_patient, observation
from tests.service.usecases.races import write_after

AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)

#: The winner's record: a rupture of Patient/p1.
RUPTURE = "rupture"


def _rupture() -> dict[str, Any]:
    return for_patient(observation(RUPTURE), "Patient/p1")


def _impostor(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (another kind) for the same patient, under the rupture's identifier."""
    out = for_patient(payload, "Patient/p1")
    out["id"] = _rupture()["id"]
    return out


@pytest.mark.parametrize(
    "loser",
    [
        pytest.param(lambda: observation("srs-administration"), id="another-observation-kind"),
        pytest.param(lambda: consent("sharing"), id="another-family"),
    ],
)
def test_the_intake_that_loses_the_race_is_refused_at_id(
    two_stores: tuple[SqlStore, SqlStore],
    monkeypatch: pytest.MonkeyPatch,
    loser: Any,
) -> None:
    """Both intakes create the id at once with different kinds: the later write gets 422 at
    ``id``, and the winner's record keeps one kind in all its versions."""
    first, second = two_stores
    won: list[Any] = []
    write_after(monkeypatch, first, lambda: won.extend(intake_records(second, [_rupture()], at=AT)))
    other = for_patient(observation("srs-administration"), "Patient/p1", suffix="-other")
    with pytest.raises(InputError) as caught:
        intake_records(first, [_impostor(loser()), other], at=AT)
    [issue] = caught.value.issues
    assert issue.path == "0.id"
    assert issue.message == KIND_CHANGE_REFUSED
    # The winner's record stands as it was, alone: nothing of the loser's batch was stored.
    [winner] = won
    [stored] = second.list_records(limit=10)
    assert (stored.record_id, stored.version, stored.kind) == (winner.record_id, 1, RUPTURE)
    assert second.counts_by_state()[SyncState.QUEUED] == 1
    assert [e.action for e in second.list_audit(record_id=winner.record_id)] == ["intake"]


def test_the_same_kind_after_the_race_is_a_new_version(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent intake of the same kind is no conflict: the later one is version 2."""
    first, second = two_stores
    write_after(monkeypatch, first, lambda: intake_records(second, [_rupture()], at=AT))
    changed = _rupture()
    changed["tension"] = 4
    [result] = intake_records(first, [changed], at=AT)
    assert result.version == 2


def _new(kind: str, family: str = "observation", record_id: str = "rec-1") -> NewRecord:
    body = {"kind": kind, "patient": "Patient/p1"}
    return NewRecord(
        record_id, f"urn:x|{record_id}", kind, family, "Patient/p1", body, content_hash(body)
    )


def test_the_store_refuses_a_new_version_of_another_kind(store: SqlStore) -> None:
    """``put_records`` itself: KindChangeRefused naming the record, the batch rolled back; the
    kind of a record written earlier in the same batch counts too."""
    store.put_records([_new("rupture")], audit=[], at=AT)
    for other in (_new("repair"), _new("sharing", "consent")):
        with pytest.raises(KindChangeRefused) as caught:
            store.put_records([_new("rupture", record_id="rec-2"), other], audit=[], at=AT)
        assert caught.value.record_ids == ("rec-1",)
    with pytest.raises(KindChangeRefused) as caught:
        store.put_records(
            [_new("rupture", record_id="rec-3"), _new("repair", "observation", "rec-3")],
            audit=[],
            at=AT,
        )
    assert caught.value.record_ids == ("rec-3",)
    assert [r.record_id for r in store.list_records(limit=10)] == ["rec-1"]
    stored = store.get_record("rec-1")
    assert stored is not None and (stored.version, stored.kind) == (1, "rupture")
    # Pulled records are not the intake's: their kind is the pull's business.
    [pulled] = store.put_remote_records(
        [_new("repair")], origin="https://ehr.example", audit=[], at=AT
    )
    assert pulled.version == 2
