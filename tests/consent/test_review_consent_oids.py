"""Consents are read with their codes in canonical form, as the consent gate reads resources.

The gate reads a resource's codes given by the OIDs of LOINC and SNOMED CT as ``http://loinc.org``
and ``http://snomed.info/sct``, and its v3 security labels by OID or STU3 URL as their canonical
URIs. A consent naming a code the other way must still match: a deny for LOINC 11488-4 given as
``urn:oid:2.16.840.1.113883.6.1`` was missed (the note released). Every consent reader (the JSON
form, compiled and marshmallow alike, and the R4 and R5 FHIR readers) now normalises a provision's
codes, security labels and classes (R5 ``fhir-types`` as ``resource-types``) and a consent's
categories (LOINC by OID).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.errors import InputError
from fhir_alliance.mapping.consent import R4, R5, from_consent, to_consent
from fhir_alliance.model.common import Coding
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.schemas.compiled import compiled_loader
from fhir_alliance.schemas.consent import (
    _CONSENT_SCHEMA,
    ConsentRecordSchema,
    dump_consent,
    load_consent,
)
from fhir_alliance.terminology import (
    LOINC,
    RESOURCE_TYPES,
    SNOMED,
    V3_ACT_CODE,
)

AT = datetime(2025, 6, 1, tzinfo=UTC)
OID_LOINC = "urn:oid:2.16.840.1.113883.6.1"
OID_SNOMED = "urn:oid:2.16.840.1.113883.6.96"
OID_ACT_CODE = "urn:oid:2.16.840.1.113883.5.4"
FHIR_TYPES = "http://hl7.org/fhir/fhir-types"
CONSULT_NOTE = "11488-4"


def _json(provision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A sharing consent (permit) for Organization/ehr with ``provision``."""
    return {
        "kind": "consent",
        "id": "https://c.example|review-oids",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p1"},
        "status": "active",
        "decision": "permit",
        "date": "2025-03-01T10:00:00+00:00",
        "grantees": [{"reference": "Organization/ehr"}],
        "policy_basis": [{"uri": "https://c.example/pol"}],
        "provision": provision,
        **extra,
    }


def _deny_code(system: str) -> dict[str, Any]:
    """Permit, except notes coded LOINC 11488-4 (``system`` spells LOINC)."""
    return _json(
        {"provisions": [{"type": "deny", "codes": [{"system": system, "code": CONSULT_NOTE}]}]}
    )


def _note(system: str = LOINC, code: str = CONSULT_NOTE, **elements: Any) -> dict[str, Any]:
    """A resource coded ``system|code`` (the gate reads a resource's ``code``)."""
    return {
        "resourceType": "Observation",
        "id": "n1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-05-01T00:00:00Z",
        "code": {"coding": [{"system": system, "code": code}]},
        **elements,
    }


def _decide(consent: ConsentRecord, resource: dict[str, Any]) -> DecisionOutcome:
    request = disclosure_request(
        resource, patient="Patient/p1", recipient="Organization/ehr", purposes=["TREAT"], at=AT
    )
    return ConsentEngine([consent]).decide(request).outcome


def _fhir_with_oid(version: str) -> dict[str, Any]:
    """The FHIR Consent (``version``) of the canonical deny, its provision code then spelt by OID."""
    resource = to_consent(load_consent(_deny_code(LOINC)), version=version)
    changed = _replace_code_system(resource, CONSULT_NOTE, OID_LOINC)
    assert changed == 1, resource
    return resource


def _respelt(resource: dict[str, Any], system: str, other: str) -> dict[str, Any]:
    """``resource`` with every ``system`` (a whole JSON string) spelt ``other``."""
    text = json.dumps(resource)
    assert json.dumps(system) in text
    loaded: dict[str, Any] = json.loads(text.replace(json.dumps(system), json.dumps(other)))
    return loaded


