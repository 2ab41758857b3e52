"""Migration 0009 (patient keys in canonical form): a store at 0008 that holds one patient under
several spellings of their identifier (records, outbox, audit, tokens, aliases, server links,
pulled resources) is rewritten to one canonical key per patient, merging what collides without
losing a row of data, and the held items of merged patients go to the gate again; downgrading
changes nothing. On SQLite and PostgreSQL (each test on a schema of its own)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from fhir_alliance_service.store import open_store, upgrade
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.store.patient_tokens import META_PATIENT_TOKEN_KEY, patient_token
from fhir_alliance_service.store.schema import MIGRATIONS
from fhir_alliance_service.store.sql import HELD_FOR_A_PERSON
from fhir_alliance_service.store.tables import (
    audit,
    outbox,
    patient_aliases,
    patient_tokens,
    pulled_resources,
    record_heads,
    records,
    remote_patients,
)
from fhir_alliance_service.usecases.consents import canonical_patient_key
from fhir_alliance_service.usecases.decisions import decide_for_patient
from fhir_alliance_service.usecases.intake import intake_records
from sqlalchemy import MetaData, insert, select, update

from fhir_alliance.terminology import IDENTIFIER_SYSTEM_ALIASES
from tests.service.api.test_patient_key_spellings import EHR, _consent, _rating

from .migrating import downgrade_to

SERVER = "http://ehr.example/fhir"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
#: One patient (a synthetic SSN), filed under the canonical key and three other spellings.
SSN = "http://hl7.org/fhir/sid/us-ssn|000-00-0042"
SSN_OID = "urn:oid:2.16.840.1.113883.4.1|000-00-0042"
SSN_OID_UPPER = "URN:OID:2.16.840.1.113883.4.1|000-00-0042"
SSN_BARE = "2.16.840.1.113883.4.1|000-00-0042"  # only a pulled resource spells it so
#: Keys of the alias rows (all synthetic).
MRN_UPPER, MRN = "URN:OID:1.2.3|m-7", "urn:oid:1.2.3|m-7"
CLINIC_UPPER, CLINIC = "https://Clinic.Example/mrn|q-9", "https://clinic.example/mrn|q-9"
UNTOUCHED = "urn:oid:9.9|z-1"
#: More spelt keys than the migration writes in one batch.
MANY = [f"URN:OID:1.2.840.{n}|v-{n}" for n in range(1_203)]
CONFLICT_HELD = HELD_FOR_A_PERSON[0]
NO_CONSENT = "no consent to share with the clinic's EHR"


def _migration() -> ModuleType:
    path = MIGRATIONS / "versions" / "0009_canonical_patient_keys.py"
    spec = importlib.util.spec_from_file_location("migration_0009", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(url: str) -> dict[str, list[str]]:
    """Every row of every table but Alembic's, as sorted JSON text per table."""
    engine = make_engine(url)
    try:
        reflected = MetaData()
        reflected.reflect(engine)
        with engine.connect() as connection:
            return {
                name: sorted(
                    json.dumps(dict(row._mapping), sort_keys=True, default=str)
                    for row in connection.execute(select(table))
                )
                for name, table in reflected.tables.items()
                if name != "alembic_version"
            }
    finally:
        engine.dispose()


def _execute(url: str, *statements: Any) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(statement)
    finally:
        engine.dispose()


def _select(url: str, statement: Any) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(statement))
    finally:
        engine.dispose()


def _respell(record_id: str, key: str) -> list[Any]:
    """Statements filing every row of ``record_id`` under ``key`` (as 0008's code did for a record
    posted in that spelling)."""
    return [
        update(table).where(table.c.record_id == record_id).values(patient=key)
        for table in (records, record_heads, outbox, audit)
    ]


def _hold(record_id: str, reason: str, **values: Any) -> Any:
    return (
        update(outbox)
        .where(outbox.c.record_id == record_id)
        .values(state=SyncState.HELD.value, held_reason=reason, **values)
    )


