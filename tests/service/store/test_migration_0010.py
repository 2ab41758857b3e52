"""Migration 0010 (sends whose landing is unknown): ``outbox.landing_check_at`` and its partial
index are added with the outbox's rows in place (none noted: a lost answer from before is not
known now), the current code reads and uses them at once, and a downgrade removes both; on SQLite
and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir_alliance_service.store import (
    SyncState,
    current_revision,
    head_revision,
    open_store,
    upgrade,
)
from fhir_alliance_service.store.engine import make_engine
from sqlalchemy import inspect

from .builders import T0, at, record
from .migrating import downgrade_to

INDEX = "ix_outbox_landing_unknown_state_landing_check_at"
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}


@pytest.fixture
def url_with_items_at_0009(database_url: str) -> Iterator[str]:
    """``database_url`` with outbox items in several states (superseded, failed, queued),
    taken back to revision 0009."""
    store = open_store(database_url)
    try:
        store.put_records([record(1, score=1), record(2)], audit=[], at=T0)
        store.put_records([record(1, score=2)], audit=[], at=at(1))  # v1 superseded
        [first, *_] = store.claim("w1", limit=1, lease_seconds=30, now=at(2))
        store.mark_failed(first.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(3), at=at(2))
    finally:
        store.close()
    downgrade_to(database_url, "0009")
    yield database_url


def _schema(url: str) -> tuple[set[str], set[str]]:
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        columns = {str(c["name"]) for c in inspector.get_columns("outbox")}
        indexes = {str(ix["name"]) for ix in inspector.get_indexes("outbox")}
        return columns, indexes
    finally:
        engine.dispose()


def test_0010_adds_the_note_with_rows_in_place_and_downgrades(url_with_items_at_0009: str) -> None:
    """At 0009 the outbox has no ``landing_check_at``; 0010 adds it (NULL on every row) with its
    partial index, the store counts and notes with it, and downgrading removes both again."""
    url = url_with_items_at_0009
    assert current_revision(url) == "0009"
    columns, indexes = _schema(url)
    assert "landing_check_at" not in columns and INDEX not in indexes

    upgrade(url, "0010")
    assert current_revision(url) == "0010"
    columns, indexes = _schema(url)
    assert "landing_check_at" in columns and INDEX in indexes
    upgrade(url)  # later revisions add tables of their own: the store opens at head only
    store = open_store(url)
    try:
        counts = store.counts_by_state()
        assert (counts[SyncState.SUPERSEDED], counts[SyncState.FAILED]) == (1, 1)
        assert store.landing_unknown_count() == 0
        [item] = store.claim("w2", limit=1, lease_seconds=30, now=at(10))
        store.mark_dead(
            item.item_id, "w2", outcome=OUTCOME, audit=[], at=at(11), landing_check_at=at(12)
        )
        assert store.landing_unknown_count() == 1
        [check] = store.claim_landing_checks(limit=5, lease_seconds=30, now=at(12))
        assert check.item_id == item.item_id
    finally:
        store.close()

    downgrade_to(url, "0009")
    columns, indexes = _schema(url)
    assert "landing_check_at" not in columns and INDEX not in indexes
    upgrade(url)
    assert current_revision(url) == head_revision()
