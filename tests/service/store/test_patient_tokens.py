"""Patient tokens (the console's opaque patient ids): keyed with the installation's secret, so
that nobody can compute a patient's token from a reference; intake indexes every patient key it
stores, local or pulled, so that a token is found with one read; migration 0003 backfills the
patients stored before it. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fhir_alliance_service.store import SqlStore, open_store, upgrade
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.patient_tokens import META_PATIENT_TOKEN_KEY
from fhir_alliance_service.store.tables import meta, patient_tokens, record_heads
from fhir_alliance_service.store.tables import records as record_versions
from sqlalchemy import func, insert, select

from .builders import T0, at, record


def test_intake_indexes_each_patient_once_and_unknown_tokens_are_none(
    store: SqlStore, database_url: str
) -> None:
    """Each patient of a batch is found by its token; re-posting, a second record of the same
    patient and an unchanged batch add nothing; a token of no stored patient gives None."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    store.put_records([record(1), record(3), record(4, patient="Patient/p2")], audit=[], at=at(1))
    assert store.patient_for_token(store.patient_token("Patient/p1")) == "Patient/p1"
    assert store.patient_for_token(store.patient_token("Patient/p2")) == "Patient/p2"
    assert store.patient_for_token(store.patient_token("Patient/nobody")) is None
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:  # the index holds one row per patient
            count = connection.execute(select(func.count()).select_from(patient_tokens)).scalar()
    finally:
        engine.dispose()
    assert count == 2


#: The fixed public namespace the tokens were once the UUIDv5 in: anyone could compute them.
PUBLIC_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir-alliance.org/console/patient")


def test_tokens_are_keyed_per_installation_and_cannot_be_computed_from_a_reference(
    store: SqlStore, database_url: str, tmp_path: Path
) -> None:
    """A patient's token is not what the public namespace gives (which anyone could compute from
    a guessed MRN), another store on the same database gives the same one (the secret is the
    database's), another installation another one; tokens are UUID text (the URL's form)."""
    store.put_records([record(1, patient="https://clinic.example|mrn-1001")], audit=[], at=T0)
    token = store.patient_token("https://clinic.example|mrn-1001")
    assert str(uuid.UUID(token)) == token
    assert token != str(uuid.uuid5(PUBLIC_NAMESPACE, "https://clinic.example|mrn-1001"))
    assert store.patient_for_token(token) == "https://clinic.example|mrn-1001"
    guessed = str(uuid.uuid5(PUBLIC_NAMESPACE, "https://clinic.example|mrn-1001"))
    assert store.patient_for_token(guessed) is None
    same_database = open_store(database_url)
    elsewhere_url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    upgrade(elsewhere_url)
    elsewhere = open_store(elsewhere_url)
    try:
        assert same_database.patient_token("https://clinic.example|mrn-1001") == token
        assert elsewhere.patient_token("https://clinic.example|mrn-1001") != token
    finally:
        same_database.close()
        elsewhere.close()
    assert store.patient_token("Patient/p1") != store.patient_token("Patient/p2")


def test_the_secret_is_kept_in_the_meta_table_and_never_in_a_token(store: SqlStore) -> None:
    """The secret lives in the store's meta entry ``console.patient_token_key`` (made by the
    migration), long and random; no token carries it."""
    secret = store.get_meta(META_PATIENT_TOKEN_KEY)
    assert secret is not None and len(secret) >= 40
    assert secret not in store.patient_token("Patient/p1")


