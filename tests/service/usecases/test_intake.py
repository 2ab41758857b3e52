"""Intake use case: records of every kind into the real store (SQLite and PostgreSQL), all or nothing."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import PutOutcome, SyncState
from fhir_alliance_service.usecases.intake import (
    content_hash,
    intake_questionnaire_response,
    intake_records,
)

from fhir_alliance.errors import InputError
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Identifier
from tests.service.usecases.payloads import (
    ROOT,
    consent,
    for_patient,
    observation,
    srs_questionnaire_response,
)

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _paths(exc: pytest.ExceptionInfo[InputError]) -> set[str]:
    return {issue.path for issue in exc.value.issues}


def _nothing_stored(store: SqlStore) -> bool:
    return (
        store.list_records() == []
        and sum(store.counts_by_state().values()) == 0
        and store.list_audit() == []
    )


def test_one_record_is_stored_as_version_1_and_queued(store: SqlStore) -> None:
    """A new record gets the UUIDv5 record id, version 1, a queued outbox item and one intake audit."""
    payload = observation("srs-administration")
    [result] = intake_records(store, [payload], at=AT)
    expected_id = resource_id(Identifier.parse(payload["id"]))
    assert (result.record_id, result.version, result.outcome) == (
        expected_id,
        1,
        PutOutcome.CREATED,
    )
    assert result.identifier == payload["id"]
    stored = store.get_record(expected_id)
    assert stored is not None
    assert (stored.kind, stored.family, stored.patient) == (
        "instrument-administration",
        "observation",
        "Patient/example-client",
    )
    assert stored.content_hash == content_hash(stored.body)
    status = store.sync_status(expected_id)
    assert status is not None and status.state is SyncState.QUEUED
    [entry] = store.list_audit()
    assert (entry.action, entry.record_id) == ("intake", expected_id)


def test_identical_repost_changes_nothing(store: SqlStore) -> None:
    """Posting the same content again answers UNCHANGED and writes no record, item or audit entry."""
    payloads = [observation("srs-administration"), observation("rupture")]
    intake_records(store, payloads, at=AT)
    before = (store.counts_by_state(), len(store.list_audit()))
    again = intake_records(store, payloads, at=AT + timedelta(minutes=1))
    assert [(r.version, r.outcome) for r in again] == [(1, PutOutcome.UNCHANGED)] * 2
    assert (store.counts_by_state(), len(store.list_audit())) == before


def test_changed_content_queues_version_2_and_supersedes_the_unsent_item(store: SqlStore) -> None:
    """Changed content under the same identifier becomes version 2, queued; version 1 is superseded."""
    payload = observation("srs-administration")
    intake_records(store, [payload], at=AT)
    payload["responses"]["1"] = 5.0
    [result] = intake_records(store, [payload], at=AT + timedelta(minutes=1))
    assert (result.version, result.outcome) == (2, PutOutcome.UPDATED)
    status = store.sync_status(result.record_id)
    assert status is not None
    assert (status.record_version, status.state) == (2, SyncState.QUEUED)
    counts = store.counts_by_state()
    assert (counts[SyncState.QUEUED], counts[SyncState.SUPERSEDED]) == (1, 1)
    assert [e.action for e in store.list_audit()] == ["intake", "intake"]


def test_list_with_one_bad_record_stores_nothing_and_names_the_path(store: SqlStore) -> None:
    """One bad record in a list: InputError at ``1.responses.…``, and not even the good one is stored."""
    bad = observation("srs-administration")
    bad["id"] = bad["id"] + "-b"
    bad["responses"]["2"] = 11.5  # SRS items are 0..10
    with pytest.raises(InputError) as caught:
        intake_records(store, [observation("rupture"), bad], at=AT)
    assert any(p.startswith("1.responses") for p in _paths(caught)), _paths(caught)
    assert _nothing_stored(store)


def test_errors_of_every_payload_come_back_together(store: SqlStore) -> None:
    """Problems in several payloads are collected into one error: wrong kind, not an object, a bad field."""
    wrong_field = observation("rupture")
    wrong_field["tension"] = "high"
    with pytest.raises(InputError) as caught:
        intake_records(store, [{"kind": "nonsense"}, "text", wrong_field], at=AT)
    assert {"0.kind", "1", "2.tension"} <= _paths(caught)
    assert _nothing_stored(store)


def test_one_object_with_an_empty_label_has_unprefixed_paths(store: SqlStore) -> None:
    """A payload posted on its own (label "") reports plain field paths."""
    bad = observation("rupture")
    del bad["patient"]
    with pytest.raises(InputError) as caught:
        intake_records(store, [bad], at=AT, labels=[""])
    assert "patient" in _paths(caught)


def test_repair_may_name_a_rupture_already_in_the_store(store: SqlStore) -> None:
    """A repair alone is accepted when its rupture was stored earlier, refused when it is nowhere."""
    with pytest.raises(InputError) as caught:
        intake_records(store, [observation("repair")], at=AT)
    assert _paths(caught) == {"0.rupture"}
    intake_records(store, [observation("rupture")], at=AT)
    [result] = intake_records(store, [observation("repair")], at=AT)
    assert result.outcome is PutOutcome.CREATED


def test_the_same_record_twice_in_one_list_is_refused(store: SqlStore) -> None:
    """Two payloads with one identifier in a list name the second one's id."""
    with pytest.raises(InputError) as caught:
        intake_records(store, [observation("rupture"), observation("rupture")], at=AT)
    assert "1.id" in _paths(caught)
    assert _nothing_stored(store)


