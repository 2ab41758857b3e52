"""A deny must match a code however its code system is spelt.

A code system has other spellings than its canonical URI that real senders use: a bare OID
(``2.16.840.1.113883.6.1``, as CDA-derived systems give it), ``urn:oid:`` in upper case,
``https://loinc.org``, a trailing slash, the host in upper case, a SNOMED CT edition URI, the
value set URL of resource types. Only the ``urn:oid:`` OIDs and the STU3 URLs were read as the
canonical system: a deny naming LOINC 44261-6, PSY or class Observation never met a resource (or
a consent) spelling the system another way, and the permit around it released the resource.
Every reader, the gate and the engine itself now read these spellings as the canonical system
(:func:`fhir_alliance.terminology.canonical_system`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import DecisionRequest, RequestActor, RequestedResource
from fhir_alliance.errors import InputError
from fhir_alliance.mapping.consent import R4, R5, from_consent, to_consent
from fhir_alliance.model.common import Coding, Ref
from fhir_alliance.terminology import (
    LOINC,
    RESOURCE_TYPES,
    SNOMED,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
)
from tests.consent.test_review_gate2_references import _decide, _observation, _permit_except

AT = datetime(2025, 6, 1, tzinfo=UTC)
PHQ9 = "44261-6"


LOINC_SPELLINGS = [
    "https://loinc.org",
    "http://loinc.org/",
    "HTTP://LOINC.ORG",
    "2.16.840.1.113883.6.1",
    "URN:OID:2.16.840.1.113883.6.1",
]
SNOMED_SPELLINGS = [
    "https://snomed.info/sct",
    "http://snomed.info/sct/731000124108",
    "http://snomed.info/sct/900000000000207008/version/20230131",
    "2.16.840.1.113883.6.96",
]


@pytest.mark.parametrize("system", LOINC_SPELLINGS)
def test_resource_code_spelt_another_way_meets_the_deny(system: str) -> None:
    """A PHQ-9 result coded ``system|44261-6`` under a deny of LOINC 44261-6: was permit."""
    consent = _permit_except({"codes": [{"system": LOINC, "code": PHQ9}]})
    coded = _observation(code={"coding": [{"system": system, "code": PHQ9}]})
    assert _decide(consent, coded) is DecisionOutcome.DENY
    other = _observation(code={"coding": [{"system": system, "code": "34117-2"}]})
    assert _decide(consent, other) is DecisionOutcome.PERMIT


@pytest.mark.parametrize("system", SNOMED_SPELLINGS)
def test_resource_snomed_code_spelt_another_way_meets_the_deny(system: str) -> None:
    consent = _permit_except({"codes": [{"system": SNOMED, "code": "35489007"}]})
    coded = _observation(code={"coding": [{"system": system, "code": "35489007"}]})
    assert _decide(consent, coded) is DecisionOutcome.DENY


@pytest.mark.parametrize("system", LOINC_SPELLINGS)
@pytest.mark.parametrize("version", ["json", R4, R5])
def test_consent_code_spelt_another_way_meets_the_resource(system: str, version: str) -> None:
    """The deny names LOINC another way (our JSON form, an R4 or R5 Consent): was permit."""
    consent = _permit_except({"codes": [{"system": system, "code": PHQ9}]})
    assert consent.provision.provisions[0].codes == (Coding(LOINC, PHQ9),)
    if version != "json":
        text = json.dumps(to_consent(consent, version=version))
        assert text.count(json.dumps(LOINC)) == 1
        fhir = json.loads(text.replace(json.dumps(LOINC), json.dumps(system)))
        consent = from_consent(fhir, version=version)
    coded = _observation(code={"coding": [{"system": LOINC, "code": PHQ9}]})
    assert _decide(consent, coded) is DecisionOutcome.DENY


@pytest.mark.parametrize(
    "system",
    [
        "https://terminology.hl7.org/CodeSystem/v3-ActCode",
        "http://terminology.hl7.org/CodeSystem/v3-ActCode/",
        "HTTP://TERMINOLOGY.HL7.ORG/CodeSystem/v3-ActCode",
        "2.16.840.1.113883.5.4",
        "URN:OID:2.16.840.1.113883.5.4",
    ],
)
def test_resource_label_spelt_another_way_meets_the_deny(system: str) -> None:
    """A resource labelled PSY by another spelling of v3-ActCode: was permit (an unknown label)."""
    consent = _permit_except({"security_labels": [{"system": V3_ACT_CODE, "code": "PSY"}]})
    labelled = _observation(meta={"security": [{"system": system, "code": "PSY"}]})
    assert _decide(consent, labelled) is DecisionOutcome.DENY


def test_resource_label_spelt_another_way_is_checked_like_the_canonical_one() -> None:
    """A bare OID of v3-Confidentiality with a code it does not have is refused, as by URI."""
    consent = _permit_except({"security_labels": [{"system": V3_CONFIDENTIALITY, "code": "R"}]})
    with pytest.raises(InputError):
        _decide(
            consent,
            _observation(meta={"security": [{"system": "2.16.840.1.113883.5.25", "code": "r"}]}),
        )


@pytest.mark.parametrize(
    "system",
    [
        "https://hl7.org/fhir/resource-types",
        "http://hl7.org/fhir/resource-types/",
        "http://hl7.org/fhir/ValueSet/resource-types",
    ],
)
@pytest.mark.parametrize("version", ["json", R4])
def test_consent_class_system_spelt_another_way_meets_the_type(system: str, version: str) -> None:
    """A deny of class Observation whose system is spelt another way was read as a profile class
    and compared with the resource's profiles: it never met an Observation."""
    consent = _permit_except({"classes": [{"system": system, "code": "Observation"}]})
    assert consent.provision.provisions[0].classes == (Coding(RESOURCE_TYPES, "Observation"),)
    if version == R4:
        fhir = to_consent(consent, version=R4)
        fhir["provision"]["provision"][0]["class"][0]["system"] = system
        consent = from_consent(fhir, version=R4)
    assert _decide(consent, _observation()) is DecisionOutcome.DENY


