"""Consent records ⇄ FHIR Consent R4/R5: round trips, base validation, goldens, foreign shapes, misfits."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.consent import Consent as ConsentR5
from fhir.resources.R4B.consent import Consent as ConsentR4
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping import registry
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.mapping.consent import MAPPER, R4, R5, from_consent, to_consent
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    Decision,
    Provision,
)
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import (
    CONSENT_SCOPE,
    CS_CONSENT_KINDS,
    CS_CONSENT_VERIFICATION_METHODS,
    EXT_CONSENT_INTERVENTION,
    EXT_CONSENT_PROVISION_TYPE,
    EXT_CONSENT_ROOT_PROVISION,
    EXT_CONSENT_STATE,
    EXT_CONSENT_STATUS_CHANGE,
    EXT_CONSENT_VERIFICATION_METHOD,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_PARTICIPATION_TYPE,
)
from tests.mapping.consent_strategies import consent_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "consent").glob("*.json"))
GOLDEN = ROOT / "tests" / "golden" / "consent"
FOREIGN = Path(__file__).parent / "fixtures" / "consent"
REGENERATE = os.environ.get("FHIR_ALLIANCE_REGENERATE_GOLDEN") == "1"
VALIDATORS = {R4: ConsentR4, R5: ConsentR5}
ROUND_TRIP = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _example(name: str) -> ConsentRecord:
    return load_consent(json.loads((ROOT / "examples" / "consent" / f"{name}.json").read_text()))


def _foreign(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FOREIGN / name).read_text())
    return data


# --- round trips -------------------------------------------------------------------------------


@ROUND_TRIP
@given(consent_records())
def test_round_trip_r4(record: ConsentRecord) -> None:
    """Domain → R4 Consent → domain gives the same record."""
    assert from_consent(to_consent(record, version=R4)) == record


@ROUND_TRIP
@given(consent_records())
def test_round_trip_r5(record: ConsentRecord) -> None:
    """Domain → R5 Consent → domain gives the same record."""
    assert from_consent(to_consent(record, version=R5)) == record


@ROUND_TRIP
@given(consent_records())
def test_r4_to_r5_and_back(record: ConsentRecord) -> None:
    """R4 → domain → R5 → domain → R4 gives the same R4 Consent."""
    r4 = to_consent(record, version=R4)
    r5 = to_consent(from_consent(r4, version=R4), version=R5)
    assert to_consent(from_consent(r5, version=R5), version=R4) == r4


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(consent_records(), st.sampled_from([R4, R5]))
def test_output_passes_fhir_resources_validation(record: ConsentRecord, version: str) -> None:
    """Every Consent we produce is valid for fhir.resources (R4B models for R4, R5 models for R5)."""
    resource = to_consent(record, version=version)
    VALIDATORS[version].model_validate(copy.deepcopy(resource))


def test_json_round_trips_through_fhir_exactly() -> None:
    """A record's R4 JSON is stable under R4 → domain → R4 (no field reordering or loss)."""
    record = _example("sharing")
    r4 = to_consent(record, version=R4)
    assert to_consent(from_consent(r4), version=R4) == r4


# --- shape -------------------------------------------------------------------------------------


def test_ids_are_deterministic_and_from_the_identifier() -> None:
    """The resource id is UUIDv5 of the record identifier, the same in R4 and R5."""
    record = _example("sharing")
    expected = resource_id(Identifier("https://clinic.example.org/consents", "c-2025-0001"))
    assert to_consent(record, version=R4)["id"] == expected
    assert to_consent(record, version=R5)["id"] == expected


def test_revoked_maps_to_inactive_with_precise_state_and_history() -> None:
    """A revoked consent is R4 inactive; the precise state and every status change are kept."""
    record = _example("sharing-revoked")
    resource = to_consent(record, version=R4)
    assert resource["status"] == "inactive"
    state = [e for e in resource["extension"] if e["url"] == EXT_CONSENT_STATE]
    assert state == [{"url": EXT_CONSENT_STATE, "valueCode": "revoked"}]
    changes = [e for e in resource["extension"] if e["url"] == EXT_CONSENT_STATUS_CHANGE]
    assert [c["extension"][0]["valueCode"] for c in changes] == ["draft", "active", "revoked"]
    assert from_consent(resource).history == record.history


