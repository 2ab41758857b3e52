"""The audit trail's reads use migration 0004's indexes on SQLite (the query plan of the very
statements the store runs): reads by time range use ``ix_audit_at``, and the push queue's claim
and counts use ``ix_audit_unsettled_push_state_id`` instead of scanning the whole trail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fhir_alliance_service.store import SqlStore, open_store
from sqlalchemy import event

from .builders import T0, at


@contextmanager
def _statements(store: SqlStore) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def _plans(store: SqlStore, call: Callable[[SqlStore], object], table_word: str) -> list[str]:
    """The query plans of the statements ``call`` runs that read ``FROM audit``."""
    with _statements(store) as seen:
        call(store)
    plans = []
    raw = store.engine.raw_connection()
    try:
        for statement, params in seen:
            if table_word not in statement or not statement.lstrip().upper().startswith("SELECT"):
                continue
            rows = raw.cursor().execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
            plans.append(" | ".join(str(row[-1]) for row in rows))
    finally:
        raw.close()
    assert plans, "no audit read seen"
    return plans


def test_audit_reads_use_their_indexes(sqlite_url: str) -> None:
    """Counting by day searches ``ix_audit_at``; the push claim and counts search the partial
    index of the push queue."""
    store = open_store(sqlite_url)
    try:
        [by_day] = _plans(
            store,
            lambda s: s.audit_counts_by_day(["intake"], since=T0, until=at(86400)),
            "FROM audit",
        )
        assert "USING INDEX ix_audit_at" in by_day, by_day
        [counts] = _plans(store, lambda s: s.audit_push_counts(), "FROM audit")
        assert "ix_audit_unsettled_push_state_id" in counts, counts
        [claim, *_] = _plans(
            store, lambda s: s.claim_audit_pushes(limit=10, lease_seconds=1, now=T0), "FROM audit"
        )
        assert "ix_audit_unsettled_push_state_id" in claim, claim
    finally:
        store.close()
