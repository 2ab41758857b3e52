"""Patient aliases: a patient known by reference and by identifiers is one patient for the CDS
consult, the decision use case and the gate (``usecases/consents.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.consents import register_patient_alias
from fhir_alliance_service.usecases.decisions import decide_for_patient
from fhir_alliance_service.usecases.intake import intake_records
from flask.testing import FlaskClient

from fhir_alliance.errors import InputError

CONSULT = "/cds-services/patient-consent-consult"
MRN = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-042"}
MRN_TOKEN = f"{MRN['system']}|{MRN['value']}"
CLINIC = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.20.5"}
IRCP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
TREAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}


def _consent_by_reference() -> dict[str, Any]:
    """A permit filed under ``Patient/p42`` (the patient named by reference only)."""
    return {
        "kind": "consent",
        "id": "https://clinic.example.org/consents|alias-1",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p42"},
        "status": "active",
        "decision": "permit",
        "date": "2025-03-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example.org/policies/sharing-v2"}],
        "provision": {
            "actors": [
                {"role": IRCP, "reference": {"identifier": f"{CLINIC['system']}|{CLINIC['value']}"}}
            ],
            "purposes": [TREAT],
        },
    }


def _hook() -> dict[str, Any]:
    return {
        "hook": "patient-consent-consult",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2eb",
        "context": {"patientId": [MRN], "actor": [CLINIC], "purposeOfUse": ["TREAT"]},
    }


def _decision(client: FlaskClient, headers: dict[str, str]) -> str:
    response = client.post(CONSULT, json=_hook(), headers=headers)
    assert response.status_code == 200, response.json
    decision: str = response.json["cards"][0]["extension"]["decision"]
    return decision


def test_consult_by_identifier_finds_consent_filed_under_reference_once_aliased(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A LEAP consult naming the patient by identifier misses a consent filed under
    ``Patient/<id>`` until the identifier is registered as the patient's alias; then it permits."""
    intake_records(store, [_consent_by_reference()], at=datetime.now(UTC))
    assert _decision(client, auth_headers["consult"]) == "NO_CONSENT"
    keys = register_patient_alias(store, "Patient/p42", MRN_TOKEN, at=datetime.now(UTC))
    assert keys == ["Patient/p42", MRN_TOKEN]
    assert _decision(client, auth_headers["consult"]) == "CONSENT_PERMIT"


def test_decision_by_either_key_is_the_same_after_aliasing(store: Store) -> None:
    """The decision use case answers the same under the reference and under the alias."""
    intake_records(store, [_consent_by_reference()], at=datetime.now(UTC))
    register_patient_alias(store, "Patient/p42", MRN_TOKEN, at=datetime.now(UTC))
    recipient = f"{CLINIC['system']}|{CLINIC['value']}"
    now = datetime.now(UTC)
    by_alias = decide_for_patient(store, MRN_TOKEN, recipient, "TREAT", at=now)
    by_reference = decide_for_patient(store, "Patient/p42", recipient, "TREAT", at=now)
    assert by_alias.decision.outcome.value == by_reference.decision.outcome.value == "permit"


def test_alias_naming_another_patient_is_refused(store: Store) -> None:
    """An alias already filed under another patient is an input error naming ``alias``."""
    register_patient_alias(store, "Patient/p42", MRN_TOKEN, at=datetime.now(UTC))
    with pytest.raises(InputError) as caught:
        register_patient_alias(store, "Patient/p43", MRN_TOKEN, at=datetime.now(UTC))
    assert [issue.path for issue in caught.value.issues] == ["alias"]


@pytest.mark.parametrize("alias", ["not a key", "Observation/1", "urn:x|has space"])
def test_malformed_alias_is_refused(store: Store, alias: str) -> None:
    """An alias that is neither ``Patient/<id>`` nor ``system|value`` names the field."""
    with pytest.raises(InputError) as caught:
        register_patient_alias(store, "Patient/p42", alias, at=datetime.now(UTC))
    assert [issue.path for issue in caught.value.issues] == ["alias"]