def test_expired_and_revoked_differ_only_in_the_extension() -> None:
    """Expired and revoked both read back precisely, though both are FHIR inactive."""
    record = _example("sharing")
    from dataclasses import replace

    for status in (ConsentStatus.EXPIRED, ConsentStatus.REVOKED):
        changed = replace(record, status=status, history=())
        for version in (R4, R5):
            resource = to_consent(changed, version=version)
            assert resource["status"] == "inactive"
            assert from_consent(resource).status is status


def test_r4_root_carries_base_decision_and_period() -> None:
    """R4: the base decision is the root provision.type (IHE PCF) and the period is the root's."""
    resource = to_consent(_example("restriction"), version=R4)
    assert resource["provision"]["type"] == "deny"
    assert resource["scope"]["coding"][0]["code"] == "patient-privacy"
    assert resource["provision"]["period"]["start"].startswith("2025-")


def test_r5_root_conditions_are_a_marked_provision() -> None:
    """R5: root conditions go in one provision marked by our modifier extension, exceptions nest."""
    resource = to_consent(_example("sharing"), version=R5)
    assert resource["decision"] == "permit"
    (top,) = resource["provision"]
    assert top["modifierExtension"] == [{"url": EXT_CONSENT_ROOT_PROVISION, "valueBoolean": True}]
    assert {c["code"] for c in top["purpose"]} == {"TREAT", "HOPERAT"}
    assert all("modifierExtension" not in p for p in top["provision"])  # deny under permit


def test_r5_non_negating_provision_is_marked() -> None:
    """R5: a nested provision repeating its parent's effect carries the provision-type modifier."""
    record = _example("sharing")
    from dataclasses import replace

    same = Provision(type=Decision.PERMIT, purposes=(Coding(V3_ACT_REASON, "HPAYMT"),))
    record = replace(record, provision=replace(record.provision, provisions=(same,)))
    resource = to_consent(record, version=R5)
    nested = resource["provision"][0]["provision"][0]
    assert nested["modifierExtension"] == [
        {"url": EXT_CONSENT_PROVISION_TYPE, "valueCode": "permit"}
    ]
    assert from_consent(resource) == record


def test_kind_travels_as_a_category_coding() -> None:
    """Each consent kind is a category coding of ours, and the R4 profile is claimed."""
    for name, kind in (
        ("sharing", ConsentKind.SHARING),
        ("treatment-declined", ConsentKind.TREATMENT),
        ("recording-ai-notes", ConsentKind.RECORDING),
        ("restriction", ConsentKind.RESTRICTION),
    ):
        resource = to_consent(_example(name), version=R4)
        assert resource["category"][0] == {"coding": [{"system": CS_CONSENT_KINDS, "code": kind}]}
        assert resource["meta"]["profile"] == [
            f"https://fhir-alliance.org/fhir/StructureDefinition/consent-{kind}"
        ]


def test_treatment_refusal_is_a_deny_with_intervention() -> None:
    """A declined intervention is an active consent with decision deny and its intervention code."""
    record = _example("treatment-declined")
    assert record.decision is Decision.DENY and record.status is ConsentStatus.ACTIVE
    resource = to_consent(record, version=R4)
    assert resource["scope"]["coding"][0]["code"] == "treatment"
    assert resource["provision"]["type"] == "deny"
    assert from_consent(resource).intervention == record.intervention


def test_r4_refuses_a_record_without_policy_basis() -> None:
    """R4 needs policy or policyRule (ppc-1): a record without any raises MappingError."""
    from dataclasses import replace

    record = replace(_example("sharing"), policy_basis=())
    with pytest.raises(MappingError) as err:
        to_consent(record, version=R4)
    assert err.value.element == "policy_basis"


def test_unknown_version_is_refused() -> None:
    """Only 4.0.1 and 5.0.0 are produced."""
    with pytest.raises(MappingError):
        to_consent(_example("sharing"), version="3.0.2")


