"""A resource known several ways (its ``Type/id`` and each of its identifiers) is matched by a
``provision.data`` reference naming it any of those ways: permits and denies alike (a deny by its
second identifier released it before: fail open)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import DecisionRequest, RequestActor, RequestedResource
from fhir_alliance.consent.gate import disclosure_request, requested_resource
from fhir_alliance.consent.request_form import load_decision_request
from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    DataMeaning,
    DataRef,
    Decision,
    Provision,
)
from fhir_alliance.terminology import CONSENT_ACTION, V3_ACT_REASON

PATIENT = Ref(reference="Patient/example-client", type="Patient")
EHR = Ref(reference="Organization/ehr", type="Organization")
TREAT = Coding(system=V3_ACT_REASON, code="TREAT")
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
SOURCE = "https://clinic.example.org/observations"
REGISTRY = "https://registry.example.org/measures"
FIRST = Identifier(SOURCE, "obs-1")
SECOND = Identifier(REGISTRY, "m-77")


def _observation(*, with_id: bool = True, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [FIRST.to_fhir(), SECOND.to_fhir()],
        "subject": {"reference": PATIENT.reference},
        "effectiveDateTime": "2026-11-01T10:00:00Z",
        **extra,
    }
    if with_id:
        resource["id"] = "o1"
    return resource


def _named(reference: str | None = None, identifier: Identifier | None = None) -> Ref:
    return Ref(reference=reference, identifier=identifier)


def _consent(
    decision: str,
    *data: Ref,
    exception: str | None = None,
    meaning: DataMeaning = DataMeaning.INSTANCE,
) -> ConsentRecord:
    """A consent of ``PATIENT`` for disclosure: with ``exception``, the root decides ``decision``
    for everything and a nested ``exception`` provision is scoped by ``data``; else the root
    itself is scoped by ``data``."""
    refs = tuple(DataRef(meaning=meaning, reference=r) for r in data)
    nested = (Provision(type=Decision(exception), data=refs),) if exception else ()
    return ConsentRecord(
        id=Identifier("https://clinic.example.org/consents", f"aliases-{decision}"),
        kind=ConsentKind.SHARING,
        patient=PATIENT,
        status=ConsentStatus.ACTIVE,
        decision=Decision(decision),
        date=datetime(2026, 1, 1, tzinfo=UTC),
        provision=Provision(
            type=Decision(decision),
            actions=(Coding(CONSENT_ACTION, "disclose"),),
            purposes=(TREAT,),
            data=() if exception else refs,
            provisions=nested,
        ),
    )


def _gate(consent: ConsentRecord, resource: dict[str, Any]) -> DecisionOutcome:
    request = disclosure_request(resource, patient=PATIENT, recipient=EHR, purposes=[TREAT], at=NOW)
    return ConsentEngine([consent]).decide(request).outcome


def test_deny_by_second_identifier_denies() -> None:
    """A deny naming the Observation by its second identifier holds it (was released)."""
    consent = _consent("permit", _named(identifier=SECOND), exception="deny")
    assert _gate(consent, _observation()) is DecisionOutcome.DENY


def test_permit_by_second_identifier_permits() -> None:
    """A permit naming the Observation by its second identifier releases it."""
    consent = _consent("permit", _named(identifier=SECOND))
    assert _gate(consent, _observation()) is DecisionOutcome.PERMIT


@pytest.mark.parametrize(
    "name",
    [
        _named(identifier=FIRST),
        _named("Observation/o1"),
        _named("Observation/o1", SECOND),
        _named("Observation/o2", SECOND),
    ],
    ids=["first-identifier", "reference", "reference-and-second-identifier", "conflicting-pair"],
)
def test_deny_by_any_other_way_still_denies(name: Ref) -> None:
    """A deny naming it by its first identifier, its reference, or both still holds it; so does
    one naming another reference with this one's identifier (any name in common matches)."""
    consent = _consent("permit", name, exception="deny")
    assert _gate(consent, _observation()) is DecisionOutcome.DENY


