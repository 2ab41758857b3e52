"""The fixtures give a working, migrated store on each backend."""

from __future__ import annotations

from fhir_alliance_service.store import SqlStore


def test_store_fixture_opens_a_migrated_database(store: SqlStore) -> None:
    """The ``store`` fixture answers a ping and starts with an empty outbox."""
    store.ping()
    assert sum(store.counts_by_state().values()) == 0