# --- goldens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [R4, R5])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden_files(path: Path, version: str) -> None:
    """Output for each example equals its golden file (FHIR_ALLIANCE_REGENERATE_GOLDEN=1 rewrites)."""
    record = load_consent(json.loads(path.read_text()))
    resource = to_consent(record, version=version)
    tag = "r4" if version == R4 else "r5"
    golden = GOLDEN / tag / f"{path.stem}.json"
    if REGENERATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n")
        pytest.fail(
            f"regenerated {golden.relative_to(ROOT)}; review the diff, rerun without the flag"
        )
    assert golden.exists(), f"missing golden file {golden.relative_to(ROOT)}"
    assert json.loads(golden.read_text()) == resource


# --- foreign consents --------------------------------------------------------------------------


def test_reads_pcf_basic_consent() -> None:
    """An IHE PCF basic consent (root type, IRCP actor, purposes, sourceAttachment) reads correctly."""
    record = from_consent(_foreign("pcf-basic-permit.json"))
    assert record.kind is ConsentKind.SHARING
    assert record.decision is Decision.PERMIT
    assert record.status is ConsentStatus.ACTIVE
    assert [p.code for p in record.provision.purposes] == ["TREAT", "HPAYMT", "HOPERAT"]
    assert record.provision.actors[0].role.code == "IRCP"
    assert record.source_attachment is not None
    assert record.source_attachment.content_type == "application/pdf"
    assert record.period is not None and record.period.start is not None
    # date-only end is the whole day: exclusive end is the next midnight
    assert (
        record.period.end is not None
        and record.period.end.isoformat() == "2026-01-01T00:00:00+00:00"
    )


def test_reads_pcf_intermediate_consent() -> None:
    """PCF intermediate: dataPeriod and data by meaning in a nested deny read correctly."""
    record = from_consent(_foreign("pcf-intermediate-deny-data.json"))
    (nested,) = record.provision.provisions
    assert nested.type is Decision.DENY
    assert nested.data_period is not None and nested.data_period.end is not None
    assert nested.data[0].meaning.value == "related"
    assert nested.data[0].reference.reference == "Encounter/e1"


def test_reads_leap_r4_consent() -> None:
    """LEAP R4: identifier-only actor, single-object code, OPTIN policy rule as base, scope in category."""
    record = from_consent(_foreign("leap-r4-optin-deny-code.json"))
    assert record.decision is Decision.PERMIT  # from policyRule OPTIN: no root type
    assert record.kind is ConsentKind.SHARING
    (nested,) = record.provision.provisions
    assert nested.type is Decision.DENY
    assert nested.codes == (Coding("http://loinc.org", "42828-4"),)
    assert nested.actors[0].reference.identifier == Identifier(
        "http://hl7.org/fhir/sid/us-npi", "1234567893"
    )
    assert record.id == Identifier(
        "http://sdhealthconnect.github.io/leap/samples/ids", "consent-leap-1"
    )


def test_reads_leap_r4_same_type_nesting() -> None:
    """LEAP R4 'deny + nested deny' keeps the nested type as written (LEAP itself ignores it)."""
    record = from_consent(_foreign("leap-r4-optout-nested-deny.json"))
    assert record.decision is Decision.DENY
    assert record.kind is ConsentKind.RESTRICTION
    assert record.provision.provisions[0].type is Decision.DENY


def test_reads_leap_r5_consent() -> None:
    """LEAP R5: scope in category, date as dateTime, one-object regulatoryBasis, implicit deny nesting."""
    record = from_consent(_foreign("leap-r5-deny-practitioner.json"))
    assert record.decision is Decision.PERMIT
    (nested,) = record.provision.provisions
    assert nested.type is Decision.DENY
    assert nested.actors[0].reference.reference == "Practitioner/001"
    assert record.manager == Ref(reference="Organization/53")
    assert record.policy_basis[0].code is not None


def test_foreign_without_identifier_uses_resource_id() -> None:
    """A consent without a business identifier is identified by its resource id (documented system)."""
    resource = _foreign("leap-r4-optin-deny-code.json")
    del resource["identifier"]
    resource["id"] = "42"
    assert from_consent(resource).id.value == "42"