def test_a_repeated_record_is_reported_once_at_each_place(store: SqlStore) -> None:
    """The batch rule names both places of a repeated id, and the store's own check of the second
    one is not added again (it was: ``1.id`` twice, so ``load`` listed that line twice)."""
    with pytest.raises(InputError) as caught:
        intake_records(store, [observation("rupture"), observation("rupture")], at=AT)
    assert [(i.path, i.message) for i in caught.value.issues] == [
        ("0.id", "the same record id appears twice"),
        ("1.id", "the same record id appears twice"),
    ]


def test_an_identifier_of_another_kind_is_refused(store: SqlStore) -> None:
    """A record may not take over the identifier of a stored record of another kind."""
    intake_records(store, [observation("rupture")], at=AT)
    impostor = observation("srs-administration")
    impostor["id"] = observation("rupture")["id"]
    with pytest.raises(InputError) as caught:
        intake_records(store, [impostor], at=AT)
    assert _paths(caught) == {"0.id"}


def test_revocation_is_applied_to_the_stored_consent_as_a_new_version(store: SqlStore) -> None:
    """A revocation of a stored consent makes its version 2 with status revoked and one more history entry."""
    sharing = consent("sharing")
    [created] = intake_records(store, [sharing], at=AT)
    [revoked] = intake_records(store, [consent("revocation/withdraw-sharing")], at=AT)
    assert revoked.record_id == created.record_id
    assert (revoked.version, revoked.outcome) == (2, PutOutcome.UPDATED)
    stored = store.get_record(created.record_id)
    assert stored is not None
    assert stored.body["status"] == "revoked"
    assert len(stored.body["history"]) == len(sharing["history"]) + 1


def test_revocation_of_an_unknown_consent_is_refused(store: SqlStore) -> None:
    """A revocation names a consent of the batch or of the store; otherwise ``0.consent``."""
    with pytest.raises(InputError) as caught:
        intake_records(store, [consent("revocation/withdraw-sharing")], at=AT)
    assert _paths(caught) == {"0.consent"}
    assert _nothing_stored(store)


def test_reposting_a_consent_cannot_erase_its_revocation(store: SqlStore) -> None:
    """The lifecycle is append-only: the original consent posted after its revocation is refused."""
    intake_records(store, [consent("sharing"), consent("revocation/withdraw-sharing")], at=AT)
    with pytest.raises(InputError) as caught:
        intake_records(store, [consent("sharing")], at=AT)
    assert _paths(caught) == {"0.history"}


