"""Contract of the consent readers, the audit trail, API keys and meta; on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import ApiKey, AuditEntry, SqlStore
from sqlalchemy.exc import IntegrityError

from .builders import T0, at, audit_entry, consent, record


def test_consents_for_patient_gives_newest_consent_versions_only(store: SqlStore) -> None:
    """Only that patient's consent records, each at its newest version."""
    store.put_records(
        [consent(1), consent(2), record(3), consent(4, patient="Patient/p2")], audit=[], at=T0
    )
    store.put_records([consent(2, status="inactive")], audit=[], at=at(1))
    consents = store.consents_for_patient("Patient/p1")
    assert [(c.record_id, c.version, c.body["score"]) for c in consents] == [
        ("rec-000001", 1, "active"),
        ("rec-000002", 2, "inactive"),
    ]
    assert {c.family for c in consents} == {"consent"}
    assert store.consents_for_patient("Patient/nobody") == []


def test_consents_stamp_changes_exactly_when_the_patients_consents_change(
    store: SqlStore,
) -> None:
    """The stamp moves on a new consent or a new consent version, and not on an unchanged
    re-post, another patient's consent or an observation."""
    empty = store.consents_stamp("Patient/p1")
    store.put_records([consent(1)], audit=[], at=T0)
    one = store.consents_stamp("Patient/p1")
    assert one != empty
    store.put_records([consent(1)], audit=[], at=at(1))
    store.put_records([record(2), consent(3, patient="Patient/p2")], audit=[], at=at(1))
    assert store.consents_stamp("Patient/p1") == one
    store.put_records([consent(1, status="inactive")], audit=[], at=at(2))
    revised = store.consents_stamp("Patient/p1")
    assert revised not in {one, empty}
    store.put_records([consent(4)], audit=[], at=at(3))
    assert store.consents_stamp("Patient/p1") not in {revised, one, empty}


def test_patient_consents_stamp_gives_the_keys_and_moves_with_any_key_or_alias(
    store: SqlStore,
) -> None:
    """One call gives the patient's keys and a stamp that moves on a consent under any key and
    on a new alias, and not on an observation or another patient's consent."""
    assert store.patient_consents_stamp("Patient/p1")[0] == ["Patient/p1"]
    store.put_records([consent(1)], audit=[], at=T0)
    keys, one = store.patient_consents_stamp("Patient/p1")
    assert keys == store.patient_keys("Patient/p1")
    store.put_records([record(2), consent(3, patient="Patient/p2")], audit=[], at=at(1))
    assert store.patient_consents_stamp("Patient/p1")[1] == one
    store.add_patient_alias("Patient/p1", "urn:mrn|7", at=at(2))
    keys, aliased = store.patient_consents_stamp("urn:mrn|7")
    assert keys == ["Patient/p1", "urn:mrn|7"]
    assert aliased != one
    store.put_records([consent(4, patient="urn:mrn|7")], audit=[], at=at(3))
    assert store.patient_consents_stamp("Patient/p1")[1] not in {one, aliased}


def test_audit_entries_are_added_listed_filtered_and_paged(store: SqlStore) -> None:
    """Audit entries come back in insertion order with ids, filtered by record and paged."""
    resource = {"resourceType": "Provenance", "target": [{"reference": "Observation/x"}]}
    store.add_audit(
        [
            audit_entry("intake", "rec-000001", when=at(1)),
            AuditEntry("disclose", "rec-000002", "Patient/p2", resource, at(2), pushed=True),
            audit_entry("hold", "rec-000001", when=at(3)),
        ]
    )
    store.add_audit([])
    entries = store.list_audit()
    assert [(e.action, e.record_id, e.at) for e in entries] == [
        ("intake", "rec-000001", at(1)),
        ("disclose", "rec-000002", at(2)),
        ("hold", "rec-000001", at(3)),
    ]
    ids = [e.id for e in entries]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
    assert (entries[1].resource, entries[1].pushed, entries[1].patient) == (
        resource,
        True,
        "Patient/p2",
    )
    assert entries[0].pushed is False
    assert [e.action for e in store.list_audit(record_id="rec-000001")] == ["intake", "hold"]
    assert [e.action for e in store.list_audit(limit=1, after=ids[0])] == ["disclose"]


def _key(key_id: str = "fa_3f9c1b2a") -> ApiKey:
    return ApiKey(
        key_id=key_id,
        name="ehr bridge",
        scopes=frozenset({"records:write", "status:read"}),
        secret_hash="ab" * 32,
        created_at=T0,
    )


def test_api_keys_are_added_found_and_revoked(store: SqlStore) -> None:
    """A key is found by its id as added; revoking stamps it once; unknown keys are None."""
    store.add_api_key(_key())
    assert store.find_api_key("fa_3f9c1b2a") == _key()
    assert store.find_api_key("fa_unknown") is None
    assert store.revoke_api_key("fa_3f9c1b2a", at=at(5)) is True
    assert store.revoke_api_key("fa_3f9c1b2a", at=at(6)) is False
    assert store.revoke_api_key("fa_unknown", at=at(6)) is False
    revoked = store.find_api_key("fa_3f9c1b2a")
    assert revoked is not None and revoked.revoked_at == at(5)


def test_a_duplicate_api_key_id_is_refused(store: SqlStore) -> None:
    """Adding a second key with the same id fails, without echoing the secret's hash, and
    leaves the first one intact."""
    store.add_api_key(_key())
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate") as caught:
        store.add_api_key(ApiKey("fa_3f9c1b2a", "other", frozenset(), "cd" * 32, at(1)))
    assert "cd" * 32 not in str(caught.value)  # statement parameters stay out of errors
    assert store.find_api_key("fa_3f9c1b2a") == _key()


def test_meta_values_are_set_overwritten_and_read(store: SqlStore) -> None:
    """``set_meta`` stores or replaces a named value; a missing name reads as None."""
    assert store.get_meta("fhir_version") is None
    store.set_meta("fhir_version", "4.0.1")
    store.set_meta("last_contact", datetime(2026, 3, 1, tzinfo=UTC).isoformat())
    store.set_meta("fhir_version", "5.0.0")
    assert store.get_meta("fhir_version") == "5.0.0"
    assert store.get_meta("last_contact") == "2026-03-01T00:00:00+00:00"


def test_ping_answers_on_a_live_database(store: SqlStore) -> None:
    """``ping`` returns quietly while the database is reachable."""
    store.ping()


def test_sql_store_implements_every_store_method_with_its_signature() -> None:
    """``SqlStore`` has every method of the ``Store`` protocol, with the same parameters (names,
    kinds and defaults), so callers coded against the interface work unchanged."""
    import inspect

    from fhir_alliance_service.store import Store

    methods = [
        name
        for name, member in vars(Store).items()
        if callable(member) and not name.startswith("_")
    ]
    assert {"put_records", "claim", "consents_stamp", "get_meta"} <= set(methods)
    for name in methods:
        expected = inspect.signature(getattr(Store, name)).parameters
        actual = inspect.signature(getattr(SqlStore, name)).parameters
        assert [(p.name, p.kind, p.default) for p in actual.values()] == [
            (p.name, p.kind, p.default) for p in expected.values()
        ], name
