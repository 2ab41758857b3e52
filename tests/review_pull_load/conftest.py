"""Fixtures for the outside review of the pull and of ``fhir-alliance load``: the service tests'
databases, the sync tests' harness (store, settings, client, the real test FHIR server)."""

from tests.review_sync.conftest import any_store  # noqa: F401 (fixtures)
from tests.service.conftest import (  # noqa: F401 (fixtures)
    database,
    empty_postgres_schema,
    make_app,
    opened,
    postgres_url,
    root_logging_restored,
    sqlite_url,
)
from tests.service.sync.conftest import harness, sync_store  # noqa: F401 (fixtures)