@pytest.fixture
def at_0008(database_url: str) -> Iterator[dict[str, str]]:
    """``database_url`` at 0008 holding the SSN patient under four spellings, and more; the
    record ids by name."""
    store = open_store(database_url)
    try:
        at = datetime.now(UTC)
        [deny] = intake_records(store, [_consent(SSN, 1, "deny")], at=at)
        [permit] = intake_records(store, [_consent(SSN, 2, "permit")], at=at)
        [held, upper, conflict] = intake_records(
            store, [_rating(SSN, "held"), _rating(SSN, "upper"), _rating(SSN, "conflict")], at=at
        )
        [other] = intake_records(store, [_rating("urn:oid:5.5|other", "other")], at=at)
        secret = store.get_meta(META_PATIENT_TOKEN_KEY)
        assert secret is not None
    finally:
        store.close()
    downgrade_to(database_url, "0008")
    # What the code at 0008 filed: the opt-out under the OID, a rating under the OID in capitals;
    # the permit and the other ratings under the FHIR URI. The rating was held for "no consent",
    # the other one for a person.
    _execute(
        database_url,
        *_respell(deny.record_id, SSN_OID),
        *_respell(upper.record_id, SSN_OID_UPPER),
        _hold(held.record_id, NO_CONSENT),
        _hold(conflict.record_id, CONFLICT_HELD, conflict="flagged"),
        _hold(other.record_id, NO_CONSENT),
        insert(patient_tokens).values(
            [
                {"token": patient_token(secret, key), "patient": key}
                for key in (SSN_OID, SSN_OID_UPPER, *MANY)
            ]
        ),
        insert(audit).values(
            [
                {
                    "action": "intake",
                    "patient": key,
                    "resource": {"resourceType": "AuditEvent"},
                    "at": T0,
                }
                for key in MANY
            ]
        ),
        insert(patient_aliases).values(
            [
                # Another spelling of the patient's own identifier: the same key once rewritten.
                {"alias": SSN_OID, "patient": SSN, "created_at": T0},
                # An alias of Patient/1, and Patient/2 an alias of its other spelling: one group.
                {"alias": MRN_UPPER, "patient": "Patient/1", "created_at": T0 + timedelta(days=2)},
                {"alias": "Patient/2", "patient": MRN, "created_at": T0 + timedelta(days=3)},
                # One identifier filed as an alias of two patients: they are one patient now.
                {"alias": CLINIC_UPPER, "patient": "Patient/3", "created_at": T0 + timedelta(1)},
                {"alias": CLINIC, "patient": "Patient/4", "created_at": T0},
                {"alias": "Patient/9", "patient": UNTOUCHED, "created_at": T0},
            ]
        ),
        insert(remote_patients).values(
            [
                # The oldest link of the merged patient stays its link; a newer one to another
                # server patient is kept under that reference; one to the same is one link.
                {"server": SERVER, "patient": SSN, "remote": "Patient/r2", "created_at": T0},
                {
                    "server": SERVER,
                    "patient": SSN_OID,
                    "remote": "Patient/r1",
                    "created_at": T0 + timedelta(1),
                },
                {
                    "server": SERVER,
                    "patient": SSN_OID_UPPER,
                    "remote": "Patient/r2",
                    "created_at": T0 + timedelta(2),
                },
            ]
        ),
        insert(pulled_resources).values(
            server=SERVER,
            resource_type="Consent",
            resource_id="c-bare",
            patient=SSN_BARE,
            origin="foreign",
            state="merged",
            updated_at=T0,
        ),
    )
    yield {
        "url": database_url,
        "deny": deny.record_id,
        "permit": permit.record_id,
        "held": held.record_id,
        "upper": upper.record_id,
        "conflict": conflict.record_id,
        "other": other.record_id,
    }


