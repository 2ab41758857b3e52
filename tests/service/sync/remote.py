"""Helpers for the two-way sync tests: Consents written on the FHIR server by someone else (IHE
PCF-shaped, as an EHR's front desk would write them), tagged with the test's run tag."""

from __future__ import annotations

import copy
from typing import Any

from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R

V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def pcf_consent(
    patient: str,
    *,
    decision: str = "permit",
    status: str = "active",
    recipient: str = R.EHR,
) -> dict[str, Any]:
    """A PCF-shaped Consent of ``patient`` sharing with ``recipient`` for treatment (no id, no
    tag: for a server fake's answers too)."""
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "dateTime": "2026-11-02T09:00:00Z",
        "policy": [{"uri": "https://ehr.example.org/policies/hie-opt-in"}],
        "provision": {
            "type": decision,
            "actor": [{"role": {"coding": [R.IRCP]}, "reference": {"reference": recipient}}],
            "purpose": [{"system": V3_ACT_REASON, "code": "TREAT"}],
        },
    }


def foreign_consent(
    server: FhirTestServer,
    patient: str,
    *,
    decision: str = "permit",
    status: str = "active",
    recipient: str = R.EHR,
) -> dict[str, Any]:
    """A PCF-shaped Consent of ``patient`` sharing with ``recipient`` for treatment, tagged."""
    return server.tagged(
        pcf_consent(patient, decision=decision, status=status, recipient=recipient)
    )


def create(server: FhirTestServer, resource: dict[str, Any]) -> dict[str, Any]:
    """POST ``resource``; the server's copy (id, versionId, lastUpdated)."""
    response = server.http.post(
        server.url(resource["resourceType"]),
        json=resource,
        headers={"Content-Type": "application/fhir+json", "Prefer": "return=representation"},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def update(server: FhirTestServer, resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """PUT a changed copy of ``resource`` (someone else editing it on the server)."""
    changed = copy.deepcopy(resource)
    changed.update(changes)
    changed.pop("meta", None)
    changed = server.tagged(changed)
    response = server.http.put(
        server.url(f"{resource['resourceType']}/{resource['id']}"),
        json=changed,
        headers={"Content-Type": "application/fhir+json", "Prefer": "return=representation"},
    )
    assert response.status_code in (200, 201), response.text
    updated: dict[str, Any] = response.json()
    return updated


def delete(server: FhirTestServer, resource: dict[str, Any]) -> None:
    response = server.http.delete(server.url(f"{resource['resourceType']}/{resource['id']}"))
    assert response.status_code in (200, 202, 204), response.text
