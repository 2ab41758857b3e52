"""The consent gate reads a FHIR resource's facts for the engine, and the engine decides on them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.gate import DISCLOSE, disclosure_request, requested_resource
from fhir_alliance.errors import InputError
from fhir_alliance.mapping.observation import MAPPER
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    Decision,
    Provision,
    ProvisionActor,
)
from fhir_alliance.terminology import (
    CONSENT_ACTION,
    LABEL_PSYCHOTHERAPY_NOTE,
    V3_ACT_REASON,
    V3_PARTICIPATION_TYPE,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "observations"
PATIENT = Ref(reference="Patient/example-client", type="Patient")
EHR = Ref(reference="Organization/ehr", type="Organization")
TREAT = Coding(system=V3_ACT_REASON, code="TREAT")
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _resources(example: str) -> list[dict[str, Any]]:
    record = MAPPER.load(json.loads((EXAMPLES / f"{example}.json").read_text()))
    return MAPPER.to_fhir(record)


def _sharing_consent(*, permit_psythpn: bool = False) -> ConsentRecord:
    label = Coding(*LABEL_PSYCHOTHERAPY_NOTE)
    exceptions = (
        (Provision(type=Decision.PERMIT, security_labels=(label,)),) if permit_psythpn else ()
    )
    return ConsentRecord(
        id=Identifier("https://clinic.example.org/consents", "gate-1"),
        kind=ConsentKind.SHARING,
        patient=PATIENT,
        status=ConsentStatus.ACTIVE,
        decision=Decision.PERMIT,
        date=datetime(2026, 1, 1, tzinfo=UTC),
        provision=Provision(
            type=Decision.PERMIT,
            actors=(ProvisionActor(role=Coding(V3_PARTICIPATION_TYPE, "IRCP"), reference=EHR),),
            actions=(Coding(CONSENT_ACTION, "disclose"),),
            purposes=(TREAT,),
            provisions=exceptions,
        ),
    )


def _decide(consent: ConsentRecord, resource: dict[str, Any]) -> DecisionOutcome:
    request = disclosure_request(
        resource, patient=[PATIENT], recipient=[EHR], purposes=[TREAT], at=NOW
    )
    return ConsentEngine([consent]).decide(request).outcome


def test_facts_read_from_an_observation() -> None:
    """Type, id, identifier, profile, code, labels, date, derivedFrom and performer are read."""
    panel = _resources("srs-administration")[0]
    facts = requested_resource(panel)
    assert facts.type == "Observation"
    assert facts.reference is not None
    assert facts.reference.reference == f"Observation/{panel['id']}"
    assert facts.reference.identifier is not None
    assert facts.reference.identifier.value == panel["identifier"][0]["value"]
    assert facts.profiles == tuple(panel["meta"]["profile"])
    assert {c.code for c in facts.codes} == {c["code"] for c in panel["code"]["coding"]}
    assert {c.code for c in facts.labels} == {"R", "BH"}
    assert facts.date == datetime.fromisoformat(panel["effectiveDateTime"])
    assert {r.reference for r in facts.authors} == {p["reference"] for p in panel["performer"]}


def test_scores_go_and_session_narrative_is_held() -> None:
    """Under a TREAT sharing consent, SRS scores are permitted and a rupture narrative (PSYTHPN) is not."""
    consent = _sharing_consent()
    for resource in _resources("srs-administration"):
        assert _decide(consent, resource) is DecisionOutcome.PERMIT
    rupture = _resources("rupture")[0]
    assert any(s["code"] == "PSYTHPN" for s in rupture["meta"]["security"])
    assert _decide(consent, rupture) is DecisionOutcome.DENY


def test_psychotherapy_note_released_only_by_explicit_permit() -> None:
    """A provision naming PSYTHPN releases the rupture narrative to the same recipient."""
    rupture = _resources("rupture")[0]
    assert _decide(_sharing_consent(permit_psythpn=True), rupture) is DecisionOutcome.PERMIT


def test_request_is_a_disclosure_of_the_resource_subject() -> None:
    """The request's action is disclose and the resource's subject joins the patient list."""
    panel = _resources("srs-administration")[0]
    other_way = Ref(identifier=Identifier("https://clinic.example.org/mrn", "000123"))
    request = disclosure_request(
        panel, patient=[other_way], recipient=[EHR], purposes=[TREAT], at=NOW
    )
    assert request.action == DISCLOSE
    assert other_way in request.patient
    assert any(p.reference == "Patient/example-client" for p in request.patient)


@pytest.mark.parametrize("value", ["2025", "2025-03", "2025-03-01", "2025-03-01T10:00:00", "junk"])
def test_imprecise_dates_are_left_out(value: str) -> None:
    """Partial dates and dates without a UTC offset are not guessed into instants."""
    facts = requested_resource({"resourceType": "Observation", "effectiveDateTime": value})
    assert facts.date is None


def test_resource_without_type_is_refused() -> None:
    """A dict without resourceType is an input error naming resourceType."""
    with pytest.raises(InputError) as caught:
        requested_resource({"id": "x"})
    assert caught.value.issues[0].path == "resourceType"


def test_hostile_shapes_are_input_errors_or_ignored() -> None:
    """Wrong JSON types in meta, code and references are refused at their paths, never a crash;
    a reference element holding one Reference instead of a list is read."""
    with pytest.raises(InputError) as caught:
        requested_resource(
            {
                "resourceType": "Observation",
                "meta": {"security": [1, {"system": 2}], "profile": [3]},
                "code": {"coding": "x"},
                "performer": [{"reference": 5}, "y"],
                "identifier": [{"system": "s"}],
            }
        )
    assert {i.path for i in caught.value.issues} == {
        "meta.security[0]",
        "meta.security[1]",
        "meta.profile[0]",
        "code.coding",
        "performer[0].reference",
        "performer[1]",
    }
    facts = requested_resource(
        {
            "resourceType": "Observation",
            "derivedFrom": {"reference": "QuestionnaireResponse/1"},
            "identifier": [{"system": "s"}],
        }
    )
    assert facts.labels == () and facts.codes == () and facts.authors == ()
    assert [r.reference for r in facts.refers_to] == ["QuestionnaireResponse/1"]


def test_plain_strings_are_converted() -> None:
    """Strings for references, identifiers and purposes become Refs and codings."""
    panel = _resources("srs-administration")[0]
    request = disclosure_request(
        panel,
        patient="https://clinic.example.org/mrn|000123",
        recipient=["Organization/ehr"],
        purposes=["TREAT"],
        at=NOW,
    )
    assert request.patient[0] == Ref(
        identifier=Identifier("https://clinic.example.org/mrn", "000123")
    )
    assert [a.reference for a in request.actors] == [Ref(reference="Organization/ehr")]
    assert request.purposes == (TREAT,)
    consent = _sharing_consent()
    assert ConsentEngine([consent]).decide(request).outcome is DecisionOutcome.PERMIT


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"purposes": ["TRAET"]}, "purposes.0"),
        ({"purposes": [Coding(V3_ACT_REASON, "treat")]}, "purposes.0"),
        ({"purposes": [3]}, "purposes.0"),
        ({"purposes": "TREAT"}, "purposes"),
        ({"recipient": []}, "recipient"),
        ({"recipient": [7]}, "recipient.0"),
        ({"recipient": [""]}, "recipient.0"),
        ({"patient": None}, "patient"),
        ({"at": "2026-11-21T09:00:00Z"}, "at"),
        ({"at": datetime(2026, 11, 21, 9, 0)}, "at"),
        ({"resource": "Observation/1"}, "resource"),
    ],
)
def test_bad_arguments_are_input_errors(change: dict[str, Any], path: str) -> None:
    """Wrong argument types and unknown purposes are refused naming the argument, not later."""
    arguments: dict[str, Any] = {
        "resource": _resources("srs-administration")[0],
        "patient": [PATIENT],
        "recipient": [EHR],
        "purposes": [TREAT],
        "at": NOW,
        **change,
    }
    resource = arguments.pop("resource")
    with pytest.raises(InputError) as info:
        disclosure_request(resource, **arguments)
    assert [i.path for i in info.value.issues] == [path]


def test_declined_intervention_does_not_block_sharing() -> None:
    """A client who declines an intervention (a treatment consent, decision deny) still shares."""
    declined = ConsentRecord(
        id=Identifier("https://clinic.example.org/consents", "gate-declined"),
        kind=ConsentKind.TREATMENT,
        patient=PATIENT,
        status=ConsentStatus.ACTIVE,
        decision=Decision.DENY,
        date=datetime(2026, 6, 1, tzinfo=UTC),
        intervention=Coding("http://snomed.info/sct", "228557008"),
    )
    request = disclosure_request(
        _resources("srs-administration")[0],
        patient=[PATIENT],
        recipient=[EHR],
        purposes=[TREAT],
        at=NOW,
    )
    decision = ConsentEngine([_sharing_consent(), declined]).decide(request)
    assert decision.outcome is DecisionOutcome.PERMIT
    alone = ConsentEngine([declined]).decide(request)
    assert alone.outcome is DecisionOutcome.NO_CONSENT
