"""Decisions from stored consents: the engine's answer for a patient, its explanation, and bad codes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import NewRecord
from fhir_alliance_service.usecases.decisions import decide_for_patient, parse_party
from fhir_alliance_service.usecases.intake import content_hash, intake_records

from fhir_alliance.consent import DecisionOutcome
from fhir_alliance.errors import InputError
from tests.service.usecases.payloads import EHR, plain_restriction, plain_sharing

AT = datetime(2025, 6, 1, tzinfo=UTC)
INTAKE_AT = datetime(2026, 12, 1, tzinfo=UTC)


def test_permit_names_the_deciding_consent_and_provision(store: SqlStore) -> None:
    """A sharing consent for the EHR and TREAT permits, and the explanation names it."""
    intake_records(store, [plain_sharing()], at=INTAKE_AT)
    answer = decide_for_patient(store, "Patient/p1", EHR, "TREAT", at=AT)
    assert answer.decision.outcome is DecisionOutcome.PERMIT
    [basis] = answer.decision.basis
    assert (str(basis.consent), basis.path) == (
        "https://clinic.example.org/consents|c-plain-1",
        "root",
    )
    assert answer.explanation.startswith("decision: permit")
    assert "c-plain-1, base decision (permit)" in answer.explanation


def test_restriction_of_the_recipient_denies(store: SqlStore) -> None:
    """A restriction naming the recipient overrides the sharing permit (deny overrides)."""
    intake_records(store, [plain_sharing(), plain_restriction()], at=INTAKE_AT)
    answer = decide_for_patient(store, "Patient/p1", EHR, "TREAT", at=AT)
    assert answer.decision.outcome is DecisionOutcome.DENY
    assert "r-plain-1" in answer.explanation


def test_a_patient_without_consents_gets_no_consent(store: SqlStore) -> None:
    """Another patient's consents never answer: the outcome is no-consent."""
    intake_records(store, [plain_sharing()], at=INTAKE_AT)
    answer = decide_for_patient(store, "Patient/p2", EHR, "TREAT", at=AT)
    assert answer.decision.outcome is DecisionOutcome.NO_CONSENT


def test_outside_the_consent_period_nothing_permits(store: SqlStore) -> None:
    """The sharing consent ends 2026-03-01: after it, the answer is no longer permit."""
    intake_records(store, [plain_sharing()], at=INTAKE_AT)
    answer = decide_for_patient(
        store, "Patient/p1", EHR, "TREAT", at=datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert answer.decision.outcome is not DecisionOutcome.PERMIT


def test_a_revocation_changes_the_next_decision(store: SqlStore) -> None:
    """The compiled engine is cached, yet a revocation stored since is honoured at once."""
    intake_records(store, [plain_sharing()], at=INTAKE_AT)
    assert (
        decide_for_patient(store, "Patient/p1", EHR, "TREAT", at=AT).decision.outcome
        is DecisionOutcome.PERMIT
    )
    revocation = {
        "kind": "consent-revocation",
        "consent": "https://clinic.example.org/consents|c-plain-1",
        "at": "2025-05-01T00:00:00+00:00",
    }
    intake_records(store, [revocation], at=INTAKE_AT)
    answer = decide_for_patient(store, "Patient/p1", EHR, "TREAT", at=AT)
    assert answer.decision.outcome is not DecisionOutcome.PERMIT


def test_an_unreadable_stored_consent_denies_and_says_so(store: SqlStore) -> None:
    """A stored consent that no longer loads turns a permit into DENY with a note, never no-consent."""
    intake_records(store, [plain_sharing()], at=INTAKE_AT)
    body = {"kind": "consent", "id": "https://clinic.example.org/consents|broken"}
    broken = NewRecord(
        record_id="00000000-0000-5000-8000-000000000001",
        identifier="https://clinic.example.org/consents|broken",
        kind="consent",
        family="consent",
        patient="Patient/p1",
        body=body,
        content_hash=content_hash(body),
    )
    store.put_records([broken], audit=[], at=INTAKE_AT)
    answer = decide_for_patient(store, "Patient/p1", EHR, "TREAT", at=AT)
    assert answer.decision.outcome is DecisionOutcome.DENY
    assert answer.unreadable == (broken.record_id,)
    assert "could not be read" in answer.explanation


@pytest.mark.parametrize(
    ("recipient", "purpose", "action", "paths"),
    [
        (EHR, "MAKE-MONEY", "disclose", {"purpose"}),
        (EHR, "TREAT", "sell", {"action"}),
        ("../../etc/passwd", "TREAT", "disclose", {"recipient"}),
        ("'; DROP TABLE records; --", "NOPE", "x", {"recipient", "purpose", "action"}),
    ],
)
def test_bad_codes_and_parties_are_refused_by_field(
    store: SqlStore, recipient: str, purpose: str, action: str, paths: set[str]
) -> None:
    """Unknown purposes and actions, and recipients that are neither Type/id nor system|value, name their field."""
    with pytest.raises(InputError) as caught:
        decide_for_patient(store, "Patient/p1", recipient, purpose, action=action, at=AT)
    assert {i.path for i in caught.value.issues} == paths


def test_a_time_without_offset_is_refused(store: SqlStore) -> None:
    """The decision time needs a UTC offset."""
    with pytest.raises(InputError) as caught:
        decide_for_patient(store, "Patient/p1", EHR, "TREAT", at=datetime(2025, 6, 1))
    assert [i.path for i in caught.value.issues] == ["at"]


def test_parties_are_references_or_identifier_tokens() -> None:
    """``Type/id`` becomes a typed reference, ``system|value`` an identifier."""
    assert parse_party("Organization/ehr-1", path="x").type == "Organization"
    identifier = parse_party("https://npi.example|42", path="x").identifier
    assert identifier is not None and identifier.value == "42"