def test_a_database_without_the_secret_gets_one_all_stores_agree_on(
    database_url: str,
) -> None:
    """A database whose secret is missing (deleted by hand) gets a new one on first use; two
    stores opened before either made it end up with the same secret (insert-if-absent, then
    read), so their tokens agree."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(meta.delete().where(meta.c.name == META_PATIENT_TOKEN_KEY))
    finally:
        engine.dispose()
    first, second = open_store(database_url), open_store(database_url)
    try:
        assert first.patient_token("Patient/p1") == second.patient_token("Patient/p1")
        assert first.get_meta(META_PATIENT_TOKEN_KEY) is not None
    finally:
        first.close()
        second.close()


def test_a_record_moved_to_another_patient_and_a_pulled_record_are_indexed(
    store: SqlStore,
) -> None:
    """A new version that names another patient, and a remote-origin record, make their patients
    findable (the old patient stays findable: its older versions remain)."""
    store.put_records([record(1)], audit=[], at=T0)
    # Only another key of the same patient may carry a record on (intake refuses a real move).
    store.add_patient_alias("Patient/p1", "Patient/moved", at=T0)
    store.put_records([record(1, patient="Patient/moved", score=2)], audit=[], at=at(1))
    store.put_remote_records(
        [record(2, patient="Patient/pulled")], origin="https://ehr.example", audit=[], at=at(2)
    )
    for patient in ("Patient/p1", "Patient/moved", "Patient/pulled"):
        assert store.patient_for_token(store.patient_token(patient)) == patient


def test_a_patient_whose_token_was_committed_is_not_written_again(store: SqlStore) -> None:
    """Once a transaction of this store committed a patient's token, its later intakes send no
    token insert for that patient; one that rolled back is still sent the next time."""
    statements: list[str] = []
    store.raw.statement_listeners.append(statements.append)
    try:
        store.put_records([record(1)], audit=[], at=T0)
        assert any("patient_tokens" in s for s in statements)
        statements.clear()
        store.put_records([record(2)], audit=[], at=at(1))  # same patient, new record
        assert statements and not any("patient_tokens" in s for s in statements)
        with pytest.raises(TypeError):  # rolled back: a body that cannot be stored
            unstorable = replace(record(3, patient="Patient/rolled-back"), body={"x": object()})
            store.put_records([unstorable], audit=[], at=at(2))
        statements.clear()
        store.put_records([record(4, patient="Patient/rolled-back")], audit=[], at=at(3))
        assert any("patient_tokens" in s for s in statements)
    finally:
        store.raw.statement_listeners.remove(statements.append)
    assert (
        store.patient_for_token(store.patient_token("Patient/rolled-back")) == "Patient/rolled-back"
    )


@pytest.fixture
def url_at_0002(database_url: str) -> Iterator[str]:
    """``database_url`` (migrated to head by its fixture) taken back to revision 0002."""
    from alembic import command
    from alembic.config import Config
    from fhir_alliance_service.store.schema import MIGRATIONS

    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
    finally:
        engine.dispose()
    yield database_url


def test_migration_0003_backfills_the_patients_stored_before_it(url_at_0002: str) -> None:
    """Patients whose records were stored at revision 0002 are found by the tokens that
    ``Store.patient_token`` gives once the database is upgraded to the head (0003 backfills,
    0008 keys them)."""
    patients = [f"Patient/before-{n}" for n in range(3)] + ["https://clinic.example|mrn-7"]
    engine = make_engine(url_at_0002)
    try:
        with engine.begin() as connection:
            for number, patient in enumerate(patients * 2):  # two records per patient
                row = record(number, patient=patient)
                connection.execute(
                    insert(record_versions).values(
                        record_id=row.record_id,
                        version=1,
                        identifier=row.identifier,
                        kind=row.kind,
                        family=row.family,
                        patient=row.patient,
                        body=dict(row.body),
                        content_hash=row.content_hash,
                        created_at=T0,
                    )
                )
                connection.execute(
                    insert(record_heads).values(
                        record_id=row.record_id,
                        version=1,
                        family=row.family,
                        patient=row.patient,
                        content_hash=row.content_hash,
                        created_at=T0,
                        updated_at=T0,
                    )
                )
    finally:
        engine.dispose()
    upgrade(url_at_0002)
    store = open_store(url_at_0002)
    try:
        for patient in patients:
            assert store.patient_for_token(store.patient_token(patient)) == patient
        assert store.patient_for_token(store.patient_token("Patient/after")) is None
    finally:
        store.close()
