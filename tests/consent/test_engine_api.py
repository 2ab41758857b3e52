"""Engine construction and options: bad consent times, explicit labels, the one-off ``decide``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from fhir_alliance.consent.decision import DecisionOutcome
from fhir_alliance.consent.engine import ConsentEngine, decide
from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.model.consent import Period
from tests.consent.builders import (
    MRN,
    V3_ACT_CODE,
    actor,
    consent,
    label,
    pou,
    prov,
    request,
    resource,
)
from tests.consent.scenarios import DIRECTORY, DR_A, DR_B, share_with


def test_naive_consent_time_is_an_input_error() -> None:
    """A consent period without UTC offset is refused with its path, not compared wrongly."""
    record = consent("c1", "permit", **share_with(DR_A))
    naive = replace(record, period=Period(start=datetime(2025, 1, 1)))
    with pytest.raises(InputError) as info:
        ConsentEngine([record, naive])
    assert [i.path for i in info.value.issues] == ["consents.1.period.start"]


def test_naive_nested_time_names_the_provision() -> None:
    """A naive dataPeriod deep in the tree is refused at its provision path."""
    record = consent(
        "c1",
        "permit",
        prov("deny", prov("deny", data_period=Period(end=datetime(2024, 1, 1)))),
        **share_with(DR_A),
    )
    with pytest.raises(InputError) as info:
        ConsentEngine([record])
    assert (
        info.value.issues[0].path == "consents.0.provision.provisions.0.provisions.0.dataPeriod.end"
    )


def test_explicit_labels_are_configurable() -> None:
    """With SUD as an explicit label, a general permit no longer releases SUD content."""
    records = [consent("c1", "permit", **share_with(DR_A))]
    sud = request(DR_A, res=resource(labels=("SUD",)))
    assert ConsentEngine(records, directory=DIRECTORY).decide(sud).outcome is DecisionOutcome.PERMIT
    strict = ConsentEngine(
        records, directory=DIRECTORY, explicit_labels=frozenset({(V3_ACT_CODE, "SUD")})
    )
    assert strict.decide(sud).outcome is DecisionOutcome.DENY


def test_one_off_decide_matches_engine() -> None:
    """``decide()`` gives what a compiled engine gives."""
    records = [consent("c1", "permit", prov("deny", labels=[label("PSY")]), **share_with(DR_A))]
    req = request(DR_A, res=resource(labels=("PSY",)))
    assert decide(records, req, directory=DIRECTORY) == ConsentEngine(
        records, directory=DIRECTORY
    ).decide(req)


def test_engine_exposes_its_consents() -> None:
    """The engine keeps the records it compiled, in order."""
    records = [consent("c2", "deny", **share_with(DR_A)), consent("c1", "permit")]
    assert ConsentEngine(records).consents == tuple(records)


def test_absurd_nesting_is_an_input_error() -> None:
    """Provisions nested 40 deep are refused by path instead of exhausting the stack."""
    provision = prov("deny")
    for _ in range(40):
        provision = prov("deny", provision)
    record = consent("c1", "permit", provision, **share_with(DR_A))
    with pytest.raises(InputError) as info:
        ConsentEngine([record])
    assert [i.path for i in info.value.issues] == ["consents.0.provision"]
    assert "32 levels" in info.value.issues[0].message
    assert len(str(info.value)) < 120, "the error stays short, not a path per level"


def test_nesting_at_the_limit_is_compiled() -> None:
    """Provisions exactly 32 levels below the root compile and decide (the deepest denies)."""
    provision = prov("deny")
    for _ in range(31):
        provision = prov("permit", provision)
    record = consent("c1", "permit", provision, **share_with(DR_A))
    decision = ConsentEngine([record], directory=DIRECTORY).decide(request(DR_A, res=resource()))
    assert decision.outcome is DecisionOutcome.DENY
    assert decision.basis[0].path.count(".") == 31


def test_two_permitted_periods_never_widen_to_their_hull() -> None:
    """Permits for 2020 and 2024 data keep 2020 content only, never 2020-2024 as one period."""
    from tests.consent.scenarios import SCENARIOS

    row = next(s for s in SCENARIOS if s.name == "general-two-permitted-periods-keep-one")
    decision = ConsentEngine(row.consents, directory=DIRECTORY).decide(row.request)
    kept = decision.obligations[0]
    assert kept.data_period == Period(
        start=datetime(2020, 1, 1, tzinfo=UTC), end=datetime(2021, 1, 1, tzinfo=UTC)
    )
    assert [b.path for b in kept.basis] == ["0"]


def test_absolute_deny_matches_relative_request_on_the_known_base() -> None:
    """A deny naming https://ehr/fhir/Practitioner/dr-b applies to a request by Practitioner/dr-b."""
    base = "https://ehr.example/fhir"
    record = consent(
        "c1",
        "permit",
        prov("deny", actors=[actor(Ref(reference=f"{base}/Practitioner/dr-b"))]),
        **share_with(DR_A, DR_B),
    )
    asked = request(DR_B, res=resource())
    assert ConsentEngine([record]).decide(asked).outcome is DecisionOutcome.PERMIT
    assert ConsentEngine([record], base=base).decide(asked).outcome is DecisionOutcome.DENY
    rebased = ConsentEngine([record], directory=DIRECTORY.with_base(base))
    assert rebased.decide(asked).outcome is DecisionOutcome.DENY