def _replace_code_system(node: Any, code: str, system: str) -> int:
    """Set ``system`` on every coding of ``code`` under a provision's ``code``; how many."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "code" and isinstance(value, list):
                for concept in value:
                    for coding in concept.get("coding", []):
                        if coding.get("code") == code:
                            coding["system"] = system
                            count += 1
            else:
                count += _replace_code_system(value, code, system)
    elif isinstance(node, list):
        count += sum(_replace_code_system(item, code, system) for item in node)
    return count


# --- the reviewed cases: a deny by LOINC code given by OID ---------------------------------------


def test_baseline_the_canonical_deny_denies_the_note() -> None:
    consent = load_consent(_deny_code(LOINC))
    assert _decide(consent, _note()) is DecisionOutcome.DENY
    assert _decide(consent, _note(code="34117-2")) is DecisionOutcome.PERMIT


def test_json_form_deny_by_loinc_oid_denies_the_note() -> None:
    """(a) The JSON form: was PERMIT (the deny's code kept the OID, the note's was canonical)."""
    consent = load_consent(_deny_code(OID_LOINC))
    assert _decide(consent, _note()) is DecisionOutcome.DENY
    assert consent.provision.provisions[0].codes == (Coding(LOINC, CONSULT_NOTE),)
    assert _decide(consent, _note(system=OID_LOINC)) is DecisionOutcome.DENY
    assert _decide(consent, _note(code="34117-2")) is DecisionOutcome.PERMIT


def test_json_form_compiled_and_marshmallow_agree() -> None:
    """The compiled loader replays the schema's hooks: both paths normalise alike."""
    data = _deny_code(OID_LOINC)
    data["categories"] = [{"system": OID_LOINC, "code": "59284-0"}]
    data["provision"]["provisions"][0]["security_labels"] = [
        {"system": OID_ACT_CODE, "code": "PSY"}
    ]
    loader = compiled_loader(_CONSENT_SCHEMA)
    assert loader is not None
    fast = loader.fast(copy.deepcopy(data))  # the generated code itself, no fallback
    assert fast == ConsentRecordSchema().load(copy.deepcopy(data)) == load_consent(data)
    assert fast.categories == (Coding(LOINC, "59284-0"),)
    assert fast.provision.provisions[0].codes == (Coding(LOINC, CONSULT_NOTE),)
    assert fast.provision.provisions[0].security_labels == (Coding(V3_ACT_CODE, "PSY"),)


def test_r4_deny_by_loinc_oid_denies_the_note() -> None:
    """(b) An R4 Consent whose provision.code names 11488-4 by the LOINC OID: was PERMIT."""
    consent = from_consent(_fhir_with_oid(R4), version=R4)
    assert _decide(consent, _note()) is DecisionOutcome.DENY
    assert consent.provision.provisions[0].codes == (Coding(LOINC, CONSULT_NOTE),)


def test_r5_deny_by_loinc_oid_denies_the_note() -> None:
    """(c) The same in R5 (a nested provision is the root's opposite): was PERMIT."""
    consent = from_consent(_fhir_with_oid(R5), version=R5)
    assert _decide(consent, _note()) is DecisionOutcome.DENY
    assert consent.provision.provisions[0].codes == (Coding(LOINC, CONSULT_NOTE),)


def test_leap_single_code_object_by_oid_is_normalised() -> None:
    """LEAP writes R4 ``provision.code`` as one object: read and normalised the same way."""
    resource = _fhir_with_oid(R4)
    nested = resource["provision"]["provision"][0]
    nested["code"] = nested["code"][0]
    consent = from_consent(resource, version=R4)
    assert _decide(consent, _note()) is DecisionOutcome.DENY
    assert consent.provision.provisions[0].codes == (Coding(LOINC, CONSULT_NOTE),)