def test_0009_files_every_spelling_of_a_patient_under_one_key(at_0008: dict[str, str]) -> None:
    """Upgrading from 0008: every row kept, each under its canonical key; the opt-out filed under
    the OID now denies for the permit's and ratings' patient; the rating held for "no consent"
    goes to the gate again, a conflict waiting for a person and another patient's hold stay."""
    url = at_0008["url"]
    before = _table_rows(url)
    upgrade(url)
    after = _table_rows(url)
    for table in ("records", "record_heads", "outbox", "audit", "pulled_resources", "meta"):
        assert len(after[table]) == len(before[table]), table
    for table, column in (
        (records, "patient"),
        (record_heads, "patient"),
        (outbox, "patient"),
        (audit, "patient"),
        (pulled_resources, "patient"),
        (patient_tokens, "patient"),
        (remote_patients, "patient"),
        (patient_aliases, "alias"),
        (patient_aliases, "patient"),
    ):
        keys = {row[0] for row in _select(url, select(table.c[column]))} - {None}
        assert keys == {canonical_patient_key(key) for key in keys}, (table.name, column)

    store = open_store(url)
    try:
        assert {r.record_id for r in store.consents_for_patient(SSN)} == {
            at_0008["deny"],
            at_0008["permit"],
        }
        assert store.patients() == sorted({SSN, "urn:oid:5.5|other"})
        answer = decide_for_patient(store, SSN, EHR, "TREAT", at=datetime.now(UTC))
        assert answer.decision.outcome.value == "deny"
        states = {
            name: store.sync_status(at_0008[name])
            for name in ("held", "upper", "conflict", "other")
        }
        assert states["held"] is not None and states["held"].state is SyncState.QUEUED
        assert states["held"].held_reason is None
        assert states["upper"] is not None and states["upper"].state is SyncState.QUEUED
        assert states["conflict"] is not None and states["conflict"].state is SyncState.HELD
        assert states["other"] is not None and states["other"].state is SyncState.HELD
        # One console token per key; the merged spellings' tokens are gone.
        tokens = _select(url, select(patient_tokens.c.token, patient_tokens.c.patient))
        patients = [patient for _, patient in tokens]
        assert len(patients) == len(set(patients))
        assert set(patients) == {SSN, "urn:oid:5.5|other"} | {
            canonical_patient_key(k) for k in MANY
        }
        assert store.patient_for_token(store.patient_token(SSN)) == SSN
        secret = store.get_meta(META_PATIENT_TOKEN_KEY)
        assert secret is not None
        assert store.patient_for_token(patient_token(secret, SSN_OID)) is None
        # Aliases: the identity dropped; overlapping groups filed flat under their oldest row's
        # patient; a new alias for the kept server link; the untouched row as it was.
        aliases = {
            alias: patient
            for alias, patient in _select(
                url, select(patient_aliases.c.alias, patient_aliases.c.patient)
            )
        }
        assert aliases == {
            MRN: "Patient/1",
            "Patient/2": "Patient/1",
            CLINIC: "Patient/4",
            "Patient/3": "Patient/4",
            "Patient/9": UNTOUCHED,
            "Patient/r1": SSN,
        }
        assert store.patient_keys("Patient/2") == ["Patient/1", "Patient/2", MRN]
        assert store.patient_keys(CLINIC) == ["Patient/4", "Patient/3", CLINIC]
        assert store.remote_patients(SERVER) == {SSN: "Patient/r2", "Patient/r1": "Patient/r1"}
        [pulled] = _select(url, select(pulled_resources.c.patient))
        assert pulled[0] == SSN
    finally:
        store.close()

    # Downgrading changes nothing (the merge cannot be undone); upgrading again neither (compared
    # at 0009: later revisions add columns of their own).
    downgrade_to(url, "0009")
    merged = _table_rows(url)
    downgrade_to(url, "0008")
    assert _table_rows(url) == merged
    upgrade(url, "0009")
    assert _table_rows(url) == merged


def test_0009_on_a_store_with_canonical_keys_only_changes_nothing(database_url: str) -> None:
    """A store whose keys are all canonical (or references) is left exactly as it is."""
    store = open_store(database_url)
    try:
        at = datetime.now(UTC)
        by_reference = {**_rating(SSN, "ref"), "patient": {"reference": "Patient/p1"}}
        intake_records(store, [_consent(SSN, 1, "deny"), by_reference], at=at)
        store.add_patient_alias("Patient/p1", MRN, at=at)
        store.set_remote_patient(SERVER, SSN, "Patient/r1", at=at)
    finally:
        store.close()
    downgrade_to(database_url, "0008")
    _execute(database_url, _hold_all(NO_CONSENT))
    before = _table_rows(database_url)
    upgrade(database_url, "0009")  # later revisions add columns of their own
    assert _table_rows(database_url) == before


