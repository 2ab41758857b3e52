"""Review of the gate, second round: references, identifiers and codes it could not read.

A fact the gate cannot read is never silently dropped when dropping it could widen the answer.
Malformed entries of the reference elements (``encounter``, ``derivedFrom``, …, ``performer``,
``author``) are refused at their path; a Reference that names nobody (a ``display`` only) leaves
the authors, or the resource's data references, unknown, so that a deny scoped by
``provision.data`` still applies. Codes given by the OIDs of LOINC and SNOMED CT are read as
``http://loinc.org`` and ``http://snomed.info/sct``, in the gate and in the request form alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.gate import disclosure_request, requested_resource
from fhir_alliance.consent.request_form import load_decision_request
from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import LOINC, SNOMED

AT = datetime(2025, 6, 1, tzinfo=UTC)
OID_LOINC = "urn:oid:2.16.840.1.113883.6.1"
OID_SNOMED = "urn:oid:2.16.840.1.113883.6.96"
REFERS_TO = ("encounter", "derivedFrom", "hasMember", "basedOn", "partOf", "focus", "target")
AUTHORS = ("performer", "author")


def _permit_except(deny: dict[str, Any]) -> ConsentRecord:
    """A sharing consent: permit, except what ``deny`` scopes."""
    return load_consent(
        {
            "kind": "consent",
            "id": "https://c.example|review-gate2",
            "consent_kind": "sharing",
            "patient": {"reference": "Patient/p1"},
            "status": "active",
            "decision": "permit",
            "date": "2025-03-01T10:00:00+00:00",
            "policy_basis": [{"uri": "https://c.example/pol"}],
            "provision": {"provisions": [{"type": "deny", **deny}]},
        }
    )


def _observation(**elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-05-01T10:00:00Z",
        **elements,
    }


def _decide(consent: ConsentRecord, resource: dict[str, Any]) -> DecisionOutcome:
    request = disclosure_request(
        resource, patient="Patient/p1", recipient="Organization/ehr", purposes=["TREAT"], at=AT
    )
    return ConsentEngine([consent]).decide(request).outcome


def _data(meaning: str, reference: str) -> dict[str, Any]:
    return {"data": [{"meaning": meaning, "reference": {"reference": reference}}]}


# --- malformed references are refused at their path ----------------------------------------------

MALFORMED = [
    pytest.param("y", "", id="not-an-object"),
    pytest.param(5, "", id="a-number"),
    pytest.param({"reference": 5}, ".reference", id="reference-not-a-string"),
    pytest.param({"reference": ""}, ".reference", id="reference-empty"),
    pytest.param({"reference": " Practitioner/x"}, ".reference", id="reference-spaces"),
    pytest.param({"reference": ["Practitioner/x"]}, ".reference", id="reference-a-list"),
    pytest.param({"identifier": "https://n.example|x"}, ".identifier", id="identifier-a-string"),
    pytest.param({"identifier": {"value": "x"}}, ".identifier", id="identifier-no-system"),
    pytest.param({"identifier": {"system": "https://n.example"}}, ".identifier", id="no-value"),
    pytest.param(
        {"reference": "Practitioner/x", "identifier": {"system": 1, "value": "x"}},
        ".identifier",
        id="identifier-system-not-a-string",
    ),
]


@pytest.mark.parametrize("element", [*REFERS_TO, *AUTHORS])
@pytest.mark.parametrize(("entry", "suffix"), MALFORMED)
def test_a_malformed_reference_is_refused_at_its_path(
    element: str, entry: object, suffix: str
) -> None:
    """Left out, a deny scoped by the party or resource it names would be missed."""
    resource = _observation(**{element: [{"reference": "Practitioner/ok"}, entry]})
    with pytest.raises(InputError) as caught:
        requested_resource(resource)
    assert [i.path for i in caught.value.issues] == [f"{element}[1]{suffix}"]


def test_a_single_reference_is_refused_at_the_element() -> None:
    """An element holding one Reference (``encounter``) names the element itself."""
    with pytest.raises(InputError) as caught:
        requested_resource(_observation(encounter={"reference": 7}))
    assert [i.path for i in caught.value.issues] == ["encounter.reference"]
    with pytest.raises(InputError) as caught:
        requested_resource(_observation(encounter="Encounter/e1"))
    assert [i.path for i in caught.value.issues] == ["encounter"]


def test_a_deny_by_author_is_not_missed_for_a_malformed_performer() -> None:
    """The reviewer's case: the performer the deny names, its reference given as a list, was
    dropped and the resource released on the strength of the other performer."""
    consent = _permit_except(_data("authoredby", "Practitioner/x"))
    performer = [{"reference": "Practitioner/y"}, {"reference": ["Practitioner/x"]}]
    with pytest.raises(InputError) as caught:
        _decide(consent, _observation(performer=performer))
    assert [i.path for i in caught.value.issues] == ["performer[1].reference"]


def test_valid_references_are_read() -> None:
    """References by literal reference, by identifier and both; Provenance agents' ``who``."""
    ident = {"system": "https://n.example", "value": "x"}
    facts = requested_resource(
        _observation(
            encounter={"reference": "Encounter/e1", "display": "the session"},
            derivedFrom=[{"identifier": ident, "type": "QuestionnaireResponse"}],
            performer=[{"reference": "Practitioner/y", "identifier": ident}],
            author=[{"who": {"reference": "Device/d1"}}],
        )
    )
    assert facts.refers_to == (
        Ref(reference="Encounter/e1"),
        Ref(identifier=Identifier("https://n.example", "x"), type="QuestionnaireResponse"),
    )
    assert facts.authors == (
        Ref(reference="Practitioner/y", identifier=Identifier("https://n.example", "x")),
        Ref(reference="Device/d1"),
    )
    assert facts.reference == Ref(reference="Observation/o1", type="Observation")


