"""Sync status of one record, and replay of dead letters (plain functions over the store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fhir_alliance_service.store.interface import Store, StoredRecord, SyncState, SyncStatus

__all__ = ["NotDeadLettered", "RecordNotFound", "RecordStatus", "record_status", "replay_record"]


class RecordNotFound(LookupError):
    """No record with this id (the message never names it: ids come from URLs)."""


class NotDeadLettered(Exception):
    """Replay asked for a record whose newest item is not dead-lettered; nothing changed."""


@dataclass(frozen=True, slots=True)
class RecordStatus:
    """A record's newest version and the state of its newest outbox item (``None`` when the store
    has no item for it, which intake never leaves behind)."""

    record: StoredRecord
    sync: SyncStatus | None


def record_status(store: Store, record_id: str) -> RecordStatus:
    """The record's sync status; raises :class:`RecordNotFound`."""
    record = store.get_record(record_id)
    if record is None:
        raise RecordNotFound("no such record")
    return RecordStatus(record=record, sync=store.sync_status(record_id))


def replay_record(store: Store, record_id: str, *, at: datetime) -> RecordStatus:
    """Re-queue the record's dead-lettered item (attempts start again) and return its new status.
    Raises :class:`RecordNotFound`, or :class:`NotDeadLettered` (nothing changed)."""
    current = record_status(store, record_id)
    if current.sync is None or current.sync.state is not SyncState.DEAD_LETTERED:
        state = "not in the outbox" if current.sync is None else current.sync.state.value
        raise NotDeadLettered(f"only a dead-lettered record can be replayed; this one is {state}")
    store.replay(record_id, at=at)
    return record_status(store, record_id)