def _hold_all(reason: str) -> Any:
    return update(outbox).values(state=SyncState.HELD.value, held_reason=reason)


@pytest.mark.parametrize(
    "key",
    [
        SSN,
        SSN_OID,
        SSN_OID_UPPER,
        SSN_BARE,
        "urn:oid:2.16.840.1.113883.4.6|1234567893",
        "2.16.840.1.113883.4.6|1234567893",
        "HTTPS://Clinic.Example:8443/Path/MRN|Value-With-Case",
        "http://EXAMPLE.org|v",
        "urn:ietf:rfc:3986|URN:OID:1.2.3",
        "urn:ietf:rfc:3986|https://Org.Example/Id",
        "urn:uuid:0F8FAD5B-D9CB-469F-A165-70867728950E|x",
        "Patient/Ab-1",
        "https://ehr.example/fhir/Patient/1",
        "no-system-at-all",
        "1.2|x|y",
        # Every other spelling the library knows of an identifier system, and its bare OID.
        *(f"{spelling}|v-1" for spelling in IDENTIFIER_SYSTEM_ALIASES),
        *(f"{spelling.removeprefix('urn:oid:')}|v-1" for spelling in IDENTIFIER_SYSTEM_ALIASES),
    ],
)
def test_0009_rewrites_a_key_as_the_code_files_it(key: str) -> None:
    """The migration's copy of the rule gives what ``canonical_patient_key`` gives now, and its
    copy of the held reasons that wait for a person is the store's. (Should the rule change, keys
    stored before the change need a migration of their own: this test says so by failing.)"""
    migration = _migration()
    assert migration.canonical_key(key) == canonical_patient_key(key)
    assert migration.HELD_FOR_A_PERSON == HELD_FOR_A_PERSON
    assert migration._META_TOKEN_KEY == META_PATIENT_TOKEN_KEY


def test_0009_keeps_the_server_patients_of_merged_links(database_url: str) -> None:
    """Links of spellings of one patient to one server: the oldest is the patient's link, even
    when it was filed under a spelling; the standing one's server patient is still pulled, under
    its reference (an alias of the patient already); a link to a server patient that is another
    patient's key is dropped; a link on another server is only re-keyed."""
    key, spelt, bare = "urn:oid:1.7.7|a-1", "URN:OID:1.7.7|a-1", "1.7.7|a-1"
    downgrade_to(database_url, "0008")
    _execute(
        database_url,
        insert(remote_patients).values(
            [
                {"server": SERVER, "patient": key, "remote": "Patient/new", "created_at": T0},
                {
                    "server": SERVER,
                    "patient": spelt,
                    "remote": "Patient/old",
                    "created_at": T0 - timedelta(1),
                },
                {
                    "server": SERVER,
                    "patient": bare,
                    "remote": "Patient/stranger",
                    "created_at": T0 + timedelta(1),
                },
                {
                    "server": "http://other.example/fhir",
                    "patient": spelt,
                    "remote": "Patient/o",
                    "created_at": T0,
                },
            ]
        ),
        insert(patient_aliases).values(
            [
                {"alias": "Patient/new", "patient": key, "created_at": T0},
                {"alias": "Patient/stranger", "patient": "Patient/x", "created_at": T0},
            ]
        ),
    )
    upgrade(database_url)
    store = open_store(database_url)
    try:
        assert store.remote_patients(SERVER) == {key: "Patient/old", "Patient/new": "Patient/new"}
        assert store.remote_patients("http://other.example/fhir") == {key: "Patient/o"}
        assert store.patient_keys(key) == [key, "Patient/new"]
        assert store.patient_keys("Patient/stranger") == ["Patient/x", "Patient/stranger"]
    finally:
        store.close()
