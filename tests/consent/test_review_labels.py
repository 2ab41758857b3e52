"""Review findings 4 and 5: a resource's labels, profiles, codes and identifiers are read strictly.

A malformed element the engine matches on must never shrink what the engine sees (a deny scoped by
it would be missed: a wider answer); it is refused with an :class:`InputError` naming the element.
Security labels of the HL7 v3 systems are read in their canonical form and must be known codes,
in :func:`disclosure_request` and in the JSON request form alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import KNOWN_LABELS, LABEL_MESSAGE
from fhir_alliance.consent.gate import disclosure_request, requested_resource
from fhir_alliance.consent.request_form import load_decision_request
from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Coding, Identifier
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import (
    LABEL_AI_ASSISTED,
    LABEL_BEHAVIORAL_HEALTH,
    LABEL_PSYCHOTHERAPY_NOTE,
    LABEL_RESTRICTED,
    LABEL_TEST_DATA,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_OBSERVATION_VALUE,
)

AT = datetime(2025, 6, 1, tzinfo=UTC)
OID_ACT_CODE = "urn:oid:2.16.840.1.113883.5.4"


def _consent(decision: str = "permit", provision: dict[str, Any] | None = None) -> ConsentRecord:
    data: dict[str, Any] = {
        "kind": "consent",
        "id": "https://c.example|review-labels",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p1"},
        "status": "active",
        "decision": decision,
        "date": "2025-03-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://c.example/pol"}],
    }
    if provision is not None:
        data["provision"] = provision
    return load_consent(data)


PLAIN_PERMIT = _consent()
#: Permit, except content labelled PSY (v3 ActCode).
PSY_DENIED = _consent(
    provision={
        "provisions": [
            {"type": "deny", "security_labels": [{"system": V3_ACT_CODE, "code": "PSY"}]}
        ]
    }
)


def _note(**elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": "n1",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "date": "2025-05-01T00:00:00Z",
        **elements,
    }


def _coded(**elements: Any) -> dict[str, Any]:
    """A resource that says what it is in ``code`` (a document says it in ``type``)."""
    return _note(resourceType="Observation", **elements)


def _decide(consent: ConsentRecord, resource: dict[str, Any]) -> DecisionOutcome:
    request = disclosure_request(
        resource, patient="Patient/p1", recipient="Organization/ehr", purposes=["TREAT"], at=AT
    )
    return ConsentEngine([consent]).decide(request).outcome


def _refused(resource: dict[str, Any]) -> set[str]:
    with pytest.raises(InputError) as caught:
        _decide(PLAIN_PERMIT, resource)
    return {i.path for i in caught.value.issues}


def _form(labels: list[Any]) -> DecisionOutcome:
    request = load_decision_request(
        {
            "patient": {"reference": "Patient/p1"},
            "actors": [{"reference": "Organization/ehr"}],
            "purposes": ["TREAT"],
            "action": "access",
            "at": "2025-06-01T09:00:00Z",
            "resource": {"type": "DocumentReference", "labels": labels},
        }
    )
    return ConsentEngine([PSY_DENIED]).decide(request).outcome


# --- finding 4: labels ---------------------------------------------------------------------------


def test_the_canonical_psythpn_label_needs_an_explicit_permit() -> None:
    """The baseline the reviewer compared with: a plain permit does not release PSYTHPN."""
    label = {"system": V3_ACT_CODE, "code": "PSYTHPN"}
    assert _decide(PLAIN_PERMIT, _note(meta={"security": [label]})) is DecisionOutcome.DENY


def test_the_oid_form_of_psythpn_is_the_same_label() -> None:
    """``urn:oid:2.16.840.1.113883.5.4`` is v3 ActCode: PSYTHPN by OID is denied too (was PERMIT)."""
    note = _note(meta={"security": [{"system": OID_ACT_CODE, "code": "PSYTHPN"}]})
    assert _decide(PLAIN_PERMIT, note) is DecisionOutcome.DENY
    assert requested_resource(note).labels == (Coding(*LABEL_PSYCHOTHERAPY_NOTE),)


@pytest.mark.parametrize(
    ("security", "path"),
    [
        ({"system": V3_ACT_CODE, "code": "PSYTHPN"}, "meta.security"),  # an object, not a list
        ([{"coding": [{"system": V3_ACT_CODE, "code": "PSYTHPN"}]}], "meta.security[0]"),
        ([{"code": "PSYTHPN"}], "meta.security[0]"),  # no system
        ([{"system": V3_ACT_CODE}], "meta.security[0]"),  # no code
        (["PSYTHPN"], "meta.security[0]"),
        ([{"system": V3_ACT_CODE, "code": 5}], "meta.security[0]"),
        ([{"system": f"{V3_ACT_CODE} ", "code": "PSYTHPN"}], "meta.security[0]"),
        ([{"system": V3_ACT_CODE.replace("v3-ActCode", "v3-actcode"), "code": "PSYTHPN"}], "meta.security[0]"),
    ],
)  # fmt: skip
def test_malformed_labels_are_refused_not_dropped(security: object, path: str) -> None:
    """Each of these gave PERMIT (the label silently dropped); now an InputError at the label."""
    with pytest.raises(InputError) as caught:
        _decide(PLAIN_PERMIT, _note(meta={"security": security}))
    assert [i.path for i in caught.value.issues] == [path]


@pytest.mark.parametrize("code", ["psy", "PSY ", " PSY", "Psy", "PSYX"])
def test_unknown_codes_of_the_hl7_label_systems_are_refused(code: str) -> None:
    """A nested PSY deny is never escaped by a misspelt label: refused by the gate…"""
    assert _decide(
        PSY_DENIED, _note(meta={"security": [{"system": V3_ACT_CODE, "code": "PSY"}]})
    ) is (DecisionOutcome.DENY)
    with pytest.raises(InputError) as caught:
        _decide(PSY_DENIED, _note(meta={"security": [{"system": V3_ACT_CODE, "code": code}]}))
    assert [i.path for i in caught.value.issues] == ["meta.security[0]"]


@pytest.mark.parametrize(
    "label", ["psy", "PSY ", {"system": V3_ACT_CODE, "code": "psy"}, {"system": V3_ACT_CODE, "code": "PSY "}]
)  # fmt: skip
def test_the_request_form_refuses_them_too(label: object) -> None:
    """…and by the JSON request form (which gave PERMIT for these), at the label's path."""
    assert _form(["PSY"]) is DecisionOutcome.DENY
    with pytest.raises(InputError) as caught:
        _form([label])
    assert [i.path for i in caught.value.issues] == ["resource.labels.0"]
    if label in ("psy", {"system": V3_ACT_CODE, "code": "psy"}):
        assert caught.value.issues[0].message == LABEL_MESSAGE


