"""Consents and Observations as other EHRs write them (valid FHIR, unusual shapes), for the
library review tests: builders only, no assertions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_alliance.consent import ConsentDecision, ConsentEngine
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.model.consent import ConsentRecord

ROOT = Path(__file__).resolve().parents[2]
V3 = "http://terminology.hl7.org/CodeSystem"
AT = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
RECIPIENT = "Organization/ehr"
#: The recipient role as another EHR codes it: its own code first, the v3 code beside it.
TWO_CODING_IRCP = {
    "coding": [
        {"system": "https://other-ehr.example/fhir/CodeSystem/roles", "code": "recipient"},
        {"system": f"{V3}/v3-ParticipationType", "code": "IRCP"},
    ]
}
IRCP = {"coding": [{"system": f"{V3}/v3-ParticipationType", "code": "IRCP"}]}
#: A modifier extension nobody here knows ("this actor is everyone *but* the one named").
FOREIGN_MODIFIER = [
    {"url": "https://other-ehr.example/fhir/StructureDefinition/all-except", "valueBoolean": True}
]
TREAT = {"system": f"{V3}/v3-ActReason", "code": "TREAT"}


def r4_consent(provision: dict[str, Any], **elements: Any) -> dict[str, Any]:
    """A plain IHE-PCF-style R4 privacy Consent of Patient/p1 (no extensions of ours)."""
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "other-ehr-1",
        "identifier": [{"system": "https://other-ehr.example/consents", "value": "1"}],
        "status": "active",
        "scope": {"coding": [{"system": f"{V3}/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2025-05-01T00:00:00Z",
        "policy": [{"uri": "https://other-ehr.example/policies/sharing"}],
        "provision": provision,
    }
    resource.update(elements)
    return resource


def r5_consent(decision: str, provisions: list[dict[str, Any]], **elements: Any) -> dict[str, Any]:
    """A plain R5 privacy Consent of Patient/p1 (no extensions of ours)."""
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "other-ehr-r5-1",
        "identifier": [{"system": "https://other-ehr.example/consents", "value": "r5-1"}],
        "status": "active",
        "category": [{"coding": [{"system": f"{V3}/consentscope", "code": "patient-privacy"}]}],
        "subject": {"reference": "Patient/p1"},
        "date": "2025-05-01",
        "decision": decision,
        "provision": provisions,
    }
    resource.update(elements)
    return resource


def observation() -> dict[str, Any]:
    """An alliance score of Patient/p1, labelled R + BH."""
    return {
        "resourceType": "Observation",
        "id": "srs-total-1",
        "status": "final",
        "meta": {
            "security": [
                {"system": f"{V3}/v3-Confidentiality", "code": "R"},
                {"system": f"{V3}/v3-ActCode", "code": "BH"},
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-05-20T15:00:00+00:00",
    }


def decide(records: list[ConsentRecord], recipient: str = RECIPIENT) -> ConsentDecision:
    """The engine's answer to: may ``recipient`` (as IRCP) get the score, for TREAT, at AT?"""
    request = disclosure_request(
        observation(), patient="Patient/p1", recipient=recipient, purposes=["TREAT"], at=AT
    )
    return ConsentEngine(records).decide(request)


def example(path: str) -> Any:
    return json.loads((ROOT / path).read_text())
