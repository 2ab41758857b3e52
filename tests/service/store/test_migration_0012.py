"""Migration 0012 (an overwrite whose answer was lost): ``outbox.lost_overwrite`` is added with the
outbox's rows in place (NULL on every row: an overwrite lost before is not known now), the current
code keeps and hands out an overwrite's AuditEvent with it at once, and a downgrade removes it; on
SQLite and PostgreSQL."""

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
from sqlalchemy import inspect, text

from .builders import T0, at, audit_entry, record
from .migrating import downgrade_to

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}


@pytest.fixture
def url_with_items_at_0011(database_url: str) -> Iterator[str]:
    """``database_url`` with outbox items superseded, failed (noted *landing unknown*) and
    queued, taken back to revision 0011."""
    store = open_store(database_url)
    try:
        store.put_records([record(1, score=1), record(2)], audit=[], at=T0)
        store.put_records([record(1, score=2)], audit=[], at=at(1))  # v1 superseded
        [first, *_] = store.claim("w1", limit=1, lease_seconds=30, now=at(2))
        store.mark_failed(
            first.item_id,
            "w1",
            outcome=OUTCOME,
            next_attempt_at=at(3),
            at=at(2),
            landing_check_at=at(32),
        )
    finally:
        store.close()
    downgrade_to(database_url, "0011")
    yield database_url


def _columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {str(c["name"]) for c in inspect(engine).get_columns("outbox")}
    finally:
        engine.dispose()


def _kept(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text("SELECT lost_overwrite FROM outbox")).scalars())
    finally:
        engine.dispose()


def test_0012_adds_the_lost_overwrite_with_rows_in_place_and_downgrades(
    url_with_items_at_0011: str,
) -> None:
    """At 0011 the outbox has no ``lost_overwrite``; 0012 adds it, NULL on every row (the note
    kept as it was), the store keeps an overwrite's AuditEvent in it and hands it out with the
    item, and downgrading removes it again."""
    url = url_with_items_at_0011
    assert current_revision(url) == "0011"
    assert "lost_overwrite" not in _columns(url)

    upgrade(url, "0012")
    assert current_revision(url) == "0012"
    assert "lost_overwrite" in _columns(url)
    assert _kept(url) == [None, None, None]
    store = open_store(url)
    try:
        counts = store.counts_by_state()
        assert (counts[SyncState.SUPERSEDED], counts[SyncState.FAILED]) == (1, 1)
        assert store.landing_unknown_count() == 1
        [item] = store.claim("w2", limit=1, lease_seconds=30, now=at(10))
        assert item.lost_overwrite is None
        overwrite = audit_entry("conflict", item.record_id, when=at(11))
        store.mark_dead(
            item.item_id,
            "w2",
            outcome=OUTCOME,
            audit=[],
            at=at(11),
            landing_check_at=at(41),
            lost_overwrite=overwrite,
        )
        [check] = store.claim_landing_checks(limit=5, lease_seconds=30, now=at(41))
        assert (check.item_id, check.lost_overwrite) == (item.item_id, overwrite)
    finally:
        store.close()

    downgrade_to(url, "0011")
    assert "lost_overwrite" not in _columns(url)
    upgrade(url)
    assert current_revision(url) == head_revision()