def test_explain_says_why_no_consent_without_trace() -> None:
    """A no-consent answer explains itself: the revoked consent and when it was revoked."""
    from tests.consent.scenarios import _revoked

    records = [
        consent("c1", "permit", history=_revoked("2025-05-01"), **share_with(DR_A)),
        consent("c2", "permit", **share_with(DR_A, purposes=[pou("HPAYMT")])),
    ]
    decision = ConsentEngine(records, directory=DIRECTORY).decide(request(DR_A, res=resource()))
    assert decision.outcome is DecisionOutcome.NO_CONSENT
    reasons = decision.no_consent_reasons()
    assert reasons[0].startswith(
        "consent https://clinic.example/consent-ids|c1: revoked on 2025-05-01"
    )
    assert "purpose" in reasons[1]
    text = decision.explain()
    assert all(f"reason: {r}" in text for r in reasons)


def test_no_consent_for_an_unknown_patient_says_so() -> None:
    """With no consent of the patient at all, the reason says that, naming no one."""
    decision = ConsentEngine([]).decide(request(DR_A, res=resource()))
    assert decision.no_consent_reasons() == ("no consent of this patient was given to the engine",)


def test_a_decided_answer_has_no_no_consent_reasons() -> None:
    """Permit and deny answers carry no no-consent reasons."""
    records = [consent("c1", "permit", **share_with(DR_A))]
    decision = ConsentEngine(records, directory=DIRECTORY).decide(request(DR_A, res=resource()))
    assert decision.outcome is DecisionOutcome.PERMIT
    assert decision.no_consent_reasons() == ()


@pytest.mark.parametrize("outcome", list(DecisionOutcome))
def test_one_spelling_per_outcome(outcome: DecisionOutcome) -> None:
    """Text and JSON spell an outcome the same way: its value (permit, deny, no-consent)."""
    from fhir_alliance.consent.decision import CombiningRule, ConsentDecision
    from fhir_alliance.consent.request_form import decision_to_json

    decision = ConsentDecision(outcome, CombiningRule.DENY_OVERRIDES)
    assert decision.explain().splitlines()[0] == f"decision: {outcome.value} (deny-overrides)"
    assert decision_to_json(decision)["decision"] == outcome.value


def test_unresolvable_actor_note_needs_a_party_of_its_type() -> None:
    """An unresolvable Organization is named (and denies) for a request actor of unknown type,
    never for one known to be a Practitioner."""
    elsewhere = Ref(reference="Organization/elsewhere")
    engine = ConsentEngine(
        [consent("c1", "permit", prov("deny", actors=[actor(elsewhere)]), purposes=[pou("TREAT")])]
    )
    npi = Identifier("http://hl7.org/fhir/sid/us-npi", "2222222222")
    untyped = engine.decide(request(Ref(identifier=npi), res=resource()))
    practitioner = engine.decide(request(Ref(identifier=npi, type="Practitioner"), res=resource()))
    assert untyped.outcome is DecisionOutcome.DENY
    assert [n for n in untyped.notes if "Organization/elsewhere could not be resolved" in n]
    assert practitioner.outcome is DecisionOutcome.PERMIT
    assert not [n for n in practitioner.notes if "could not be resolved" in n]


def test_unresolvable_actor_note_names_only_the_request_patients_consents() -> None:
    """A consent linked to the patient only through another consent's identifier is not named."""
    by_reference = Ref(reference="Patient/p1", identifier=Identifier(MRN, "p-001"))
    by_identifier = Ref(identifier=Identifier(MRN, "p-001"))
    engine = ConsentEngine(
        [
            consent(
                value,
                "permit",
                prov("deny", actors=[actor(DR_B)]),
                patient=patient,
                purposes=[pou("TREAT")],
            )
            for value, patient in (("c1", by_reference), ("c2", by_identifier))
        ]
    )
    npi = Ref(identifier=Identifier("http://hl7.org/fhir/sid/us-npi", "2222222222"))
    decision = engine.decide(request(npi, patient=(Ref(reference="Patient/p1"),), res=resource()))
    named = [n for n in decision.notes if "could not be resolved" in n]
    assert [b.consent.value for b in decision.basis] == ["c1"]
    assert len(named) == 1
    assert named[0].startswith("consent https://clinic.example/consent-ids|c1,")