MISFITS: list[tuple[str, str, Any, str]] = [
    # (fixture, JSON pointer-ish key path to change, new value, element named in the error)
    (
        "leap-r4-optin-deny-code.json",
        "category.1.coding.0.code",
        "59284-6",
        "Consent.category[1].coding[0].code",
    ),
    # a superscript digit (str.isdigit() takes it, int() does not): not a LOINC code
    (
        "leap-r4-optin-deny-code.json",
        "category.1.coding.0.code",
        "5928\u00b2-0",
        "Consent.category[1].coding[0].code",
    ),
    ("leap-r4-optin-deny-code.json", "scope.coding.0.code", "research", "Consent.scope"),
    ("leap-r4-optin-deny-code.json", "status", "rejected", "Consent.status"),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.type",
        None,
        "Consent.provision.provision[0].type",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.purpose",
        [{"system": "http://terminology.hl7.org/ValueSet/v3-PurposeOfUse", "code": "HMARKT"}],
        "Consent.provision.provision[0].purpose[0].system",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.action.0.coding.0.code",
        "share",
        "Consent.provision.provision[0].action[0].coding[0].code",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.actor.0.role",
        None,
        "Consent.provision.provision[0].actor[0].role",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.type",
        "deny",
        "Consent.policyRule",
    ),
    ("leap-r4-optin-deny-code.json", "dateTime", "2019-11-01T10:00:00", "Consent.dateTime"),
    # offsets FHIR cannot carry (and the record's JSON form refuses): refused at the element,
    # not read into a record that could be neither stored nor written back
    (
        "leap-r4-optin-deny-code.json",
        "provision.period.start",
        "2019-11-01T00:00:00+01:00:30",
        "Consent.provision.period.start",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.period.end",
        "2029-01-01T00:00:00+15:00",
        "Consent.provision.period.end",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.period.end",
        "2018-01-01",
        "Consent.provision.period.end",
    ),
    ("leap-r4-optin-deny-code.json", "patient", None, "Consent.patient"),
    (
        "leap-r4-optin-deny-code.json",
        "modifierExtension",
        [{"url": "urn:x", "valueBoolean": True}],
        "Consent.modifierExtension[0]",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "performer",
        [{"reference": "Patient/1"}, {"reference": "RelatedPerson/2"}],
        "Consent.performer[1]",
    ),
    ("leap-r4-optin-deny-code.json", "decision", "deny", "Consent.decision"),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.securityLabel",
        [{"system": "urn:x", "code": "R"}],
        "Consent.provision.provision[0].securityLabel[0].system",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.code",
        {"text": "substance abuse"},
        "Consent.provision.provision[0].code[0].coding",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "verification",
        [{"verified": True, "verificationDate": "2020-01-01"}],
        "Consent.verification[0].extension",
    ),
    (
        "leap-r5-deny-practitioner.json",
        "provision.0.expression",
        {"language": "text/fhirpath", "expression": "true"},
        "Consent.provision[0].expression",
    ),
    ("leap-r5-deny-practitioner.json", "decision", None, "Consent.decision"),
    ("leap-r5-deny-practitioner.json", "status", "not-done", "Consent.status"),
    (
        "leap-r5-deny-practitioner.json",
        "provision.0.modifierExtension",
        [{"url": EXT_CONSENT_PROVISION_TYPE, "valueCode": "deny"}],
        "Consent.provision[0].modifierExtension",
    ),
    (
        "leap-r5-deny-practitioner.json",
        "grantor",
        [{"reference": "Patient/1"}, {"reference": "Patient/2"}],
        "Consent.grantor[1]",
    ),
]


