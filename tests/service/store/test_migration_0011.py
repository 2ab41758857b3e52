"""Migration 0011 (pending retraction checks): ``retraction_checks`` is added, empty, with the
store's rows in place (a check that failed before is not known: the full pass finds it), the
current code notes, claims and clears checks in it at once, and a downgrade removes it; on
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
from sqlalchemy import inspect

from .builders import T0, at, record
from .migrating import downgrade_to

TABLE = "retraction_checks"


@pytest.fixture
def url_with_items_at_0010(database_url: str) -> Iterator[str]:
    """``database_url`` with outbox items (one sent, one queued) and a noted retraction check,
    taken back to revision 0010."""
    store = open_store(database_url)
    try:
        store.put_records([record(1), record(2)], audit=[], at=T0)
        [first] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
        assert store.mark_sent(first.item_id, "w1", sent=[], audit=[], at=at(2))
        store.note_retraction_checks(["Patient/p1"])
    finally:
        store.close()
    downgrade_to(database_url, "0010")
    yield database_url


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0011_adds_the_checks_with_rows_in_place_and_downgrades(
    url_with_items_at_0010: str,
) -> None:
    """At 0010 there is no ``retraction_checks``; 0011 adds it empty, the outbox as it was, the
    store notes, claims and clears checks with it, and downgrading removes it again."""
    url = url_with_items_at_0010
    assert current_revision(url) == "0010"
    assert TABLE not in _tables(url)

    upgrade(url, "0011")
    assert current_revision(url) == "0011"
    assert TABLE in _tables(url)
    upgrade(url)  # head (a later revision may add its own)
    store = open_store(url)
    try:
        counts = store.counts_by_state()
        assert (counts[SyncState.SENT], counts[SyncState.QUEUED]) == (1, 1)
        assert store.claim_retraction_checks(limit=5, lease_seconds=30, now=at(10)) == []
        store.note_retraction_checks(["Patient/p1"])
        [check] = store.claim_retraction_checks(limit=5, lease_seconds=30, now=at(10))
        assert check.patient == "Patient/p1"
        assert store.clear_retraction_check(check)
    finally:
        store.close()

    downgrade_to(url, "0010")
    assert TABLE not in _tables(url)
    upgrade(url)
    assert current_revision(url) == head_revision()
