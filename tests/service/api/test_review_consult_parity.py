"""Review (consent engine, deny by default): the CDS consult answers as the library engine does
over the same stored consents, whichever way and however many ways the hook names the patient."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.consents import register_patient_alias
from fhir_alliance_service.usecases.intake import intake_records
from flask.testing import FlaskClient

from fhir_alliance.consent import ConsentEngine
from fhir_alliance.consent.cds_hooks import card_response, request_from_hook
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.model.common import Identifier
from fhir_alliance.schemas.consent import load_consent

CONSULT = "/cds-services/patient-consent-consult"
MRN = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-042"}
MRN_TOKEN = f"{MRN['system']}|{MRN['value']}"
#: Another identifier of the same patient that the service has never seen.
NATIONAL = {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"}
CLINIC = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.20.5"}
CLINIC_TOKEN = f"{CLINIC['system']}|{CLINIC['value']}"
IRCP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
TREAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}


def _consent(value: str, decision: str, patient: dict[str, str], kind: str) -> dict[str, Any]:
    return {
        "kind": "consent",
        "id": f"https://clinic.example.org/consents|{value}",
        "consent_kind": kind,
        "patient": patient,
        "status": "active",
        "decision": decision,
        "date": "2025-03-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example.org/policies/sharing-v2"}],
        "provision": {
            "actors": [{"role": IRCP, "reference": {"identifier": CLINIC_TOKEN}}],
            "purposes": [TREAT],
        },
    }


#: A permit filed under the MRN, and a restriction of the same recipient filed under the
#: patient's reference (the two keys are registered as one patient).
PERMIT = _consent("share", "permit", {"identifier": MRN_TOKEN}, "sharing")
RESTRICTION = _consent("restrict", "deny", {"reference": "Patient/p42"}, "restriction")


def _hook(*patient_ids: dict[str, str]) -> dict[str, Any]:
    return {
        "hook": "patient-consent-consult",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ec",
        "context": {"patientId": list(patient_ids), "actor": [CLINIC], "purposeOfUse": ["TREAT"]},
    }


def _decision(client: FlaskClient, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = client.post(CONSULT, json=body, headers=headers)
    assert response.status_code == 200, response.json
    decision: str = response.json["cards"][0]["extension"]["decision"]
    return decision


def _library(body: dict[str, Any]) -> str:
    """The library engine over the same consents, the patient's keys linked (as aliases say)."""
    directory = ActorDirectory([("Patient/p42", [Identifier.parse(MRN_TOKEN, path="patient")])])
    engine = ConsentEngine([load_consent(PERMIT), load_consent(RESTRICTION)], directory=directory)
    request = request_from_hook(body, at=datetime.now(UTC))
    card = card_response(engine.decide(request))
    decision: str = card["cards"][0]["extension"]["decision"]
    return decision


def test_a_second_patient_identifier_does_not_drop_a_restriction(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Named by its MRN alone the consult denies (the restriction filed under the aliased
    reference counts). Named by the MRN and a second identifier, the consult merged the
    consents into an engine without the patient's directory: the restriction no longer matched
    the patient and the permit answered CONSENT_PERMIT."""
    intake_records(store, [PERMIT, RESTRICTION], at=datetime.now(UTC))
    register_patient_alias(store, "Patient/p42", MRN_TOKEN, at=datetime.now(UTC))
    headers = auth_headers["consult"]
    assert _decision(client, headers, _hook(MRN)) == _library(_hook(MRN)) == "CONSENT_DENY"
    both = _hook(MRN, NATIONAL)
    assert _decision(client, headers, both) == _library(both) == "CONSENT_DENY"
    reversed_ = _hook(NATIONAL, MRN)
    assert _decision(client, headers, reversed_) == "CONSENT_DENY"