@pytest.mark.parametrize(
    "system",
    [
        "urn:oid:2.16.840.1.113883.5.8",
        "URN:OID:2.16.840.1.113883.5.8",
        "2.16.840.1.113883.5.8",
        "https://terminology.hl7.org/CodeSystem/v3-ActReason",
    ],
)
def test_consent_purpose_spelt_another_way_is_read_as_v3_act_reason(system: str) -> None:
    """A FHIR Consent naming its purpose by the OID of v3-ActReason (in upper case, bare) or by
    https was refused (the ``urn:oid:`` OID was read as the canonical system for labels only);
    it now reads, and its deny for TREAT denies. (The URL of the PurposeOfUse value set is
    still refused: it names no code system.)"""
    consent = _permit_except({"purposes": [{"system": V3_ACT_REASON, "code": "TREAT"}]})
    fhir = to_consent(consent, version=R4)
    fhir["provision"]["provision"][0]["purpose"][0]["system"] = system
    read = from_consent(fhir, version=R4)
    assert read.provision.provisions[0].purposes == (Coding(V3_ACT_REASON, "TREAT"),)
    assert _decide(read, _observation()) is DecisionOutcome.DENY


def test_engine_reads_hand_built_records_and_requests_in_canonical_form() -> None:
    """A request (or record) built by hand, past every reader, is compared in canonical form."""
    consent = _permit_except({"codes": [{"system": LOINC, "code": PHQ9}]})
    request = DecisionRequest(
        patient=(Ref(reference="Patient/p1"),),
        actors=(RequestActor(reference=Ref(reference="Organization/ehr")),),
        at=AT,
        purposes=(Coding("HTTP://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT"),),
        action=Coding("https://terminology.hl7.org/CodeSystem/consentaction", "disclose"),
        resource=RequestedResource(
            type="Observation", codes=(Coding("2.16.840.1.113883.6.1", PHQ9),)
        ),
    )
    decision = ConsentEngine([consent]).decide(request)
    assert decision.outcome is DecisionOutcome.DENY
    assert not any("not a" in note for note in decision.notes)  # the action and purpose are known
