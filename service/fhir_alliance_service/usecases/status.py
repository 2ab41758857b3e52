"""Sync status of one record, and replay of dead letters (plain functions over the store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fhir_alliance_service.store.interface import Store, StoredRecord, SyncState, SyncStatus

__all__ = ["RecordNotFound", "RecordStatus", "record_status", "replay_record"]


class RecordNotFound(LookupError):
    """No record with this id (the message never names it: ids come from URLs)."""


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
    """Re-queue the record's dead-lettered item (attempts start again). Raises
    :class:`RecordNotFound`; a record that is not dead-lettered is returned unchanged (check
    ``sync.state``)."""
    current = record_status(store, record_id)
    if current.sync is not None and current.sync.state is SyncState.DEAD_LETTERED:
        store.replay(record_id, at=at)
        return record_status(store, record_id)
    return current
