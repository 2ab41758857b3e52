"""The leases a worker holds, so that a database outage is not held against its records.

A worker whose store calls fail because the database cannot be reached (or its SQLite writers'
turn does not come in time) gives its batch up: the error unwinds the batch. Left alone, the
items' leases would expire and their next claim would count a lost lease against each of them,
as if the record had killed the worker. :class:`LeaseLedger` wraps the worker's store and keeps
the ids of the items it holds (claimed and not yet finished by a ``mark_*`` or ``release``).
When a batch fails with a database outage (:func:`is_store_outage`), :meth:`LeaseLedger.abandon`
keeps them aside, and the worker's next claim first hands them back with ``Store.release``: no
attempt and no lost lease counted (if the database is still down, that release fails and nothing
is claimed either). Those whose send had started (:meth:`LeaseLedger.sending`) may have landed
unrecorded: they are handed back noted *landing unknown* in the same transaction, so that, should
they end unsent (superseded, held), they are read back rather than left untracked; the items the
outage caught before their send are handed back as they were. Any other error leaves the leases
to expire (the claim that takes them over notes them, ``Store.claim``): a record that makes the
worker fail every time is still a poison record, dead-lettered after ``max_attempts`` lost leases.
Suspects (items whose earlier workers stopped on them) are kept one per batch, so that the records
a poison record took down with it get a result of their own (:meth:`LeaseLedger.claim`).

If the database stays down longer than the lease and another worker takes the items over first,
that takeover counts one lost lease, which the item's next result forgets (``Store.claim``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from fhir_alliance_service.store.engine import WriterTurnTimeout
from fhir_alliance_service.store.interface import (
    AuditEntry,
    OutboxItem,
    SentMark,
    SentResource,
    Store,
    SyncState,
)

__all__ = ["LeaseLedger", "is_store_outage"]

#: Errors that say "the database could not be reached or did not answer in time", not "this
#: record is bad": connections refused or dropped, a server shutting down, a timed-out write turn.
_OUTAGES = (OperationalError, InterfaceError, DisconnectionError, WriterTurnTimeout)


def is_store_outage(error: BaseException) -> bool:
    """The store failed for want of its database, not because of what was written."""
    return isinstance(error, _OUTAGES)


class LeaseLedger:
    """A worker's store (every call passed through) that remembers the items it holds."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}  # item id → the worker holding it
        self._sending: set[int] = set()  # those of them whose send started
        self._abandoned: dict[int, str] = {}
        self._abandoned_sent: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def held(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._held)

    def abandon(self, error: BaseException) -> int:
        """The worker gave its batches up because of ``error``: after a database outage, hand
        the items it holds back at its next claim; else let their leases expire. How many will
        be handed back."""
        with self._lock:
            if is_store_outage(error):
                self._abandoned.update(self._held)
                self._abandoned_sent.update(self._sending)
            self._held.clear()
            self._sending.clear()
            return len(self._abandoned)

    def sending(self, item_ids: Sequence[int]) -> None:
        """The worker is about to send ``item_ids``: from now on their send may land before its
        result is recorded (a hand-back after an outage notes them *landing unknown*)."""
        with self._lock:
            self._sending.update(i for i in item_ids if i in self._held)

    # -- the calls that lease and finish items ---------------------------------------------------
    def claim(
        self,
        worker: str,
        *,
        limit: int,
        lease_seconds: float,
        now: datetime,
        per_patient: int = 1,
    ) -> list[OutboxItem]:
        with self._lock:
            abandoned = [i for i, owner in self._abandoned.items() if owner == worker]
            sent = [i for i in abandoned if i in self._abandoned_sent]
        if abandoned:  # first, what an outage made us give up (raises while it lasts)
            if sent:  # their send may have landed: noted landing unknown, due at once
                self._store.release(sent, worker, at=now, landing_check_at=now)
            self._store.release([i for i in abandoned if i not in sent], worker, at=now)
            with self._lock:
                for item_id in abandoned:
                    self._abandoned.pop(item_id, None)
                    self._abandoned_sent.discard(item_id)
        items = self._store.claim(
            worker, limit=limit, lease_seconds=lease_seconds, now=now, per_patient=per_patient
        )
        with self._lock:
            # Ours already, still in hand (its lease ran out while another stage of this worker
            # has it): the claim only renewed the lease. Not claimed twice, and no suspect.
            items = [i for i in items if i.item_id not in self._held]
        items = self._one_suspect(items, worker, now)
        with self._lock:
            self._held.update((item.item_id, worker) for item in items)
        return items

    def _one_suspect(self, items: list[OutboxItem], worker: str, now: datetime) -> list[OutboxItem]:
        """Keep at most one *suspect* (an item whose earlier workers stopped on it without a
        result) in a batch and hand the others back at once, their lost leases kept. A worker
        that crashes on a poison record takes the records claimed beside it down too; claimed
        one per batch, those get a result (which forgets their lost leases) while the poison
        record alone keeps losing leases until it is dead-lettered. A patient's later items
        claimed with a handed-back suspect go back with it (patient order)."""
        suspects = [i for i in items if i.taken_over or i.lost_leases > 0]
        if len(suspects) <= 1:
            return items
        back = {i.patient for i in suspects[1:]}
        returned = [i.item_id for i in items if i.patient in back]
        self._store.release(returned, worker, at=now)
        return [i for i in items if i.patient not in back]

    def _finished(self, item_ids: Sequence[int]) -> None:
        with self._lock:
            for item_id in item_ids:
                self._held.pop(item_id, None)
                self._sending.discard(item_id)

    def release(
        self,
        item_ids: Sequence[int],
        worker: str,
        *,
        at: datetime,
        landing_check_at: datetime | None = None,
    ) -> int:
        count = self._store.release(item_ids, worker, at=at, landing_check_at=landing_check_at)
        self._finished(item_ids)
        return count

    def note_overwrite(
        self,
        item_id: int,
        worker: str,
        overwrite: AuditEntry,
        *,
        against: Sequence[SentResource] = (),
    ) -> bool:
        noted = self._store.note_overwrite(item_id, worker, overwrite, against=against)
        if not noted:  # the lease is lost: no longer ours to hand back, nor ours in hand
            self._finished([item_id])
        return noted

    def mark_sent_many(self, worker: str, marks: Sequence[SentMark], *, at: datetime) -> list[bool]:
        landed = self._store.mark_sent_many(worker, marks, at=at)
        self._finished([mark.item_id for mark in marks])
        return landed

    def mark_sent(self, item_id: int, worker: str, **kwargs: Any) -> bool:
        recorded = self._store.mark_sent(item_id, worker, **kwargs)
        self._finished([item_id])
        return recorded

    def mark_held(self, item_id: int, worker: str, **kwargs: Any) -> SyncState | None:
        recorded = self._store.mark_held(item_id, worker, **kwargs)
        self._finished([item_id])
        return recorded

    def mark_failed(self, item_id: int, worker: str, **kwargs: Any) -> SyncState | None:
        recorded = self._store.mark_failed(item_id, worker, **kwargs)
        self._finished([item_id])
        return recorded

    def mark_dead(self, item_id: int, worker: str, **kwargs: Any) -> SyncState | None:
        recorded = self._store.mark_dead(item_id, worker, **kwargs)
        self._finished([item_id])
        return recorded

    def as_store(self) -> Store:
        """This ledger where a :class:`Store` is expected (every other call is passed through)."""
        return cast(Store, self)
