"""A deny scoped by ``class`` must not be missed over how the class is spelt.

A deny of class ``observation`` (a resource type in lower case, as some consent editors write
it) never met an Observation, and in a general answer it was left out for a consult asking
about ``observation`` content; a deny of profile ``…|1.0`` never met a resource claiming the
profile unversioned (the gate reads a versioned profile also as its unversioned URL, but the
consent's was compared as written). A deny now compares resource types in any letter case and a
versioned profile also as its unversioned URL; a permit is still read as written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.cds_hooks import request_from_hook
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import RESOURCE_TYPES

AT = datetime(2025, 6, 1, tzinfo=UTC)
PROFILE = "https://clinic.example/StructureDefinition/phq"
PATIENT = "urn:oid:2.16.840.1.113883.3.9999.1|p-001"


def _consent(decision: str, nested: dict[str, Any]) -> ConsentRecord:
    return load_consent(
        {
            "kind": "consent",
            "id": "https://c.example|review-classes",
            "consent_kind": "sharing" if decision == "permit" else "restriction",
            "patient": {"identifier": PATIENT},
            "status": "active",
            "decision": decision,
            "date": "2025-03-01T10:00:00+00:00",
            "policy_basis": [{"uri": "https://c.example/pol"}],
            "provision": {"provisions": [nested]},
        }
    )


def _decide(consent: ConsentRecord, **elements: Any) -> DecisionOutcome:
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "effectiveDateTime": "2025-05-01T00:00:00Z",
        **elements,
    }
    request = disclosure_request(
        resource, patient=PATIENT, recipient="Organization/ehr", purposes=["TREAT"], at=AT
    )
    return ConsentEngine([consent]).decide(request).outcome


def test_deny_of_a_resource_type_in_lower_case_meets_the_resource() -> None:
    """Was permit."""
    consent = _consent(
        "permit", {"type": "deny", "classes": [{"system": RESOURCE_TYPES, "code": "observation"}]}
    )
    assert _decide(consent) is DecisionOutcome.DENY


def test_permit_of_a_resource_type_in_lower_case_still_does_not_permit() -> None:
    """A permit is read as written: ``observation`` does not release an Observation."""
    consent = _consent(
        "deny", {"type": "permit", "classes": [{"system": RESOURCE_TYPES, "code": "observation"}]}
    )
    assert _decide(consent) is DecisionOutcome.DENY


def test_deny_of_a_versioned_profile_meets_the_resource_claiming_it_unversioned() -> None:
    """Was permit."""
    consent = _consent(
        "permit",
        {"type": "deny", "classes": [{"system": "urn:ietf:rfc:3986", "code": f"{PROFILE}|1.0"}]},
    )
    assert _decide(consent, meta={"profile": [PROFILE]}) is DecisionOutcome.DENY
    assert _decide(consent, meta={"profile": [f"{PROFILE}|2.0"]}) is DecisionOutcome.DENY
    assert _decide(consent, meta={"profile": [f"{PROFILE}-other"]}) is DecisionOutcome.PERMIT


def test_permit_of_a_versioned_profile_does_not_release_another_version() -> None:
    consent = _consent(
        "deny",
        {"type": "permit", "classes": [{"system": "urn:ietf:rfc:3986", "code": f"{PROFILE}|1.0"}]},
    )
    assert _decide(consent, meta={"profile": [f"{PROFILE}|1.0"]}) is DecisionOutcome.PERMIT
    assert _decide(consent, meta={"profile": [f"{PROFILE}|2.0"]}) is DecisionOutcome.DENY


def test_consult_for_content_spelt_in_lower_case_still_meets_the_deny() -> None:
    """A consult asking about ``observation`` content left out the deny of Observation (the
    classes seemed disjoint) and answered a plain permit: now the deny's redaction comes with it."""
    consent = _consent(
        "permit", {"type": "deny", "classes": [{"system": RESOURCE_TYPES, "code": "Observation"}]}
    )
    context = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.20.5"}],
        "purposeOfUse": "TREAT",
        "class": [{"system": RESOURCE_TYPES, "code": "observation"}],
    }
    decision = ConsentEngine([consent]).decide(request_from_hook(context, at=AT))
    assert decision.outcome is DecisionOutcome.DENY or any(
        c.code == "Observation" for o in decision.obligations for c in o.classes
    )