@pytest.mark.parametrize(
    ("system", "canonical", "code"),
    [
        ("urn:oid:2.16.840.1.113883.5.4", V3_ACT_CODE, "PSY"),
        ("urn:oid:2.16.840.1.113883.5.25", V3_CONFIDENTIALITY, "R"),
        ("urn:oid:2.16.840.1.113883.5.83", V3_OBSERVATION_VALUE, "AIAST"),
        ("urn:oid:2.16.840.1.113883.5.8", V3_ACT_REASON, "HTEST"),
        ("http://hl7.org/fhir/v3/ActCode", V3_ACT_CODE, "PSY"),
    ],
)
def test_oids_of_the_label_systems_are_normalised(system: str, canonical: str, code: str) -> None:
    """Both readers give the canonical URI for the OID (and FHIR STU3 URL) of each v3 system."""
    resource = requested_resource(_note(meta={"security": [{"system": system, "code": code}]}))
    assert resource.labels == (Coding(canonical, code),)
    request = load_decision_request(
        {
            "patient": {"reference": "Patient/p1"},
            "actors": [{"reference": "Organization/ehr"}],
            "at": "2025-06-01T09:00:00Z",
            "resource": {"labels": [{"system": system, "code": code}]},
        }
    )
    assert request.resource is not None and request.resource.labels == (Coding(canonical, code),)


def test_an_oid_psy_label_meets_the_psy_deny() -> None:
    """The nested deny matches a PSY label given by OID, through either reader."""
    label = {"system": OID_ACT_CODE, "code": "PSY"}
    assert _decide(PSY_DENIED, _note(meta={"security": [label]})) is DecisionOutcome.DENY
    assert _form([label]) is DecisionOutcome.DENY


def test_labels_of_other_systems_pass_as_they_are() -> None:
    """No consent can name another system's label: it is kept as given, and changes nothing."""
    label = {"system": "https://hospital.example/labels", "code": "vip"}
    assert requested_resource(_note(meta={"security": [label]})).labels == (
        Coding("https://hospital.example/labels", "vip"),
    )
    assert _decide(PLAIN_PERMIT, _note(meta={"security": [label]})) is DecisionOutcome.PERMIT


def test_the_labels_this_project_applies_are_known() -> None:
    """Every label the library itself writes is one the readers accept (HTEST marks test data)."""
    for label in (
        LABEL_RESTRICTED,
        LABEL_BEHAVIORAL_HEALTH,
        LABEL_PSYCHOTHERAPY_NOTE,
        LABEL_AI_ASSISTED,
        LABEL_TEST_DATA,
    ):
        assert label in KNOWN_LABELS
    note = _note(meta={"security": [{"system": V3_ACT_REASON, "code": "HTEST"}]})
    assert _decide(PLAIN_PERMIT, note) is DecisionOutcome.PERMIT


def test_meta_that_is_not_an_object_is_refused() -> None:
    assert _refused(_note(meta=[{"security": []}])) == {"meta"}


# --- finding 5 and the other elements: profiles, identifiers, codes, type ---------------------------


