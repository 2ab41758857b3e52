"""Review (consent engine, deny by default): corners the invariants of
``test_review_invariants.py`` found, each as the smallest example."""

from __future__ import annotations

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import CombiningRule
from fhir_alliance.model.common import Ref
from tests.consent.builders import (
    actor,
    consent,
    label,
    loinc,
    prov,
    request,
    resource,
)

EHR = Ref(reference="Organization/ehr")


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