@pytest.mark.parametrize(
    "name",
    [
        _named("Observation/o2"),
        _named(identifier=Identifier(REGISTRY, "m-78")),
        _named("Observation/o2", Identifier(REGISTRY, "m-78")),
    ],
    ids=["other-reference", "other-identifier", "other-reference-and-identifier"],
)
def test_deny_of_another_resource_does_not_match(name: Ref) -> None:
    """A deny naming another Observation (by reference or by an identifier this one lacks) leaves
    this one released: its aliases pair its ``Type/id`` with each identifier, so it stays known
    both ways and never becomes an unknown that every deny by reference would match."""
    consent = _consent("permit", name, exception="deny")
    assert _gate(consent, _observation()) is DecisionOutcome.PERMIT


def test_gate_reads_every_identifier_as_an_alias() -> None:
    """``Type/id`` with the first identifier is the reference; with each further one an alias."""
    facts = requested_resource(_observation())
    assert facts.reference == Ref("Observation/o1", FIRST, type="Observation")
    assert facts.aliases == (Ref("Observation/o1", SECOND, type="Observation"),)


def test_resource_without_id_known_by_every_identifier() -> None:
    """Without an id, each identifier names the resource: a deny by the second holds it, a permit
    by the second releases it, a deny by reference matches as unknown (it may be this one)."""
    resource = _observation(with_id=False)
    facts = requested_resource(resource)
    assert facts.reference == Ref(identifier=FIRST, type="Observation")
    assert facts.aliases == (Ref(identifier=SECOND, type="Observation"),)
    deny_second = _consent("permit", _named(identifier=SECOND), exception="deny")
    assert _gate(deny_second, resource) is DecisionOutcome.DENY
    assert _gate(_consent("permit", _named(identifier=SECOND)), resource) is DecisionOutcome.PERMIT
    deny_by_reference = _consent("permit", _named("Observation/o2"), exception="deny")
    assert _gate(deny_by_reference, resource) is DecisionOutcome.DENY
    assert _gate(_consent("permit", _named("Observation/o2")), resource) is (
        DecisionOutcome.NO_CONSENT
    )


def test_unknown_dependents_still_leave_the_resource_unknown() -> None:
    """A reference element naming nobody (display only) leaves the resource without reference and
    aliases: a deny by data reference applies, a permit does not (as before)."""
    resource = _observation(derivedFrom=[{"display": "an earlier session"}])
    facts = requested_resource(resource)
    assert facts.reference is None and facts.aliases == ()
    other = _consent("permit", _named("Observation/o2"), exception="deny")
    assert _gate(other, resource) is DecisionOutcome.DENY
    assert _gate(_consent("permit", _named(identifier=SECOND)), resource) is (
        DecisionOutcome.NO_CONSENT
    )


@pytest.mark.parametrize("meaning", [DataMeaning.RELATED, DataMeaning.DEPENDENTS])
def test_related_and_dependents_match_any_alias(meaning: DataMeaning) -> None:
    """Meanings related and dependents include the resource itself under any of its names."""
    consent = _consent("permit", _named(identifier=SECOND), exception="deny", meaning=meaning)
    assert _gate(consent, _observation()) is DecisionOutcome.DENY


def _engine_request(resource: RequestedResource | None) -> DecisionRequest:
    return DecisionRequest(
        patient=(PATIENT,),
        actors=(RequestActor(EHR),),
        at=NOW,
        purposes=(TREAT,),
        action=Coding(CONSENT_ACTION, "disclose"),
        resource=resource,
    )


def test_general_answer_unchanged() -> None:
    """Without a resource, a deny by identifier is a redact obligation naming that identifier."""
    consent = _consent("permit", _named(identifier=SECOND), exception="deny")
    decision = ConsentEngine([consent]).decide(_engine_request(None))
    assert decision.outcome is DecisionOutcome.PERMIT
    data = [d for o in decision.obligations for d in o.data]
    assert data == [DataRef(meaning=DataMeaning.INSTANCE, reference=_named(identifier=SECOND))]