def test_snomed_oid_is_normalised() -> None:
    consent = load_consent(
        _json(
            {
                "provisions": [
                    {"type": "deny", "codes": [{"system": OID_SNOMED, "code": "225362009"}]}
                ]
            }
        )
    )
    assert consent.provision.provisions[0].codes == (Coding(SNOMED, "225362009"),)
    assert _decide(consent, _note(system=SNOMED, code="225362009")) is DecisionOutcome.DENY


# --- labels, classes and categories --------------------------------------------------------------


def _deny_label(system: str) -> dict[str, Any]:
    return _json(
        {"provisions": [{"type": "deny", "security_labels": [{"system": system, "code": "PSY"}]}]}
    )


@pytest.mark.parametrize("system", [OID_ACT_CODE, "http://hl7.org/fhir/v3/ActCode"])
def test_a_label_by_oid_or_stu3_url_is_read_as_the_canonical_label(system: str) -> None:
    """Was refused by every reader (unknown code system): now the label the gate reads."""
    psy = Coding(V3_ACT_CODE, "PSY")
    labelled = _note(code="34117-2", meta={"security": [{"system": V3_ACT_CODE, "code": "PSY"}]})
    consent = load_consent(_deny_label(system))
    assert consent.provision.provisions[0].security_labels == (psy,)
    assert _decide(consent, labelled) is DecisionOutcome.DENY
    for version in (R4, R5):
        resource = to_consent(load_consent(_deny_label(V3_ACT_CODE)), version=version)
        read = from_consent(_respelt(resource, V3_ACT_CODE, system), version=version)
        assert read.provision.provisions[0].security_labels == (psy,)
        assert _decide(read, labelled) is DecisionOutcome.DENY


def test_a_misspelt_label_system_is_still_refused() -> None:
    with pytest.raises(InputError):
        load_consent(_deny_label("http://terminology.hl7.org/CodeSystem/v3-actcode"))


def test_fhir_types_class_reads_as_resource_types_and_goes_back_as_resource_type() -> None:
    """R5's ``fhir-types`` is read as ``resource-types``: the R5 writer puts the class in
    ``resourceType`` (it went to ``documentType``) and the JSON normal form sorts it first."""
    classes = [
        {"system": "https://c.example/profile", "code": "note"},
        {"system": FHIR_TYPES, "code": "Observation"},
    ]
    consent = load_consent(_json({"provisions": [{"type": "deny", "classes": classes}]}))
    assert consent.provision.provisions[0].classes[0] == Coding(RESOURCE_TYPES, "Observation")
    r5 = to_consent(consent, version=R5)
    (deny,) = r5["provision"]  # R5: the deny is the permit-all root's one provision
    assert deny["resourceType"] == [{"system": RESOURCE_TYPES, "code": "Observation"}]
    assert deny["documentType"] == [classes[0]]
    assert from_consent(_respelt(r5, RESOURCE_TYPES, FHIR_TYPES), version=R5) == consent
    assert _decide(consent, _note(code="34117-2")) is DecisionOutcome.DENY


def test_a_category_by_loinc_oid_is_loinc() -> None:
    data = _deny_code(LOINC)
    data["categories"] = [{"system": OID_LOINC, "code": "59284-0"}]
    consent = load_consent(data)
    assert consent.categories == (Coding(LOINC, "59284-0"),)
    for version in (R4, R5):
        respelt = _respelt(to_consent(consent, version=version), LOINC, OID_LOINC)
        assert from_consent(respelt, version=version) == consent


def test_round_trip_writes_the_canonical_uri() -> None:
    """A consent read with an OID is written back with the canonical URI (JSON and FHIR)."""
    consent = load_consent(_deny_code(OID_LOINC))
    assert OID_LOINC not in repr(dump_consent(consent))
    assert load_consent(dump_consent(consent)) == consent
    for version in (R4, R5):
        written = to_consent(
            from_consent(_fhir_with_oid(version), version=version), version=version
        )
        assert OID_LOINC not in repr(written)
        assert written == to_consent(load_consent(_deny_code(LOINC)), version=version)
