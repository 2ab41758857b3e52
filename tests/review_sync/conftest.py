"""Fixtures for the outside review of the sync worker's promises: the service tests' SQLite
database and the sync tests' harness (store, settings, client, the real test FHIR server)."""

from tests.service.conftest import sqlite_url  # noqa: F401 (a fixture)
from tests.service.sync.conftest import harness, sync_store  # noqa: F401 (fixtures)