# --- a Reference that names nobody leaves the fact unknown ---------------------------------------


def test_a_display_only_author_leaves_the_authors_unknown() -> None:
    """Dropping the display-only performer left the other one as *the* authors: a deny naming
    the unnamed one was missed. The authors are unknown instead: the deny applies."""
    consent = _permit_except(_data("authoredby", "Practitioner/x"))
    performer = [{"reference": "Practitioner/y"}, {"display": "Dr X"}]
    assert requested_resource(_observation(performer=performer)).authors == ()
    assert _decide(consent, _observation(performer=performer)) is DecisionOutcome.DENY
    # Named, the other performer is known not to be the one the deny names.
    named = [{"reference": "Practitioner/y"}]
    assert _decide(consent, _observation(performer=named)) is DecisionOutcome.PERMIT


def test_a_display_only_author_never_earns_a_permit_by_author() -> None:
    """Unknown authors never match a permit scoped by author (nothing is widened either way)."""
    consent = load_consent(
        {
            "kind": "consent",
            "id": "https://c.example|review-gate2-permit",
            "consent_kind": "sharing",
            "patient": {"reference": "Patient/p1"},
            "status": "active",
            "decision": "deny",
            "date": "2025-03-01T10:00:00+00:00",
            "policy_basis": [{"uri": "https://c.example/pol"}],
            "provision": {
                "provisions": [{"type": "permit", **_data("authoredby", "Practitioner/y")}]
            },
        }
    )
    named = [{"reference": "Practitioner/y"}]
    assert _decide(consent, _observation(performer=named)) is DecisionOutcome.PERMIT
    unnamed = [*named, {"display": "Dr X"}]
    assert _decide(consent, _observation(performer=unnamed)) is DecisionOutcome.DENY


@pytest.mark.parametrize("element", REFERS_TO)
def test_a_display_only_reference_leaves_the_data_references_unknown(element: str) -> None:
    """Dropping a display-only ``derivedFrom`` left the known ones as all it refers to: a deny
    of the dependents of the one it names was missed. The resource's data references are
    unknown instead (no own reference): the deny applies."""
    consent = _permit_except(_data("dependents", "QuestionnaireResponse/q1"))
    known = {"reference": "QuestionnaireResponse/q2"}
    resource = _observation(**{element: [known, {"display": "the session questionnaire"}]})
    facts = requested_resource(resource)
    assert facts.reference is None and facts.refers_to == (Ref(reference=known["reference"]),)
    assert _decide(consent, resource) is DecisionOutcome.DENY
    assert _decide(consent, _observation(**{element: [known]})) is DecisionOutcome.PERMIT


# --- codes given by OID --------------------------------------------------------------------------


@pytest.mark.parametrize(("oid", "system"), [(OID_LOINC, LOINC), (OID_SNOMED, SNOMED)])
def test_a_code_given_by_oid_meets_a_deny_by_its_canonical_system(oid: str, system: str) -> None:
    consent = _permit_except({"codes": [{"system": system, "code": "89204-2"}]})
    resource = _observation(code={"coding": [{"system": oid, "code": "89204-2"}]})
    assert requested_resource(resource).codes == (Coding(system=system, code="89204-2"),)
    assert _decide(consent, resource) is DecisionOutcome.DENY


def test_the_request_form_reads_codes_given_by_oid_canonically() -> None:
    consent = _permit_except({"codes": [{"system": LOINC, "code": "89204-2"}]})
    request = load_decision_request(
        {
            "patient": {"reference": "Patient/p1"},
            "actors": [{"reference": "Organization/ehr"}],
            "purposes": ["TREAT"],
            "action": "disclose",
            "at": "2025-06-01T09:00:00Z",
            "resource": {
                "type": "Observation",
                "codes": [{"system": OID_LOINC, "code": "89204-2", "display": "WAI-SR"}],
            },
        }
    )
    assert request.resource is not None
    assert request.resource.codes == (Coding(LOINC, "89204-2", "WAI-SR"),)
    assert ConsentEngine([consent]).decide(request).outcome is DecisionOutcome.DENY
