"""Fixtures for the outside review of the sync worker's promises: the service tests' databases
and the sync tests' harness (store, settings, client, the real test FHIR server), and a store on
each of the two databases."""

from collections.abc import Iterator

import pytest
from fhir_alliance_service.store import SqlStore, open_store

from tests.service.conftest import (  # noqa: F401 (fixtures)
    empty_postgres_schema,
    postgres_url,
    sqlite_url,
)
from tests.service.sync.conftest import harness, sync_store  # noqa: F401 (fixtures)


@pytest.fixture(
    params=[
        pytest.param("sqlite_url", id="sqlite"),
        pytest.param("postgres_url", id="postgres", marks=pytest.mark.postgres),
    ]
)
def any_store(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """A store on a migrated SQLite database, then on PostgreSQL (the contract tests' two)."""
    opened = open_store(request.getfixturevalue(request.param))
    try:
        yield opened
    finally:
        opened.close()