_LOCAL = "https://other-ehr.example/fhir/CodeSystem/local"
_FOREIGN_MODIFIER = [{"url": "https://other-ehr.example/all-except", "valueBoolean": True}]
# Several codings of one concept, or parts of backbone elements, that cannot be read faithfully:
# a guessed coding or an ignored modifier/element could widen what a consent allows.
MISFITS += [
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.actor.0.role",
        {"coding": [{"system": _LOCAL, "code": "a"}, {"system": _LOCAL, "code": "b"}]},
        "Consent.provision.provision[0].actor[0].role.coding",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.actor.0.role",
        {
            "coding": [
                {"system": V3_PARTICIPATION_TYPE, "code": "IRCP"},
                {"system": V3_PARTICIPATION_TYPE, "code": "PRCP"},
            ]
        },
        "Consent.provision.provision[0].actor[0].role.coding",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "policyRule",
        {"coding": [{"system": _LOCAL, "code": "a"}, {"system": _LOCAL, "code": "b"}]},
        "Consent.policyRule.coding",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "extension",
        [
            {
                "url": EXT_CONSENT_INTERVENTION,
                "valueCodeableConcept": {
                    "coding": [{"system": _LOCAL, "code": "a"}, {"system": _LOCAL, "code": "b"}]
                },
            }
        ],
        "Consent.extension[0].valueCodeableConcept.coding",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.actor.0.excluded",
        True,
        "Consent.provision.provision[0].actor[0].excluded",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "provision.provision.0.actor.0.modifierExtension",
        [{"url": EXT_CONSENT_PROVISION_TYPE, "valueCode": "deny"}],
        "Consent.provision.provision[0].actor[0].modifierExtension",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "policy",
        [{"uri": "https://other-ehr.example/policy", "modifierExtension": _FOREIGN_MODIFIER}],
        "Consent.policy[0].modifierExtension[0]",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "verification",
        [
            {
                "extension": [{"url": EXT_CONSENT_VERIFICATION_METHOD, "valueCode": "written"}],
                "verified": True,
                "verifiedBy": {"reference": "Practitioner/1"},  # R5's, unknown in R4
                "verificationDate": "2020-01-01",
            }
        ],
        "Consent.verification[0].verifiedBy",
    ),
    (
        "leap-r4-optin-deny-code.json",
        "category.0.coding.0.code",
        "treatment",
        "Consent.scope",
    ),
    (
        "leap-r5-deny-practitioner.json",
        "regulatoryBasis",
        {"coding": [{"system": _LOCAL, "code": "a"}, {"system": _LOCAL, "code": "b"}]},
        "Consent.regulatoryBasis[0].coding",
    ),
    (
        "leap-r5-deny-practitioner.json",
        "category.1",
        {"coding": [{"system": CONSENT_SCOPE, "code": "treatment"}]},
        "Consent.category[1].coding[0].code",
    ),
    (
        "leap-r5-deny-practitioner.json",
        "provision.0.data",
        [
            {
                "modifierExtension": _FOREIGN_MODIFIER,
                "meaning": "instance",
                "reference": {"reference": "Observation/1"},
            }
        ],
        "Consent.provision[0].data[0].modifierExtension[0]",
    ),
    (
        "leap-r5-deny-practitioner.json",
        "verification",
        [
            {
                "verified": True,
                "verificationType": {
                    "coding": [
                        {"system": CS_CONSENT_VERIFICATION_METHODS, "code": "written"},
                        {"system": CS_CONSENT_VERIFICATION_METHODS, "code": "verbal"},
                    ]
                },
                "verificationDate": ["2020-01-01"],
            }
        ],
        "Consent.verification[0].verificationType.coding",
    ),
]


def test_actor_role_is_read_from_its_participation_type_coding() -> None:
    """An actor role coded the other EHR's way first reads as its v3-ParticipationType code."""
    resource = _foreign("leap-r4-optin-deny-code.json")
    role = resource["provision"]["provision"][0]["actor"][0]["role"]
    role["coding"].insert(0, {"system": _LOCAL, "code": "recipient"})
    actor = from_consent(resource).provision.provisions[0].actors[0]
    assert actor.role == Coding(V3_PARTICIPATION_TYPE, "IRCP")


@pytest.mark.parametrize(
    "system",
    ["urn:oid:2.16.840.1.113883.5.90", "http://hl7.org/fhir/v3/ParticipationType"],
)
def test_actor_role_by_the_oid_or_stu3_url_of_participation_type_reads_canonical(
    system: str,
) -> None:
    """An actor role coded with v3-ParticipationType's OID or STU3 URL, alone or beside a local
    coding, is the same code as the canonical URL's: a deny naming the recipient that way must
    still match a request for that recipient."""
    resource = _foreign("leap-r4-optin-deny-code.json")
    role = resource["provision"]["provision"][0]["actor"][0]["role"]
    role["coding"][0]["system"] = system
    assert from_consent(resource).provision.provisions[0].actors[0].role == Coding(
        V3_PARTICIPATION_TYPE, "IRCP"
    )
    role["coding"].insert(0, {"system": _LOCAL, "code": "recipient"})
    assert from_consent(resource).provision.provisions[0].actors[0].role == Coding(
        V3_PARTICIPATION_TYPE, "IRCP"
    )


