"""The patient key rule and the per-patient compiled consent engine with its cache."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, open_store, upgrade
from fhir_alliance_service.store.interface import NewRecord
from fhir_alliance_service.usecases.consents import engine_for_patient, patient_key
from fhir_alliance_service.usecases.intake import content_hash, intake_records

from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.model.common import Identifier, Ref
from tests.service.api.test_consent_identifier_spellings import _pulled, _revoked
from tests.service.usecases.payloads import plain_restriction, plain_sharing

AT = datetime(2026, 12, 1, tzinfo=UTC)


def test_patient_key_prefers_the_reference_then_the_identifier_token() -> None:
    """A reference wins when given; otherwise the identifier token system|value is the key."""
    mrn = Identifier("https://clinic.example.org/mrn", "000123")
    assert patient_key(Ref(reference="Patient/p1", identifier=mrn)) == "Patient/p1"
    assert patient_key(Ref(identifier=mrn)) == "https://clinic.example.org/mrn|000123"


def test_engine_holds_only_the_patients_consents(store: SqlStore) -> None:
    """The compiled engine of a patient carries that patient's consents, all readable."""
    intake_records(store, [plain_sharing(), plain_sharing("Patient/p2", value="c-2")], at=AT)
    found = engine_for_patient(store, "Patient/p1")
    assert [str(r.id) for r in found.records] == ["https://clinic.example.org/consents|c-plain-1"]
    assert found.unreadable == ()
    assert found.engine.consents == found.records


def test_engine_is_reused_until_the_patients_consents_change(store: SqlStore) -> None:
    """Same stamp: the very same compiled object; a new consent of the patient: a new compile."""
    intake_records(store, [plain_sharing()], at=AT)
    first = engine_for_patient(store, "Patient/p1")
    assert engine_for_patient(store, "Patient/p1") is first
    intake_records(store, [plain_sharing("Patient/p2", value="c-2")], at=AT)
    assert engine_for_patient(store, "Patient/p1") is first  # another patient's change
    intake_records(store, [plain_restriction()], at=AT)
    second = engine_for_patient(store, "Patient/p1")
    assert second is not first
    assert len(second.records) == 2


def test_two_stores_with_equal_stamps_never_share_an_engine(tmp_path: Path) -> None:
    """Two databases whose patient has the same consent count and versions get their own engines."""
    stores = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        upgrade(url)
        stores.append(open_store(url))
    try:
        intake_records(stores[0], [plain_sharing()], at=AT)
        intake_records(stores[1], [plain_restriction()], at=AT)
        a, b = (engine_for_patient(s, "Patient/p1") for s in stores)
        assert a.stamp == b.stamp
        assert [r.kind.value for r in a.records] == ["sharing"]
        assert [r.kind.value for r in b.records] == ["restriction"]
    finally:
        for s in stores:
            s.close()


def test_unreadable_consents_are_listed_not_dropped(store: SqlStore) -> None:
    """A stored consent body that no longer loads is listed in ``unreadable`` by record id."""
    intake_records(store, [plain_sharing()], at=AT)
    body = {"kind": "consent", "id": "https://clinic.example.org/consents|old-format", "v": 0}
    record = NewRecord(
        record_id="00000000-0000-5000-8000-0000000000aa",
        identifier="https://clinic.example.org/consents|old-format",
        kind="consent",
        family="consent",
        patient="Patient/p1",
        body=body,
        content_hash=content_hash(body),
    )
    store.put_records([record], audit=[], at=AT)
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == (record.record_id,)
    assert len(found.records) == 1


def _posted_before(body: dict[str, Any]) -> NewRecord:
    """``body`` as intake filed it before a consent's spellings were one record: under the
    record id of its identifier as posted."""
    dumped = CONSENT_MAPPER.dump(CONSENT_MAPPER.load(body))
    return NewRecord(
        record_id=resource_id(Identifier.parse(body["id"])),
        identifier=body["id"],
        kind="consent",
        family="consent",
        patient="Patient/p1",
        body=dumped,
        content_hash=content_hash(dumped),
    )


