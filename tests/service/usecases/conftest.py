"""Fixtures of the use-case tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir_alliance_service.store import SqlStore, open_store


@pytest.fixture
def two_stores(database_url: str) -> Iterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one database, as two processes (or two gunicorn workers) have."""
    first, second = open_store(database_url), open_store(database_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()
