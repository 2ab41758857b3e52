"""One patient, one key, however the identifier's system is spelt (``usecases/consents.py``:
``patient_key``): an opt-out filed under one spelling of a patient's identifier decides for the
records, the decision endpoint and the consult that name the patient by another spelling, a
patient's records are found under any spelling, and an AI-notes consent counts for a note posted
under another spelling. Before, each spelling was a patient of its own:
the deny was never seen (fail open)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.consents import register_patient_alias
from flask.testing import FlaskClient

from fhir_alliance.terminology import canonical_identifier
from tests.service.api.test_notes import _note, _recording_consent
from tests.service.usecases.payloads import observation

Headers = dict[str, dict[str, str]]

EHR = "Organization/ehr-clinic"
#: The EHR as a LEAP consult names it (by identifier).
EHR_IDENTIFIER = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.20.5"}
IRCP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
TREAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
AT = "2026-06-01T00:00:00+00:00"

#: Two spellings of one identifier each (synthetic values): the SSN's OID and its FHIR URI, an OID
#: in upper and lower case, and an http(s) host in mixed and lower case.
SAME_IDENTIFIER = [
    ("urn:oid:2.16.840.1.113883.4.1|000-00-0042", "http://hl7.org/fhir/sid/us-ssn|000-00-0042"),
    ("urn:oid:2.16.840.1.113883.3.9999.1|p-042", "URN:OID:2.16.840.1.113883.3.9999.1|p-042"),
    ("https://clinic.example.org/mrn|p-042", "https://Clinic.Example.ORG/mrn|p-042"),
]
SPELLING_IDS = ["ssn-oid-uri", "oid-case", "host-case"]
#: (the opt-out's spelling, the permit's and the record's), each pair both ways round.
DENY_AND_PERMIT = [
    pytest.param(*spellings, id=f"{name}-{way}")
    for name, (one, other) in zip(SPELLING_IDS, SAME_IDENTIFIER, strict=True)
    for way, spellings in (("deny-first", (one, other)), ("deny-second", (other, one)))
]


def _consent(patient: str, number: int, decision: str) -> dict[str, Any]:
    """A consent of ``patient`` (``system|value``) about sharing with the EHR (named by reference
    and by identifier) for treatment: ``permit`` shares, ``deny`` is the patient's opt-out."""
    return {
        "kind": "consent",
        "id": f"https://clinic.example.org/consents|spelling-{number}",
        "consent_kind": "sharing",
        "patient": {"identifier": patient},
        "status": "active",
        "decision": decision,
        "date": f"2026-0{number}-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example.org/policies/sharing-v2"}],
        "provision": {
            "actors": [
                {"role": IRCP, "reference": {"reference": EHR, "type": "Organization"}},
                {
                    "role": IRCP,
                    "reference": {
                        "identifier": f"{EHR_IDENTIFIER['system']}|{EHR_IDENTIFIER['value']}"
                    },
                },
            ],
            "purposes": [TREAT],
        },
    }


def _rating(patient: str, value: str = "r-1") -> dict[str, Any]:
    rating = observation("dimension-rating")
    rating["patient"] = {"identifier": patient}
    rating["id"] = f"https://clinic.example.org/alliance-records|spelling-{value}"
    return rating


def _canonical(key: str) -> str:
    """``key`` as the library compares identifiers (what the store files it under)."""
    return "|".join(canonical_identifier(*key.split("|")))


def _path(key: str) -> str:
    return quote(key, safe=":/")


def _decision(client: FlaskClient, headers: Headers, patient: str) -> str:
    response = client.get(
        f"/v1/patients/{_path(patient)}/decision",
        query_string={"recipient": EHR, "purpose": "TREAT", "at": AT},
        headers=headers["read"],
    )
    assert response.status_code == 200, response.json
    decision: str = response.json["decision"]
    return decision


def _consult(client: FlaskClient, headers: Headers, patient: str) -> str:
    system, _, value = patient.partition("|")
    hook = {
        "hook": "patient-consent-consult",
        "hookInstance": "8d4b3c5e-52c1-4e0e-9a36-0d2d7d1bb0f1",
        "context": {
            "patientId": [{"system": system, "value": value}],
            "actor": [EHR_IDENTIFIER],
            "purposeOfUse": ["TREAT"],
        },
    }
    response = client.post(
        "/cds-services/patient-consent-consult", json=hook, headers=headers["consult"]
    )
    assert response.status_code == 200, response.json
    decision: str = response.json["cards"][0]["extension"]["decision"]
    return decision


