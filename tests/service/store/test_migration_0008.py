"""Migration 0008 (patient tokens keyed with the installation's secret): upgrading from 0007
rewrites every ``patient_tokens`` row from the public UUIDv5 to the keyed token and makes the
secret; downgrading writes the UUIDv5 tokens back and drops the secret; on SQLite and
PostgreSQL (each test on a schema of its own)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from fhir_alliance_service.store import current_revision, open_store, upgrade
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.patient_tokens import META_PATIENT_TOKEN_KEY
from fhir_alliance_service.store.tables import meta, patient_tokens
from sqlalchemy import insert, select

from .migrating import downgrade_to

#: The namespace of the tokens before 0008 (``store/patient_tokens.py`` at revision 0007).
PUBLIC_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir-alliance.org/console/patient")
#: More patients than the migration writes in one batch.
PATIENTS = [f"Patient/before-{n}" for n in range(1_203)] + [
    "https://clinic.example|mrn-0001",
    "Patient/ünïcode-7",
]


def _public(patient: str) -> str:
    return str(uuid.uuid5(PUBLIC_NAMESPACE, patient))


def _rows(url: str) -> dict[str, str]:
    """token → patient of every ``patient_tokens`` row."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = select(patient_tokens.c.token, patient_tokens.c.patient)
            return {token: patient for token, patient in connection.execute(query)}
    finally:
        engine.dispose()


def _secret(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = select(meta.c.value).where(meta.c.name == META_PATIENT_TOKEN_KEY)
            value: str | None = connection.execute(query).scalar_one_or_none()
            return value
    finally:
        engine.dispose()


@pytest.fixture
def url_at_0007(database_url: str) -> Iterator[str]:
    """``database_url`` taken back to 0007, with the tokens intake wrote then (UUIDv5)."""
    downgrade_to(database_url, "0007")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(patient_tokens), [{"token": _public(p), "patient": p} for p in PATIENTS]
            )
    finally:
        engine.dispose()
    yield database_url


def test_0008_keys_the_tokens_and_downgrades_back(
    url_at_0007: str, caplog: pytest.LogCaptureFixture
) -> None:
    """At 0007 a patient's token is the public UUIDv5 and there is no secret. Upgrading makes the
    secret (never logged) and rewrites every row: each patient is found by the store's keyed
    token and not by the old one, one row per patient still. Downgrading writes the UUIDv5
    tokens back and drops the secret; upgrading again makes a new secret."""
    url = url_at_0007
    assert _secret(url) is None
    assert _rows(url) == {_public(p): p for p in PATIENTS}

    with caplog.at_level(logging.DEBUG):
        upgrade(url)
    secret = _secret(url)
    assert secret is not None
    assert secret not in caplog.text
    rows = _rows(url)
    assert sorted(rows.values()) == sorted(PATIENTS)
    store = open_store(url)
    try:
        for patient in PATIENTS:
            assert rows[store.patient_token(patient)] == patient
            assert store.patient_for_token(store.patient_token(patient)) == patient
            assert store.patient_for_token(_public(patient)) is None
    finally:
        store.close()

    downgrade_to(url, "0007")
    assert current_revision(url) == "0007"
    assert _secret(url) is None
    assert _rows(url) == {_public(p): p for p in PATIENTS}

    upgrade(url)
    again = _secret(url)
    assert again is not None and again != secret
    store = open_store(url)
    try:
        for patient in PATIENTS[:3] + PATIENTS[-2:]:
            assert store.patient_for_token(store.patient_token(patient)) == patient
    finally:
        store.close()


def test_0008_on_a_database_without_patients_makes_the_secret(url_at_0007: str) -> None:
    """An installation with no patient yet gets its secret at the upgrade too."""
    engine = make_engine(url_at_0007)
    try:
        with engine.begin() as connection:
            connection.execute(patient_tokens.delete())
    finally:
        engine.dispose()
    upgrade(url_at_0007)
    assert _secret(url_at_0007) is not None
    assert _rows(url_at_0007) == {}
