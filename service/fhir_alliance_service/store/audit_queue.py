"""The audit push queue in SQL: the :class:`~fhir_alliance_service.store.interface.Store` methods
that let ``audit_push.py`` retry or dead-letter AuditEvents and Provenances the FHIR server
refused, like the outbox does for records. Mixed into ``SqlStore``.

A PENDING row is due when ``push_next_at`` is NULL or past. A claim moves ``push_next_at`` to the
end of a lease (no failure counted): a pass that stops leaves its rows due again after it. On
PostgreSQL the claim skips rows another pass has locked (``FOR UPDATE SKIP LOCKED``); on SQLite
the writers' queue serialises claims. Pushing a row twice is harmless: its id is stored with it
and the push is a ``PUT``.

No two rows share a resource id (:func:`insert_audit`; every write of the trail but intake's own,
``SqlStore._put_records``, goes through :func:`ids_of_their_own`; intake's events name the record
version that write gives, each version written once): the builders (``audit.py``)
name a decision or a step by its record version and its millisecond, and a send by its record
version, which may be sent more than once, so two events can be built under one id. A ``PUT`` of
the second would replace the first on the server; the row written later gets an id of its own
instead (:func:`another_event_id`), decided in the write that stores it. On PostgreSQL that write
sees what is committed: two transactions storing events under one id at the same moment could
both keep it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)

from fhir_alliance.terminology import CANONICAL_BASE
from fhir_alliance_service.uuids import uuid5_text

from .interface import AuditEntry, AuditPushFailure, AuditPushState
from .tables import UNSETTLED_PUSH_SQL
from .tables import audit as audit_log

__all__ = [
    "AuditQueueSql",
    "TakenEventIds",
    "another_event_id",
    "event_id_sql",
    "ids_of_their_own",
    "insert_audit",
]

_PENDING = AuditPushState.PENDING.value
# Said in every query of the queue so that both backends use the partial index on it.
_UNSETTLED = text(UNSETTLED_PUSH_SQL)


def audit_entry(row: Any) -> AuditEntry:
    """An audit row as the interface shows it."""
    return AuditEntry(
        action=row.action,
        record_id=row.record_id,
        patient=row.patient,
        resource=row.resource,
        at=row.at,
        pushed=row.pushed,
        id=row.id,
        push_state=AuditPushState(row.push_state) if row.push_state else None,
        push_attempts=row.push_attempts,
        push_outcome=row.push_outcome,
    )


def audit_row(entry: AuditEntry) -> dict[str, Any]:
    """The columns of a new audit row (``pushed`` follows the push state)."""
    state = entry.push_state
    if entry.pushed and state is None:
        state = AuditPushState.PUSHED
    return {
        "action": entry.action,
        "record_id": entry.record_id,
        "patient": entry.patient,
        "resource": entry.resource,
        "at": entry.at,
        "pushed": state is AuditPushState.PUSHED,
        "push_state": state.value if state else None,
        "push_attempts": entry.push_attempts,
        "push_outcome": dict(entry.push_outcome) if entry.push_outcome is not None else None,
    }


#: Which of the resource ids given (None: all of them) rows about the records given have.
TakenEventIds = Callable[[Collection[str | None], Collection[str] | None], set[str]]

#: Records per lookup of ids taken: well under both databases' bound-parameter limits.
_RECORDS_PER_LOOKUP = 250


def event_id_sql(dialect: str) -> str:
    """SQL for the id of an audit row's resource (``audit.resource``, JSON) on ``dialect``."""
    if dialect == "postgresql":
        return "resource ->> 'id'"
    return "json_extract(resource, '$.id')"


def another_event_id(event_id: str, n: int) -> str:
    """The ``n``-th (1, 2, …) id for an event built under ``event_id`` when another row of the
    trail has that id already: deterministic, and as unlike ``event_id`` as any other UUIDv5."""
    return uuid5_text(uuid.NAMESPACE_URL, f"{CANONICAL_BASE}|audit|{event_id}|{n}")


def _event_id(entry: AuditEntry) -> str | None:
    value = entry.resource.get("id")
    return value if isinstance(value, str) else None


def ids_of_their_own(entries: Sequence[AuditEntry], taken: TakenEventIds) -> list[AuditEntry]:
    """``entries`` as they are stored: one whose resource id a row of the trail has already, or
    an earlier entry of ``entries``, gets the first :func:`another_event_id` of it that no row
    and no earlier entry has; the others keep theirs. The builders' ids name the record (and
    every row has its ``record_id``), so rows under one id are rows about one record: ``taken``
    is asked about the entries' records only, once for their ids (nearly always none is taken)
    and, when one is, once more for every id of those records."""
    built = [_event_id(entry) for entry in entries]
    named: dict[str | None, set[str]] = {}
    for entry, event_id in zip(entries, built, strict=True):
        if event_id is not None:
            named.setdefault(entry.record_id, set()).add(event_id)
    used = _asked(taken, list(named), named)
    twice = {i for i, n in Counter(i for i in built if i is not None).items() if n > 1}
    clashing = [record for record, event_ids in named.items() if event_ids & (used | twice)]
    if not clashing:
        return list(entries)
    used |= _asked(taken, clashing, None)
    stored: list[AuditEntry] = []
    seen: set[str] = set()
    for entry, event_id in zip(entries, built, strict=True):
        if event_id is not None:
            if event_id in used or event_id in seen:
                event_id = _free(event_id, used | seen)
                entry = replace(entry, resource={**entry.resource, "id": event_id})
            seen.add(event_id)
        stored.append(entry)
    return stored