@pytest.mark.parametrize(
    ("meta", "paths"),
    [
        ({"profile": 5}, {"meta.profile"}),
        ({"profile": "http://x/p"}, {"meta.profile"}),  # was read as ('h', 't', 't', …)
        ({"profile": [5, "http://x/p"]}, {"meta.profile[0]"}),
        ({"profile": ["http://x/ p"]}, {"meta.profile[0]"}),
    ],
)
def test_malformed_profiles_are_refused(meta: dict[str, Any], paths: set[str]) -> None:
    assert _refused(_note(meta=meta)) == paths


def test_a_versioned_profile_meets_a_deny_scoped_to_the_profile() -> None:
    """``…|1.0`` is a version of the profile a deny names: the deny applies."""
    profile = "https://x.example/StructureDefinition/note"
    consent = _consent(
        provision={
            "provisions": [
                {"type": "deny", "classes": [{"system": "https://x.example/p", "code": profile}]}
            ]
        }
    )
    assert _decide(consent, _note(meta={"profile": [profile]})) is DecisionOutcome.DENY
    assert _decide(consent, _note(meta={"profile": [f"{profile}|1.0"]})) is DecisionOutcome.DENY
    assert _decide(consent, _note(meta={"profile": ["https://x.example/other"]})) is (
        DecisionOutcome.PERMIT
    )


@pytest.mark.parametrize(
    ("identifier", "paths"),
    [
        (5, {"identifier"}),  # was a TypeError
        ({"system": "s", "value": "v"}, {"identifier"}),
        (["s|v"], {"identifier[0]"}),
        ([{"system": "s", "value": 5}], {"identifier[0]"}),
    ],
)
def test_malformed_identifiers_are_refused(identifier: object, paths: set[str]) -> None:
    """Identifiers name the resource for ``provision.data``: one dropped could miss a deny."""
    assert _refused({"resourceType": "Observation", "identifier": identifier}) == paths


def test_an_identifier_without_a_system_is_skipped() -> None:
    """No provision can name it (data references by identifier have both parts)."""
    resource = requested_resource(
        {
            "resourceType": "Observation",
            "identifier": [{"value": "x"}, {"system": "s", "value": "v"}],
        }
    )
    assert resource.reference is not None
    assert resource.reference.identifier == Identifier("s", "v")


OBS = {"resourceType": "Observation"}


@pytest.mark.parametrize(
    ("resource", "paths"),
    [
        ({"id": 5}, {"id"}),
        ({"id": " n1"}, {"id"}),
        ({"resourceType": "Document Reference"}, {"resourceType"}),
        ({**OBS, "code": {"coding": {"system": "http://loinc.org", "code": "X"}}}, {"code.coding"}),
        ({**OBS, "code": {"coding": ["X"]}}, {"code.coding[0]"}),
        (
            {**OBS, "code": {"coding": [{"system": "http://loinc.org", "code": 5}]}},
            {"code.coding[0]"},
        ),
    ],
)
def test_other_malformed_elements_are_refused(resource: dict[str, Any], paths: set[str]) -> None:
    assert _refused(_note(**resource)) == paths


def _code_denied() -> ConsentRecord:
    """Permit, except content coded LOINC 11488-4."""
    return _consent(
        provision={
            "provisions": [
                {"type": "deny", "codes": [{"system": "http://loinc.org", "code": "11488-4"}]}
            ]
        }
    )


def test_one_bad_coding_among_good_ones_cannot_escape_a_code_deny() -> None:
    """Dropping only the malformed coding would have left the good one: the code deny missed."""
    consent = _code_denied()
    coding = [
        {"system": "http://loinc.org", "code": "1-8"},
        {"system": "http://loinc.org", "code": ["11488-4"]},
    ]
    with pytest.raises(InputError):
        _decide(consent, _coded(code={"coding": coding}))


def test_codes_left_out_are_unknown_and_meet_a_code_deny() -> None:
    """A ``code`` of another shape, or codings without a system, leave the codes unknown: a deny
    scoped by code applies (as to a resource without codes), a permit scoped by code does not."""
    consent = _code_denied()
    for code in (
        [{"system": "http://loinc.org", "code": "11488-4"}],  # Questionnaire's shape
        "11488-4",
        {"coding": [{"code": "11488-4"}]},
        {"text": "consult note"},
    ):
        assert requested_resource(_coded(code=code)).codes == ()
        assert _decide(consent, _coded(code=code)) is DecisionOutcome.DENY
    known = {"coding": [{"system": "http://loinc.org", "code": "1-8"}, {"display": "x"}]}
    assert _decide(consent, _coded(code=known)) is DecisionOutcome.PERMIT


def test_issues_are_reported_together() -> None:
    """Every malformed element at once, each at its path."""
    resource = _coded(
        meta={"security": [1, {"system": 2}], "profile": [3]},
        code={"coding": "x"},
        identifier=[7],
    )
    assert _refused(resource) == {
        "meta.security[0]",
        "meta.security[1]",
        "meta.profile[0]",
        "code.coding",
        "identifier[0]",
    }
