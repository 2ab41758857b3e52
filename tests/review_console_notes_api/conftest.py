"""Fixtures for the outside review of the console, the session notes and the API's input
handling: the service tests' app on a fresh migrated SQLite store (``create_app``), its test
client, one API key per scope, and ``sync``: the real worker draining the app's outbox to the
real test FHIR server (``tests/service/api/test_notes.py``)."""

from tests.service.api.conftest import api_keys, auth_headers, store  # noqa: F401 (fixtures)
from tests.service.api.test_notes import sync  # noqa: F401 (fixture: the real worker)
from tests.service.conftest import app, client, make_app, sqlite_url  # noqa: F401 (fixtures)