def test_consent_change_requeues_the_patients_held_records(store: SqlStore) -> None:
    """Held items of a patient go back to the queue when that patient's consents change; others stay."""
    mine = for_patient(observation("srs-administration"), "Patient/p1")
    other = for_patient(observation("rupture"), "Patient/p2")
    results = intake_records(store, [mine, other], at=AT)
    items = store.claim("w1", limit=10, lease_seconds=60, now=AT)
    assert len(items) == 2
    for item in items:
        assert store.mark_held(item.item_id, "w1", reason="no consent", audit=[], at=AT)
    intake_records(store, [consent("sharing")], at=AT + timedelta(seconds=1))
    states = {r.record_id: store.sync_status(r.record_id) for r in results}
    mine_status, other_status = states[results[0].record_id], states[results[1].record_id]
    assert mine_status is not None and mine_status.state is SyncState.QUEUED
    assert other_status is not None and other_status.state is SyncState.HELD


def test_questionnaire_response_is_extracted_into_records(store: SqlStore) -> None:
    """A completed SRS QuestionnaireResponse becomes an instrument administration of its answered items."""
    [result] = intake_questionnaire_response(store, srs_questionnaire_response(), at=AT)
    assert (result.kind, result.outcome) == ("instrument-administration", PutOutcome.CREATED)
    stored = store.get_record(result.record_id)
    assert stored is not None
    assert stored.patient == "Patient/p1"
    assert stored.body["responses"] == {"1": 9.1, "2": 8.7, "4": 9}


def test_questionnaire_response_problems_name_the_element(store: SqlStore) -> None:
    """An in-progress QuestionnaireResponse is refused at its ``status`` element; nothing is stored."""
    qr = srs_questionnaire_response()
    qr["status"] = "in-progress"
    with pytest.raises(InputError) as caught:
        intake_questionnaire_response(store, qr, at=AT)
    assert _paths(caught) == {"QuestionnaireResponse.status"}
    assert _nothing_stored(store)


@pytest.mark.parametrize("case", ["no answer", "no item"])
def test_a_response_with_nothing_to_extract_is_refused_at_its_items(
    store: SqlStore, case: str
) -> None:
    """No answered item of a known questionnaire (items without answers, or no items at all):
    refused at ``QuestionnaireResponse.item``, an element path as every other issue of a
    QuestionnaireResponse has (it was plain ``item``); nothing is stored."""
    qr = srs_questionnaire_response()
    if case == "no answer":
        qr["item"] = [{"linkId": str(n)} for n in range(1, 5)]
    else:
        del qr["item"]
    with pytest.raises(InputError) as caught:
        intake_questionnaire_response(store, qr, at=AT)
    assert _paths(caught) == {"QuestionnaireResponse.item"}
    assert _nothing_stored(store)


@pytest.mark.postgres
def test_concurrent_intake_of_one_new_record_loses_nothing(postgres_url: str) -> None:
    """Six requests racing to create and change one record on PostgreSQL all succeed, each
    distinct content getting its own version (a lost race is run again, never a 500)."""
    store = open_store(postgres_url)
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def post(tension: int) -> None:
        payload = observation("rupture")
        payload["tension"] = tension
        start.wait()
        try:
            results.extend(intake_records(store, [payload], at=AT))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(1 + n % 5,)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        changed = sorted(r.version for r in results if r.outcome is not PutOutcome.UNCHANGED)
        assert changed == list(range(1, len(changed) + 1))
        assert len(changed) >= 5  # five distinct contents; the sixth repeats one of them
        head = store.get_record(results[0].record_id)
        assert head is not None and head.version == len(changed)
    finally:
        store.close()


def test_every_shipped_example_passes_the_service_rules(store: SqlStore) -> None:
    """The examples and the demo clinic load through intake: the service's stricter identifier and
    reference rules refuse none of the documented forms."""
    examples = ROOT / "examples"
    singles = sorted((examples / "observations").glob("*.json")) + sorted(
        p for p in (examples / "consent").glob("*.json")
    )
    for path in singles:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["kind"] == "repair":
            intake_records(store, [observation("rupture")], at=AT)
        intake_records(store, [payload], at=AT, labels=[path.name])
    for name in ("1-consents", "2-sessions", "3-later"):
        batch = json.loads((examples / "demo" / "clinic" / f"{name}.json").read_text("utf-8"))
        assert intake_records(store, batch, at=AT)
