"""Review (consent engine, deny by default): corners the invariants of
``test_review_invariants.py`` found, each as the smallest example."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import CombiningRule
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.consent.request_form import load_decision_request
from fhir_alliance.errors import InputError, MappingError
from fhir_alliance.mapping.consent import R4, from_consent, to_consent
from fhir_alliance.model.common import Coding, Ref
from fhir_alliance.model.consent import ConsentStatus, StatusChange
from fhir_alliance.terminology import V3_PARTICIPATION_TYPE
from tests.consent.builders import (
    IRCP,
    actor,
    consent,
    label,
    loinc,
    period,
    prov,
    request,
    resource,
    t,
)

EHR = Ref(reference="Organization/ehr")
AUTHOR = Coding(V3_PARTICIPATION_TYPE, "AUT")


def test_most_recent_wins_ties_in_a_general_answer_deny_first() -> None:
    """Two consents of the same date: one permits R-labelled content, the other denies the EHR
    everything but one code. For an R-labelled resource the tie goes to the deny (deny before
    permit); the general answer picked the permit by its lower identifier and released R content."""
    by_label = consent("a-label-r", "permit", date="2025-01-06", labels=[label("R")])
    all_but_code = consent(
        "b-deny-but-code",
        "deny",
        prov("permit", codes=[loinc("89204-2")]),
        date="2025-01-06",
        actors=[actor(EHR)],
    )
    engine = ConsentEngine([by_label, all_but_code], combining=CombiningRule.MOST_RECENT_WINS)
    labelled = engine.decide(request(EHR, res=resource(labels=("R",))))
    assert labelled.outcome is DecisionOutcome.DENY
    general = engine.decide(request(EHR))
    if general.outcome is DecisionOutcome.PERMIT:
        # Whatever it releases must pass the other consent's redact-all-except too.
        kept = [
            {c.code for c in (*o.labels, *o.codes)}
            for o in general.obligations
            if o.mode.value == "redact-all-except"
        ]
        assert any(keep == {"89204-2"} for keep in kept), general.explain()


#: Permit, except data dated before 2025 (the sharing example's exception).
NOT_BEFORE_2025 = consent("c1", "permit", prov("deny", data_period=period(end="2025-01-01")))


def _gate(observation: dict[str, object]) -> DecisionOutcome:
    request = disclosure_request(
        observation,
        patient="Patient/p1",
        recipient="Organization/ehr",
        purposes=["TREAT"],
        at=datetime(2025, 6, 1, tzinfo=UTC),
    )
    return ConsentEngine([NOT_BEFORE_2025]).decide(request).outcome


@pytest.mark.parametrize(
    "effective",
    [
        {"effectiveDateTime": "2024-06-15"},  # a date without a time
        {"effectiveDateTime": "2024-06"},
        {"effectiveDateTime": "2024-06-15T10:00:00"},  # a time without an offset
        {"effectivePeriod": {"start": "2024-06-15"}},
        {"effectivePeriod": {"end": "2024-06-15T10:00:00Z"}},  # no start
        {"effectiveTiming": {"event": ["2024-06-15T10:00:00Z"]}},
    ],
)
def test_an_imprecise_clinical_date_is_unknown_not_replaced_by_a_later_one(
    effective: dict[str, object],
) -> None:
    """The gate took the first date it could read precisely: an Observation of June 2024 whose
    effective date has no time (or no offset) was dated by its ``issued`` instant of 2025, and
    the deny on data before 2025 let it go. The clinically relevant date is then unknown, which
    meets the deny (as a resource without any date does)."""
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "issued": "2025-02-01T10:00:00Z",
        **effective,
    }
    assert _gate(observation) is DecisionOutcome.DENY


def test_a_precise_clinical_date_still_decides() -> None:
    """The same Observation with a precise effective instant in 2025 goes; in 2024 it does not."""
    base = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "issued": "2025-02-01T10:00:00Z",
    }
    assert (
        _gate({**base, "effectiveDateTime": "2025-01-15T10:00:00+01:00"}) is DecisionOutcome.PERMIT
    )
    assert (
        _gate({**base, "effectiveDateTime": "2024-12-31T23:30:00-05:00"}) is DecisionOutcome.PERMIT
    )
    assert _gate({**base, "effectiveDateTime": "2024-12-31T23:30:00+00:00"}) is DecisionOutcome.DENY
    assert _gate(base) is DecisionOutcome.PERMIT  # no effective date: issued is the date


DR_X = Ref(reference="Practitioner/x")
#: Permit, except to Practitioner/x as information recipient.
NOT_TO_X = consent("c-not-x", "permit", prov("deny", actors=[actor(DR_X)]))


def _ask_as(role: dict[str, str] | None) -> dict[str, object]:
    who: dict[str, object] = {"reference": "Practitioner/x"}
    if role is not None:
        who["role"] = role
    return {
        "patient": {"reference": "Patient/p1"},
        "actors": [who],
        "purposes": ["TREAT"],
        "action": "disclose",
        "at": "2025-06-01T00:00:00Z",
    }


@pytest.mark.parametrize(
    "system", ["urn:oid:2.16.840.1.113883.5.90", "http://hl7.org/fhir/v3/ParticipationType"]
)
def test_a_request_role_by_oid_is_the_canonical_role(system: str) -> None:
    """The consent reader reads v3-ParticipationType by its OID or STU3 URL as the canonical
    system; the request form kept it as given, so IRCP by OID escaped the deny naming x as IRCP."""
    request = load_decision_request(_ask_as({"system": system, "code": "IRCP"}))
    assert request.actors[0].role == IRCP
    assert ConsentEngine([NOT_TO_X]).decide(request).outcome is DecisionOutcome.DENY


@pytest.mark.parametrize("code", ["ircp", "IRCP ", " IRCP", "Ircp", ""])
def test_a_misspelt_request_role_is_refused(code: str) -> None:
    """A v3-ParticipationType role that is no code of it (wrong case, spaces) matched no
    provision actor, so it escaped the deny naming x: refused at its path, as a misspelt
    action or purpose is."""
    with pytest.raises(InputError) as caught:
        load_decision_request(_ask_as({"system": V3_PARTICIPATION_TYPE, "code": code}))
    assert [i.path for i in caught.value.issues] == ["actors.0.role.code"]


def test_a_foreign_history_out_of_time_order_is_refused() -> None:
    """Permit, active from 1 January, back to draft on 1 February, revoked on 1 June: active in
    January only. Written with the draft change first among the extensions, the reader took it
    and the engine read the consent as active from January to June: a disclosure in May was
    permitted. Our JSON form refuses a history out of time order; so does the FHIR reader now,
    at the change out of order."""
    ordered = dataclasses.replace(
        consent("c-hist", "permit", status="revoked"),
        history=(
            StatusChange(ConsentStatus.ACTIVE, t("2025-01-01")),
            StatusChange(ConsentStatus.DRAFT, t("2025-02-01")),
            StatusChange(ConsentStatus.REVOKED, t("2025-06-01")),
        ),
    )
    assert ConsentEngine([ordered]).decide(request(EHR, at="2025-05-01")).outcome is (
        DecisionOutcome.NO_CONSENT
    )
    wire = to_consent(ordered, version=R4)
    changes = [n for n, e in enumerate(wire["extension"]) if e["url"].endswith("status-change")]
    first, second = changes[0], changes[1]
    ext = wire["extension"]
    ext[first], ext[second] = ext[second], ext[first]
    with pytest.raises(MappingError) as caught:
        from_consent(wire)
    assert caught.value.element == f"Consent.extension[{second}]"
    assert from_consent(to_consent(ordered, version=R4)) == ordered


#: An actor role coded in a system the request's actors are not coded in (an EHR's own roles).
LOCAL_ROLE = Coding("https://ehr.example/fhir/CodeSystem/roles", "recipient")


def test_a_deny_naming_the_recipient_in_a_role_system_the_request_does_not_use_denies() -> None:
    """A nested deny names the EHR with a role coded in the EHR's own system, which the engine
    cannot compare with the request's IRCP: a missing fact, so the deny matches (the EHR is
    named), and the permit around it no longer releases everything to the EHR."""
    shared = consent("share", "permit", prov("deny", actors=[actor(EHR, LOCAL_ROLE)]))
    engine = ConsentEngine([shared])
    assert engine.decide(request(EHR)).outcome is DecisionOutcome.DENY
    # Another actor, and the same role system as the request, are compared as before.
    other = Ref(reference="Organization/other")
    assert engine.decide(request(other)).outcome is DecisionOutcome.PERMIT
    author = consent("share", "permit", prov("deny", actors=[actor(EHR, AUTHOR)]))
    assert ConsentEngine([author]).decide(request(EHR)).outcome is DecisionOutcome.PERMIT


def test_an_opt_out_naming_the_recipient_in_another_role_system_denies() -> None:
    """The same at the root: a deny consent naming the EHR in a role of another system is found
    for a request of that EHR (the engine's index of root actors included)."""
    opt_out = consent("opt-out", "deny", actors=[actor(EHR, LOCAL_ROLE)], date="2025-02-01")
    shared = consent("share", "permit", date="2025-01-01")
    engine = ConsentEngine([shared, opt_out])
    assert engine.decide(request(EHR)).outcome is DecisionOutcome.DENY
    assert engine.decide(request(Ref(reference="Organization/other"))).outcome is (
        DecisionOutcome.PERMIT
    )


def test_a_permit_naming_the_recipient_in_another_role_system_permits_nothing() -> None:
    """A permit is never stretched over a role it cannot compare: deny by default."""
    shared = consent("share", "permit", actors=[actor(EHR, LOCAL_ROLE)])
    assert ConsentEngine([shared]).decide(request(EHR)).outcome is not DecisionOutcome.PERMIT