def test_two_versions_stored_under_two_spellings_are_unreadable_until_they_agree(
    store: SqlStore,
) -> None:
    """An active consent and its revoked version, stored before as two records under two
    spellings of one identifier: both are unreadable and nothing is compiled (the gate holds).
    The revoked version posted under the first spelling too makes them say the same: read once,
    nothing unreadable."""
    first = "https://clinic.example.org/consents|c-plain-1"
    second = "HTTPS://Clinic.Example.ORG/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=first)
    stored = [_posted_before(sharing), _posted_before(_revoked(sharing, second))]
    store.put_records(stored, audit=[], at=AT)
    held = engine_for_patient(store, "Patient/p1")
    assert held.unreadable == tuple(sorted(r.record_id for r in stored))
    assert held.records == ()
    [result] = intake_records(store, [_revoked(sharing, first)], at=AT)
    assert (result.record_id, result.version) == (stored[0].record_id, 2)
    settled = engine_for_patient(store, "Patient/p1")
    assert settled.unreadable == ()
    assert [r.status.value for r in settled.records] == ["revoked"]


@pytest.mark.parametrize("state", ["merged", "same-identifier", None])
def test_a_pulled_version_of_a_consent_posted_here_holds_while_it_stands(
    store: SqlStore, state: str | None
) -> None:
    """The EHR's active consent pulled, its revoked version posted here (one identifier,
    spelt another way): two versions, both unreadable while the pulled copy stands on the server
    (no row saying it does not: held too), nothing compiled."""
    first = "https://clinic.example.org/consents|c-plain-1"
    second = "HTTPS://Clinic.Example.ORG/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=first)
    pulled = _pulled(store, sharing, state)
    [posted] = intake_records(store, [_revoked(sharing, second)], at=AT)
    held = engine_for_patient(store, "Patient/p1")
    assert held.unreadable == tuple(sorted([pulled, posted.record_id]))
    assert held.records == ()


@pytest.mark.parametrize("state", ["deleted", "ignored", "copy-of-ours"])
def test_a_pulled_copy_gone_from_the_server_is_no_version_of_a_consent_posted_here(
    store: SqlStore, state: str
) -> None:
    """The pull's own revoked copy of a consent deleted on the server (or moved away, or a copy
    of ours) beside an active version posted here: read as they are, the posted one decides."""
    first = "https://clinic.example.org/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=first)
    _pulled(store, _revoked(sharing, first), state)
    intake_records(store, [sharing], at=AT)
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == ()
    assert sorted(r.status.value for r in found.records) == ["active", "revoked"]


def test_a_pulled_consent_posted_here_as_it_is_is_read_once(store: SqlStore) -> None:
    """The pulled consent posted here unchanged (under another spelling): one consent, read
    once, nothing unreadable."""
    sharing = dict(plain_sharing(), id="https://clinic.example.org/consents|c-plain-1")
    _pulled(store, sharing, "merged")
    intake_records(
        store, [dict(sharing, id="HTTPS://clinic.example.org/consents|c-plain-1")], at=AT
    )
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == ()
    assert [r.status.value for r in found.records] == ["active"]


#: Two keys of one patient: the reference, and an identifier registered as its alias.
ALIAS = "urn:oid:2.16.840.1.113883.4.1|123-45-6789"


@pytest.mark.parametrize("alias", [False, True], ids=["one key", "two alias keys"])
def test_two_pulled_versions_of_one_consent_hold_while_both_stand(
    store: SqlStore, alias: bool
) -> None:
    """The EHR's active consent and its revoked version, both pulled (merged before the pull
    compared identifiers, or filed under two keys of one patient, which the pull compares
    apart), both copies standing on the server: both unreadable, nothing compiled."""
    if alias:
        store.add_patient_alias("Patient/p1", ALIAS, at=AT)
    identifier = "https://clinic.example.org/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=identifier)
    active = _pulled(store, sharing, "merged")
    revoked = _pulled(
        store,
        _revoked(sharing, "HTTPS://Clinic.Example.ORG/consents|c-plain-1"),
        "merged",
        resource="c2",
        patient=ALIAS if alias else "Patient/p1",
    )
    held = engine_for_patient(store, "Patient/p1")
    assert held.unreadable == tuple(sorted([active, revoked]))
    assert held.records == ()


