"""Record status for every sync state, and replay of dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SentResource, SyncState
from fhir_alliance_service.usecases.intake import intake_records
from fhir_alliance_service.usecases.status import (
    NotDeadLettered,
    RecordNotFound,
    record_status,
    replay_record,
)

from tests.service.usecases.payloads import observation

AT = datetime(2026, 12, 1, tzinfo=UTC)
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "expression": ["Observation.code"]}],
}


def _claimed(store: SqlStore) -> tuple[str, int]:
    [result] = intake_records(store, [observation("rupture")], at=AT)
    [item] = store.claim("w1", limit=1, lease_seconds=60, now=AT)
    return result.record_id, item.item_id


def test_unknown_record_is_not_found(store: SqlStore) -> None:
    """A record id the store does not know raises RecordNotFound."""
    with pytest.raises(RecordNotFound):
        record_status(store, "00000000-0000-5000-8000-000000000000")


def test_new_record_is_queued(store: SqlStore) -> None:
    """Right after intake the status is queued, version 1, no attempts."""
    [result] = intake_records(store, [observation("rupture")], at=AT)
    found = record_status(store, result.record_id)
    assert found.sync is not None
    assert (found.sync.state, found.sync.record_version, found.sync.attempts) == (
        SyncState.QUEUED,
        1,
        0,
    )
    assert found.record.identifier == observation("rupture")["id"]


def test_held_status_carries_the_reason(store: SqlStore) -> None:
    """A held item reports the gate's reason."""
    record_id, item_id = _claimed(store)
    assert store.mark_held(item_id, "w1", reason="no consent permits TREAT", audit=[], at=AT)
    sync = record_status(store, record_id).sync
    assert sync is not None
    assert (sync.state, sync.held_reason) == (SyncState.HELD, "no consent permits TREAT")


def test_sent_status_lists_server_ids_and_versions(store: SqlStore) -> None:
    """A sent item lists the resources on the server with their versions."""
    record_id, item_id = _claimed(store)
    sent = [SentResource("Observation", "abc", "3")]
    assert store.mark_sent(item_id, "w1", sent=sent, audit=[], at=AT)
    sync = record_status(store, record_id).sync
    assert sync is not None
    assert (sync.state, sync.sent) == (SyncState.SENT, tuple(sent))


def test_failed_status_has_the_next_attempt(store: SqlStore) -> None:
    """A transient failure reports when the next attempt is due."""
    record_id, item_id = _claimed(store)
    later = AT + timedelta(seconds=30)
    assert store.mark_failed(item_id, "w1", outcome=OUTCOME, next_attempt_at=later, at=AT)
    sync = record_status(store, record_id).sync
    assert sync is not None
    assert sync.state is SyncState.FAILED
    assert sync.next_attempt_at == later


def test_dead_letter_has_the_outcome_and_replay_requeues_it(store: SqlStore) -> None:
    """A dead letter carries the OperationOutcome; replay puts it back in the queue with 0 attempts."""
    record_id, item_id = _claimed(store)
    assert store.mark_dead(item_id, "w1", outcome=OUTCOME, audit=[], at=AT)
    sync = record_status(store, record_id).sync
    assert sync is not None
    assert (sync.state, dict(sync.last_outcome or {})) == (SyncState.DEAD_LETTERED, OUTCOME)
    replayed = replay_record(store, record_id, at=AT).sync
    assert replayed is not None
    assert (replayed.state, replayed.attempts) == (SyncState.QUEUED, 0)


def test_replay_of_a_record_that_is_not_dead_lettered_changes_nothing(store: SqlStore) -> None:
    """Replay refuses a queued record (NotDeadLettered) and leaves it as it was."""
    [result] = intake_records(store, [observation("rupture")], at=AT)
    with pytest.raises(NotDeadLettered):
        replay_record(store, result.record_id, at=AT)
    sync = record_status(store, result.record_id).sync
    assert sync is not None and sync.state is SyncState.QUEUED