def _free(event_id: str, used: Collection[str]) -> str:
    """The first :func:`another_event_id` of ``event_id`` not in ``used``."""
    n = 1
    while another_event_id(event_id, n) in used:
        n += 1
    return another_event_id(event_id, n)


def _asked(
    taken: TakenEventIds,
    records: list[str | None],
    named: dict[str | None, set[str]] | None,
) -> set[str]:
    """``taken`` asked about ``records`` a chunk at a time: about the ids ``named`` for them, or
    (``named`` None) about all of theirs."""
    found: set[str] = set()
    for start in range(0, len(records), _RECORDS_PER_LOOKUP):
        chunk = records[start : start + _RECORDS_PER_LOOKUP]
        asked = None if named is None else set().union(*(named[r] for r in chunk))
        found |= taken(chunk, asked)
    return found


def _taken_by_rows(connection: Connection) -> TakenEventIds:
    """:data:`TakenEventIds` over ``connection`` (in its transaction)."""
    event_id = literal_column(event_id_sql(connection.dialect.name), String())

    def taken(records: Collection[str | None], event_ids: Collection[str] | None) -> set[str]:
        known = [r for r in records if r is not None]
        about = [audit_log.c.record_id.in_(known)] if known else []
        if None in records:
            about.append(audit_log.c.record_id.is_(None))
        query = select(event_id).where(or_(*about))
        if event_ids is not None:
            query = query.where(event_id.in_(list(event_ids)))
        return {str(value) for value in connection.execute(query).scalars() if value is not None}

    return taken


def insert_audit(connection: Connection, entries: Sequence[AuditEntry]) -> None:
    """Write ``entries`` to the trail in ``connection``'s transaction, each under a resource id
    no other row has (:func:`ids_of_their_own`)."""
    if entries:
        stored = ids_of_their_own(entries, _taken_by_rows(connection))
        connection.execute(insert(audit_log), [audit_row(entry) for entry in stored])


class AuditQueueSql:
    """The audit push queue's store methods; the host class supplies ``_write`` and ``_read``
    (one transaction each, the writer's turn taken)."""

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def claim_audit_pushes(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[AuditEntry]:
        if limit <= 0:
            return []
        candidates = (
            select(audit_log.c.id)
            .where(
                _UNSETTLED,
                audit_log.c.push_state == _PENDING,
                or_(audit_log.c.push_next_at.is_(None), audit_log.c.push_next_at <= now),
            )
            .order_by(audit_log.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._write() as connection:
            ids = list(connection.execute(candidates).scalars())
            if not ids:
                return []
            connection.execute(
                update(audit_log)
                .where(audit_log.c.id.in_(ids))
                .values(push_next_at=now + timedelta(seconds=lease_seconds))
            )
            rows = connection.execute(
                select(audit_log).where(audit_log.c.id.in_(ids)).order_by(audit_log.c.id)
            )
            return [audit_entry(row) for row in rows]

    def record_audit_pushes(
        self, pushed: Sequence[int], failed: Sequence[AuditPushFailure], *, at: datetime
    ) -> None:
        if not pushed and not failed:
            return
        with self._write() as connection:
            for chunk in _chunks(list(pushed)):
                connection.execute(
                    update(audit_log)
                    .where(audit_log.c.id.in_(chunk), audit_log.c.push_state == _PENDING)
                    .values(
                        push_state=AuditPushState.PUSHED.value,
                        pushed=True,
                        push_next_at=None,
                        push_outcome=None,
                    )
                )
            for failure in failed:
                dead = failure.next_attempt_at is None
                connection.execute(
                    update(audit_log)
                    .where(audit_log.c.id == failure.entry_id, audit_log.c.push_state == _PENDING)
                    .values(
                        push_state=AuditPushState.DEAD_LETTERED.value if dead else _PENDING,
                        push_attempts=audit_log.c.push_attempts + 1,
                        push_next_at=failure.next_attempt_at,
                        push_outcome=dict(failure.outcome),
                    )
                )

    def audit_push_counts(self) -> dict[AuditPushState, int]:
        query = (
            select(audit_log.c.push_state, func.count())
            .where(_UNSETTLED)
            .group_by(audit_log.c.push_state)
        )
        with self._read() as connection:
            return {AuditPushState(state): int(n) for state, n in connection.execute(query)}

    def replay_audit_pushes(self) -> int:
        query = (
            update(audit_log)
            .where(_UNSETTLED, audit_log.c.push_state == AuditPushState.DEAD_LETTERED.value)
            .values(push_state=_PENDING, push_attempts=0, push_next_at=None)
        )
        with self._write() as connection:
            return int(connection.execute(query).rowcount)


def _chunks(values: list[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
