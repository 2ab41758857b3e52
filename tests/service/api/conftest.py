"""Fixtures for the API tests: an app on a migrated SQLite store, its test client, and one API key
per scope.

* ``app``: ``create_app`` on ``sqlite_url`` (the store fixture of ``tests/service/conftest.py``);
  its store is closed afterwards.
* ``store``: the app's own store (overrides the parent ``store`` fixture inside ``tests/service/api``,
  so a test reads exactly what the API wrote).
* ``client``: Flask's test client.
* ``api_keys``: scope name → raw key, one key per scope, created in the app's store.
* ``auth_headers``: scope name → ``{"Authorization": "Bearer <key>"}``.
"""

from __future__ import annotations

import pytest
from fhir_alliance_service.auth import SCOPES, create_api_key
from fhir_alliance_service.store.interface import Store
from flask import Flask


@pytest.fixture
def store(app: Flask) -> Store:
    """The store the app writes to."""
    opened: Store = app.extensions["fhir_alliance"].store
    return opened


@pytest.fixture
def api_keys(store: Store) -> dict[str, str]:
    """One raw API key per scope (``read``, ``write``, ``admin``, ``consult``)."""
    return {scope: create_api_key(store, f"test {scope}", [scope]) for scope in sorted(SCOPES)}


@pytest.fixture
def auth_headers(api_keys: dict[str, str]) -> dict[str, dict[str, str]]:
    """Scope name → the Authorization header carrying that scope's key."""
    return {scope: {"Authorization": f"Bearer {key}"} for scope, key in api_keys.items()}
