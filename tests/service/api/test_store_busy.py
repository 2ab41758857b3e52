"""Intake when the SQLite store's writers are busy past ``sqlite_write_wait_seconds``: a 503
OperationOutcome with ``Retry-After``, nothing written, and the same request taken in once the
store is free."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator

import pytest
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store.interface import Store
from flask import Flask
from sqlalchemy.engine import make_url

from tests.service.usecases.payloads import observation


@pytest.fixture
def busy_app(sqlite_url: str) -> Iterator[Flask]:
    application = create_app({"database_url": sqlite_url, "sqlite_write_wait_seconds": 0.2})
    application.testing = True
    try:
        yield application
    finally:
        application.extensions["fhir_alliance"].store.close()


def test_intake_answers_503_with_retry_after_when_the_store_stays_busy(
    busy_app: Flask, sqlite_url: str
) -> None:
    """While another process holds the write turn, POST /v1/records is a 503 OperationOutcome
    (code transient) with Retry-After and stores nothing; after it lets go, the same POST is 201."""
    store: Store = busy_app.extensions["fhir_alliance"].store
    headers = {"Authorization": f"Bearer {create_api_key(store, 'busy test', ['write'])}"}
    client = busy_app.test_client()
    payload = observation("srs-administration")
    database = make_url(sqlite_url).database
    assert database
    lock_file = os.open(os.path.abspath(database) + "-writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # another process writing
        response = client.post("/v1/records", json=payload, headers=headers)
    finally:
        os.close(lock_file)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.mimetype == "application/fhir+json"
    [issue] = response.json["issue"]
    assert issue["code"] == "transient", issue
    assert "nothing was written" in json.dumps(issue)
    assert store.list_records(limit=10) == []
    assert sum(store.counts_by_state().values()) == 0
    assert client.post("/v1/records", json=payload, headers=headers).status_code == 201