def test_aliases_named_one_way_each_make_the_resource_known_both_ways() -> None:
    """A reference by ``Type/id`` only and an alias by identifier only: the resource is known
    both ways, so a deny naming another Observation by reference does not match it."""
    resource = RequestedResource(
        type="Observation",
        reference=Ref(reference="Observation/o1"),
        aliases=(Ref(identifier=SECOND),),
    )
    engine = ConsentEngine([_consent("permit", _named("Observation/o2"), exception="deny")])
    assert engine.decide(_engine_request(resource)).outcome is DecisionOutcome.PERMIT
    engine = ConsentEngine([_consent("permit", _named(identifier=SECOND), exception="deny")])
    assert engine.decide(_engine_request(resource)).outcome is DecisionOutcome.DENY


def test_aliases_need_the_reference() -> None:
    """Aliases are further ways of the resource's reference: without one the request is refused."""
    with pytest.raises(InputError) as info:
        _engine_request(RequestedResource(type="Observation", aliases=(Ref(identifier=SECOND),)))
    assert [i.path for i in info.value.issues] == ["resource.aliases"]


# --- the JSON request form ------------------------------------------------------------------------

FORM: dict[str, Any] = {
    "patient": {"reference": "Patient/example-client"},
    "actors": [{"reference": "Organization/ehr"}],
    "purposes": ["TREAT"],
    "action": "disclose",
    "at": "2026-11-21T09:00:00Z",
}


def test_form_loads_aliases() -> None:
    """``resource.aliases`` loads as references, each ``{reference?, identifier?}``."""
    request = load_decision_request(
        {
            **FORM,
            "resource": {
                "type": "Observation",
                "reference": {"reference": "Observation/o1", "identifier": str(FIRST)},
                "aliases": [{"reference": "Observation/o1", "identifier": str(SECOND)}],
            },
        }
    )
    assert request.resource is not None
    assert request.resource.aliases == (Ref("Observation/o1", SECOND),)
    engine = ConsentEngine([_consent("permit", _named(identifier=SECOND), exception="deny")])
    assert engine.decide(request).outcome is DecisionOutcome.DENY


@pytest.mark.parametrize(
    ("aliases", "path"),
    [
        ({"identifier": str(SECOND)}, "resource.aliases"),
        ([{}], "resource.aliases.0"),
        ([{"identifier": "no-bar"}], "resource.aliases.0.identifier"),
        ([{"reference": " ", "identifier": str(SECOND)}], "resource.aliases.0.reference"),
        ([{"reference": "Observation/o1 "}], "resource.aliases.0.reference"),
        ([{"reference": "Observation/o1", "extra": 1}], "resource.aliases.0.extra"),
        ([{"identifier": str(SECOND)}, "Observation/o1"], "resource.aliases.1"),
    ],
    ids=[
        "not-a-list",
        "empty",
        "bad-identifier",
        "blank-reference",
        "spaced-reference",
        "unknown-field",
        "not-an-object",
    ],
)
def test_form_refuses_malformed_aliases(aliases: object, path: str) -> None:
    """A malformed alias is an input error at its field path."""
    resource = {"type": "Observation", "reference": {"reference": "Observation/o1"}}
    with pytest.raises(InputError) as info:
        load_decision_request({**FORM, "resource": {**resource, "aliases": aliases}})
    assert [i.path for i in info.value.issues] == [path]


def test_form_refuses_a_blank_resource_reference() -> None:
    """The resource's own reference is read as strictly as its aliases."""
    resource = {"type": "Observation", "reference": {"reference": "", "identifier": str(FIRST)}}
    with pytest.raises(InputError) as info:
        load_decision_request({**FORM, "resource": resource})
    assert [i.path for i in info.value.issues] == ["resource.reference.reference"]


def test_form_refuses_aliases_without_reference() -> None:
    """Aliases without the resource's ``reference`` are refused at ``resource.aliases``."""
    resource = {"type": "Observation", "aliases": [{"identifier": str(SECOND)}]}
    with pytest.raises(InputError) as info:
        load_decision_request({**FORM, "resource": resource})
    assert [i.path for i in info.value.issues] == ["resource.aliases"]