def test_optout_policy_rule_by_its_oid_beside_a_local_coding_disagrees_with_a_permit() -> None:
    """The v3-ActCode coding of a policy rule is found among several, by its OID too: an OPTOUT
    rule under a permit root is refused, not read as a permit."""
    resource = _foreign("leap-r4-optin-deny-code.json")
    resource["provision"]["type"] = "permit"
    resource["policyRule"] = {
        "coding": [
            {"system": _LOCAL, "code": "state-act"},
            {"system": "urn:oid:2.16.840.1.113883.5.4", "code": "OPTOUT"},
        ]
    }
    with pytest.raises(MappingError) as err:
        from_consent(resource)
    assert err.value.element == "Consent.policyRule"
    resource["policyRule"]["coding"][1]["code"] = "OPTIN"
    assert from_consent(resource).policy_basis[-1].code == Coding(V3_ACT_CODE, "OPTIN")


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = data
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    elif value is None:
        target.pop(last, None)
    else:
        target[last] = value


@pytest.mark.parametrize(
    ("fixture", "key", "value", "element"),
    MISFITS,
    ids=[m[1] + "=" + str(m[2])[:20] for m in MISFITS],
)
def test_misfits_raise_mapping_error_naming_the_element(
    fixture: str, key: str, value: Any, element: str
) -> None:
    """A consent that does not fit raises MappingError whose element names where."""
    resource = _foreign(fixture)
    from_consent(copy.deepcopy(resource))  # the unchanged fixture reads
    _set(resource, key, value)
    with pytest.raises(MappingError) as err:
        from_consent(resource)
    assert err.value.element == element


def test_deeply_nested_provisions_are_refused_not_crashing() -> None:
    """Hostile nesting depth raises MappingError, never RecursionError."""
    resource = _foreign("leap-r4-optin-deny-code.json")
    node: dict[str, Any] = {"type": "deny"}
    top = node
    for _ in range(500):
        child: dict[str, Any] = {"type": "deny"}
        node["provision"] = [child]
        node = child
    resource["provision"]["provision"] = [top]
    with pytest.raises(MappingError):
        from_consent(resource)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
_consent_keys = st.sampled_from(
    ["status", "scope", "category", "patient", "dateTime", "provision", "identifier", "policy",
     "policyRule", "decision", "subject", "date", "extension", "verification", "sourceAttachment",
     "performer", "grantee", "period", "policyBasis", "regulatoryBasis", "modifierExtension"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_consent_keys | st.text(max_size=6), _json, max_size=8))
def test_arbitrary_dicts_raise_mapping_error_only(data: dict[str, Any]) -> None:
    """Any JSON object read as a Consent either maps or raises MappingError; nothing else escapes."""
    data = {**data, "resourceType": "Consent"}
    with contextlib.suppress(MappingError):
        from_consent(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(consent_records(), st.sampled_from([R4, R5]), st.data())
def test_mutated_consents_raise_mapping_error_only(
    record: ConsentRecord, version: str, data: st.DataObject
) -> None:
    """A valid Consent with one element replaced by junk maps or raises MappingError, never crashes."""
    resource = to_consent(record, version=version)
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((node, i))
                walk(v)

    walk(resource)
    container, key = data.draw(st.sampled_from(paths))
    container[key] = data.draw(_json)
    with contextlib.suppress(MappingError):
        from_consent(resource)


# --- registry ----------------------------------------------------------------------------------


def test_registry_finds_the_consent_mapper() -> None:
    """The registry routes kind consent/consent-revocation and resource type Consent to MAPPER."""
    assert registry.mapper_for_kind("consent") is MAPPER
    assert registry.mapper_for_kind("consent-revocation") is MAPPER
    assert registry.mapper_for_resource_type("Consent") is MAPPER


def test_mapper_protocol_round_trip() -> None:
    """MAPPER.load/dump/to_fhir/from_fhir agree with each other."""
    data = json.loads((ROOT / "examples" / "consent" / "sharing.json").read_text())
    record = MAPPER.load(data)
    assert MAPPER.load(MAPPER.dump(record)) == record
    assert MAPPER.from_fhir(MAPPER.to_fhir(record, version=R5)) == [record]
