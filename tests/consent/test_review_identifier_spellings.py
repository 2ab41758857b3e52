"""A deny must meet a party (or patient) however its identifier system is spelt.

Parties and patients named by identifier compared ``(system, value)`` exactly: a deny naming a
practitioner by ``http://hl7.org/fhir/sid/us-npi`` never met a request naming the NPI by its OID
(``urn:oid:2.16.840.1.113883.4.6``, as CDA-derived systems do), nor one naming an organisation by
a bare OID or ``URN:OID:``, and a restriction naming the patient ``urn:oid:…|p-001`` did not count
for a request naming the patient ``2.16.840.1.113883.…|p-001``. The actor directory now compares
identifiers in the form :func:`fhir_alliance.terminology.canonical_identifier` gives: spellings
of one and the same URI (``urn:oid:`` in any case or left out, an http(s) scheme and host in any
case) and the HL7 OIDs of the NPI and the SSN as their FHIR URIs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.cds_hooks import request_from_hook
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import V3_PARTICIPATION_TYPE

AT = datetime(2025, 6, 1, tzinfo=UTC)
NPI = "http://hl7.org/fhir/sid/us-npi"
IRCP = {"system": V3_PARTICIPATION_TYPE, "code": "IRCP"}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "effectiveDateTime": "2025-05-01T00:00:00Z",
}


def _consent(
    ident: str, patient: dict[str, Any] | None = None, *, decision: str = "permit", **root: Any
) -> ConsentRecord:
    return load_consent(
        {
            "kind": "consent",
            "id": f"https://c.example|{ident}",
            "consent_kind": "sharing" if decision == "permit" else "restriction",
            "patient": patient or {"reference": "Patient/p1"},
            "status": "active",
            "decision": decision,
            "date": "2025-03-01T10:00:00+00:00",
            "policy_basis": [{"uri": "https://c.example/pol"}],
            "provision": root,
        }
    )


def _deny_actor(identifier: str) -> ConsentRecord:
    """Permit, except to the party ``identifier`` (``system|value``)."""
    return _consent(
        "deny-actor",
        provisions=[
            {"type": "deny", "actors": [{"role": IRCP, "reference": {"identifier": identifier}}]}
        ],
    )


@pytest.mark.parametrize(
    ("in_consent", "in_request"),
    [
        (f"{NPI}|1234567893", "urn:oid:2.16.840.1.113883.4.6|1234567893"),
        ("urn:oid:2.16.840.1.113883.4.6|1234567893", f"{NPI}|1234567893"),
        ("urn:oid:2.16.840.1.113883.3.9999.2|dr-b", "2.16.840.1.113883.3.9999.2|dr-b"),
        ("2.16.840.1.113883.3.9999.2|dr-b", "URN:OID:2.16.840.1.113883.3.9999.2|dr-b"),
        ("https://ehr.example/staff|dr-b", "HTTPS://EHR.EXAMPLE/staff|dr-b"),
    ],
)
def test_deny_meets_the_party_whose_identifier_system_is_spelt_another_way(
    in_consent: str, in_request: str
) -> None:
    """Was permit: the deny's identifier and the recipient's differed in spelling only."""
    request = disclosure_request(
        OBSERVATION, patient="Patient/p1", recipient=in_request, purposes=["TREAT"], at=AT
    )
    assert ConsentEngine([_deny_actor(in_consent)]).decide(request).outcome is DecisionOutcome.DENY


def test_another_party_is_still_another_party() -> None:
    """Only spellings of one URI are equated: another value, or another path, is another party."""
    consent = _deny_actor("https://ehr.example/staff|dr-b")
    for other in ("https://ehr.example/staff|dr-c", "https://ehr.example/STAFF|dr-b"):
        request = disclosure_request(
            OBSERVATION, patient="Patient/p1", recipient=other, purposes=["TREAT"], at=AT
        )
        assert ConsentEngine([consent]).decide(request).outcome is DecisionOutcome.PERMIT


def test_restriction_meets_the_patient_named_by_a_bare_oid() -> None:
    """A restriction naming the patient ``urn:oid:…|p-001`` and a sharing consent naming
    Patient/p1: asked about Patient/p1, also known as ``2.16.840.1.113883.3.9999.1|p-001`` (a
    bare OID), the restriction counts. It did not: the answer was the sharing consent's permit."""
    sharing = _consent("share")
    restriction = _consent(
        "restrict",
        {"identifier": "urn:oid:2.16.840.1.113883.3.9999.1|p-001"},
        decision="deny",
    )
    request = disclosure_request(
        OBSERVATION,
        patient=["Patient/p1", "2.16.840.1.113883.3.9999.1|p-001"],
        recipient="Organization/ehr",
        purposes=["TREAT"],
        at=AT,
    )
    assert ConsentEngine([sharing, restriction]).decide(request).outcome is DecisionOutcome.DENY


@pytest.mark.parametrize("value", ["2.16.840.1.113883.20.5", "URN:OID:2.16.840.1.113883.20.5"])
def test_leap_consult_naming_the_organisation_by_a_bare_oid_value(value: str) -> None:
    """LEAP names organisations ``urn:ietf:rfc:3986|urn:oid:…``: a consult giving the value as a
    bare OID (or ``URN:OID:``) is the same party, and the opt-out naming it applies (was
    ``no-consent``)."""
    patient = "urn:oid:2.16.840.1.113883.3.9999.1|p-001"
    opt_out = _consent(
        "leap",
        {"identifier": patient},
        decision="deny",
        actors=[
            {
                "role": IRCP,
                "reference": {"identifier": "urn:ietf:rfc:3986|urn:oid:2.16.840.1.113883.20.5"},
            }
        ],
    )
    context = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [{"system": "urn:ietf:rfc:3986", "value": value}],
        "purposeOfUse": "TREAT",
    }
    decision = ConsentEngine([opt_out]).decide(request_from_hook(context, at=AT))
    assert decision.outcome is DecisionOutcome.DENY


def test_directory_links_a_reference_to_an_identifier_spelt_another_way() -> None:
    """The directory knows Practitioner/7 by its NPI given by OID: a request by the NPI URI
    resolves to it (and the other way round)."""
    directory = ActorDirectory.from_resources(
        [
            {
                "resourceType": "Practitioner",
                "id": "7",
                "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.6", "value": "1234567893"}],
            }
        ]
    )
    by_reference = directory.keys(Ref(reference="Practitioner/7"))
    by_npi = directory.keys(Ref(identifier=Identifier(NPI, "1234567893")))
    assert by_npi <= by_reference
