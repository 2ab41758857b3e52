"""The audit push queue in SQL: the :class:`~fhir_alliance_service.store.interface.Store` methods
that let ``audit_push.py`` retry or dead-letter AuditEvents and Provenances the FHIR server
refused, like the outbox does for records. Mixed into ``SqlStore``.

A PENDING row is due when ``push_next_at`` is NULL or past. A claim moves ``push_next_at`` to the
end of a lease (no failure counted): a pass that stops leaves its rows due again after it. On
PostgreSQL the claim skips rows another pass has locked (``FOR UPDATE SKIP LOCKED``); on SQLite
the writers' queue serialises claims. Pushing a row twice is harmless: its id is deterministic
and the push is a ``PUT``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select, text, update

from .interface import AuditEntry, AuditPushFailure, AuditPushState
from .tables import UNSETTLED_PUSH_SQL
from .tables import audit as audit_log

__all__ = ["AuditQueueSql"]

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
