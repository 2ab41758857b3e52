"""Fixtures for the service's tests: migrated SQLite and PostgreSQL databases and an open store.

* ``sqlite_url``: a migrated SQLite file in ``tmp_path``.
* ``postgres_url``: a fresh, migrated schema (random name) in database ``test`` on
  127.0.0.1:5432, dropped afterwards; the schema travels in the URL's ``search_path``.
* ``database_url``: each of the two in turn (ids ``sqlite`` and ``postgres``).
* ``store``: ``open_store(database_url)``, closed afterwards.

PostgreSQL tests are skipped only when nothing listens on 127.0.0.1:5432; with ``CI=true`` they
fail instead, so that CI never passes by skipping them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from fhir_alliance_service.app import create_app
from fhir_alliance_service.store import SqlStore, open_store, upgrade
from flask import Flask
from flask.testing import FlaskClient
from psycopg import sql
from pytest_httpserver import HTTPServer

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_DATABASE = "test"
POSTGRES_ADMIN_DSN = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=test"


@functools.cache
def _postgres_reachable() -> bool:
    try:
        with socket.create_connection((POSTGRES_HOST, POSTGRES_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def postgres_available() -> None:
    """Skip the calling test when PostgreSQL is unreachable; fail instead when ``CI=true``."""
    if _postgres_reachable():
        return
    reason = f"PostgreSQL is not reachable on {POSTGRES_HOST}:{POSTGRES_PORT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


def postgres_schema_url(schema: str) -> str:
    """The store URL for ``schema`` in the test database (``search_path`` set per connection)."""
    return (
        f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DATABASE}"
        f"?options=-csearch_path%3D{schema}"
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database file in ``tmp_path``."""
    url = f"sqlite:///{tmp_path / 'fhir-alliance.db'}"
    upgrade(url)
    return url


@pytest.fixture
def empty_postgres_schema() -> Iterator[str]:
    """A freshly created, empty schema (its name); dropped with everything in it afterwards."""
    postgres_available()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


@pytest.fixture
def postgres_url(empty_postgres_schema: str) -> str:
    """A migrated PostgreSQL schema of its own, in database ``test``."""
    url = postgres_schema_url(empty_postgres_schema)
    upgrade(url)
    return url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database URL: SQLite, then PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    """An open store on ``database_url``; closed (its pool disposed) afterwards."""
    opened = open_store(database_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def root_logging_restored() -> Iterator[None]:
    """`worker` and `sync-once` add a JSON handler to the root logger; undo it after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def database(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite store that every command reads from FHIR_ALLIANCE_DATABASE_URL (and no
    other FHIR_ALLIANCE_* setting of the environment the tests run in)."""
    for name in list(os.environ):
        if name.startswith("FHIR_ALLIANCE_") and name != "FHIR_ALLIANCE_TEST_BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    return sqlite_url


@pytest.fixture
def opened(database: str) -> Iterator[SqlStore]:
    store = open_store(database)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def make_app(sqlite_url: str) -> Iterator[Callable[..., Flask]]:
    """Make the service's Flask app on the test's fresh SQLite database with these settings (the
    apps made are closed after the test)."""
    made: list[Flask] = []

    def make(**settings: Any) -> Flask:
        application = create_app({"database_url": sqlite_url, **settings})
        application.testing = True
        made.append(application)
        return application

    yield make
    for application in made:
        application.extensions["fhir_alliance"].store.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The service's Flask app on a fresh migrated SQLite database."""
    return make_app()


def private_key_file(key: Any, path: Path, mode: int = 0o600) -> Path:
    """``key`` written to ``path`` as an unencrypted PKCS#8 PEM file with ``mode`` (by default only
    its owner may read it, as the settings require of a secret file)."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(mode)
    return path


def answer_metadata(server: HTTPServer, version: str = "4.0.1") -> None:
    """Have the fault-injection ``server`` answer ``/fhir/metadata`` with a minimal
    CapabilityStatement of FHIR ``version``."""
    statement = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": version,
        "status": "active",
        "kind": "instance",
        "format": ["json"],
        "rest": [{"mode": "server"}],
    }
    server.expect_request("/fhir/metadata").respond_with_json(
        statement, content_type="application/fhir+json"
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