def _post(client: FlaskClient, headers: Headers, url: str, body: Any) -> None:
    response = client.post(url, json=body, headers=headers["write"])
    assert response.status_code in (200, 201), response.json


@pytest.mark.parametrize(("denied", "permitted"), DENY_AND_PERMIT)
def test_an_opt_out_under_one_spelling_denies_under_another(
    client: FlaskClient, auth_headers: Headers, denied: str, permitted: str
) -> None:
    """The opt-out is filed under one spelling of the patient's identifier, a permit and a rating
    under another: the decision endpoint (by either spelling) and the consult answer deny."""
    _post(client, auth_headers, "/v1/consents", [_consent(denied, 1, "deny")])
    _post(client, auth_headers, "/v1/consents", [_consent(permitted, 2, "permit")])
    _post(client, auth_headers, "/v1/records", [_rating(permitted)])
    assert _decision(client, auth_headers, permitted) == "deny"
    assert _decision(client, auth_headers, denied) == "deny"
    assert _consult(client, auth_headers, permitted) == "CONSENT_DENY"
    assert _consult(client, auth_headers, denied) == "CONSENT_DENY"


@pytest.mark.parametrize(("first", "second"), SAME_IDENTIFIER, ids=SPELLING_IDS)
def test_a_patients_records_are_found_under_any_spelling(
    client: FlaskClient, store: Store, auth_headers: Headers, first: str, second: str
) -> None:
    """Records posted under two spellings are filed under one canonical key and listed together
    by either spelling; a permit under one spelling answers the decision asked by the other."""
    _post(client, auth_headers, "/v1/records", [_rating(first, "a"), _rating(second, "b")])
    _post(client, auth_headers, "/v1/consents", [_consent(first, 1, "permit")])
    key = _canonical(first)
    assert key == _canonical(second)
    assert store.patients() == [key]
    for spelling in (first, second, key):
        response = client.get(
            f"/v1/patients/{_path(spelling)}/records", headers=auth_headers["read"]
        )
        assert response.status_code == 200, response.json
        identifiers = sorted(r["identifier"] for r in response.json["records"])
        assert len(identifiers) == 3, spelling
        assert _decision(client, auth_headers, spelling) == "permit"


def test_an_alias_that_is_another_spelling_of_the_patient_is_that_patient(store: Store) -> None:
    """Registering another spelling of the patient's identifier as its alias files nothing (it is
    the same key); aliases are filed in canonical form and found by any spelling."""
    now = datetime.now(UTC)
    ssn_oid, ssn_uri = SAME_IDENTIFIER[0]
    assert register_patient_alias(store, ssn_oid, ssn_uri, at=now) == [ssn_uri]
    mrn_upper, mrn = SAME_IDENTIFIER[1][1], SAME_IDENTIFIER[1][0]
    assert register_patient_alias(store, "Patient/p42", mrn_upper, at=now) == ["Patient/p42", mrn]
    assert store.patient_keys(mrn) == ["Patient/p42", mrn]


@pytest.mark.parametrize(("first", "second"), SAME_IDENTIFIER, ids=SPELLING_IDS)
def test_an_ai_notes_consent_under_one_spelling_counts_for_a_note_under_another(
    client: FlaskClient, auth_headers: Headers, first: str, second: str
) -> None:
    """The client's recording/AI-notes consent filed under one spelling permits the AI-drafted
    note posted under another (before, the note was refused: no consent found)."""
    run = uuid.uuid4().hex[:10]
    consent = _recording_consent(run)
    named = {"identifier": first, "type": "Patient"}
    consent["patient"] = consent["grantor"] = named
    consent["verification"][0]["verified_with"] = named
    consent["history"][0]["by"] = named
    _post(client, auth_headers, "/v1/records", [consent])
    note = _note(run)
    note["patient"] = {"identifier": second, "type": "Patient"}
    response = client.post("/v1/notes", json=note, headers=auth_headers["write"])
    assert response.status_code == 201, response.json
