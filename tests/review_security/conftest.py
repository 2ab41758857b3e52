"""Fixtures for the outside security review: the service tests' app factory on a fresh migrated
SQLite store (``create_app``), its test client, one API key per scope, and the CLI tests'
``database`` (a migrated SQLite store named by FHIR_ALLIANCE_DATABASE_URL, no other setting)."""

from tests.service.api.conftest import api_keys, auth_headers, store  # noqa: F401 (fixtures)
from tests.service.conftest import (  # noqa: F401 (fixtures)
    app,
    client,
    database,
    make_app,
    root_logging_restored,
    sqlite_url,
)