def test_pulled_copies_of_one_consent_from_two_servers_are_not_versions_of_each_other(
    store: SqlStore,
) -> None:
    """The same server under a new FHIR_BASE_URL: the copy pulled under the old URL, withdrawn
    by the pull (revoked here, its pulled row still ``merged``), beside the copy the new URL's
    pass read (active). Not two versions on one server: nothing held, the active copy decides
    (tests/service/sync/test_settings_changes.py runs this through the real pull)."""
    identifier = "https://clinic.example.org/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=identifier)
    _pulled(store, _revoked(sharing, identifier), "merged", server="https://old.example.org/fhir")
    _pulled(store, sharing, "merged", resource="c2")
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == ()
    assert sorted(r.status.value for r in found.records) == ["active", "revoked"]


@pytest.mark.parametrize("state", ["deleted", "ignored", "copy-of-ours"])
@pytest.mark.parametrize("both", [False, True], ids=["one gone", "both gone"])
def test_a_pulled_copy_gone_from_the_server_is_no_version_of_another_pulled_one(
    store: SqlStore, state: str, both: bool
) -> None:
    """The pull's own revoked copy of a consent deleted on the server (or moved away, or a copy
    of ours) beside the pulled copy that remains: read as they are, the one left decides."""
    identifier = "https://clinic.example.org/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=identifier)
    _pulled(store, sharing, state if both else "merged")
    _pulled(store, _revoked(sharing, identifier), state, resource="c2", patient=f"{ALIAS}")
    store.add_patient_alias("Patient/p1", ALIAS, at=AT)
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == ()
    assert sorted(r.status.value for r in found.records) == ["active", "revoked"]


def test_the_same_consent_pulled_twice_is_read_once(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One consent pulled twice under two resource ids (an import made twice, one identifier
    spelt two ways): one consent, read once, without asking the pulled rows."""
    asked: list[list[str]] = []
    real = store.pulled_states_of_records

    def counted(record_ids: list[str]) -> dict[str, tuple[str, str]]:
        asked.append(list(record_ids))
        return real(record_ids)

    monkeypatch.setattr(store, "pulled_states_of_records", counted)
    sharing = dict(plain_sharing(), id="https://clinic.example.org/consents|c-plain-1")
    _pulled(store, sharing, "merged")
    _pulled(
        store,
        dict(sharing, id="HTTPS://clinic.example.org/consents|c-plain-1"),
        "merged",
        resource="c2",
    )
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == ()
    assert [r.status.value for r in found.records] == ["active"]
    assert asked == []


def test_two_pulled_versions_none_of_them_active_are_read_as_they_are(store: SqlStore) -> None:
    """Two pulled versions of one consent that say otherwise, neither in force (the active one
    withdrawn here by the pull, as one pulled under an old base URL is, whose pulled row still
    says merged): none can permit, and no pull reads them again, so both are read."""
    identifier = "https://clinic.example.org/consents|c-plain-1"
    sharing = dict(plain_sharing(), id=identifier)
    _pulled(store, _revoked(sharing, identifier), "merged")
    withdrawn = _revoked(sharing, identifier)
    withdrawn["history"][-1] = dict(withdrawn["history"][-1], at="2025-05-02T00:00:00+00:00")
    _pulled(store, withdrawn, "merged", resource="c2")
    found = engine_for_patient(store, "Patient/p1")
    assert found.unreadable == ()
    assert [r.status.value for r in found.records] == ["revoked", "revoked"]
