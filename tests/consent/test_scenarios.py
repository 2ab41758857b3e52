"""The decision scenario table (tests/consent/scenarios.py) run through the engine."""

from __future__ import annotations

import pytest

from fhir_alliance.consent.decision import ConsentDecision, RedactMode
from fhir_alliance.consent.engine import ConsentEngine
from tests.consent.scenarios import SCENARIOS, Scenario


def summary(decision: ConsentDecision) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
    basis = [f"{b.consent.value}@{b.path}" for b in decision.basis]
    obligations = sorted(
        (
            "redact" if o.mode is RedactMode.MATCHING else "except",
            tuple(sorted(c.code for c in (*o.labels, *o.codes, *o.classes))),
        )
        for o in decision.obligations
    )
    return basis, obligations


def test_at_least_forty_scenarios() -> None:
    """The table keeps at least 40 rows with unique names."""
    names = [s.name for s in SCENARIOS]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario(scenario: Scenario) -> None:
    """Each row's consents and request give the row's outcome, deciding paths and obligations."""
    engine = ConsentEngine(
        scenario.consents, directory=scenario.directory, combining=scenario.combining
    )
    decision = engine.decide(scenario.request)
    traced = engine.decide(scenario.request, trace=True)
    basis, obligations = summary(decision)
    assert decision.outcome is scenario.outcome, traced.explain()
    assert basis == scenario.basis, traced.explain()
    assert obligations == sorted(scenario.obligations), traced.explain()
    # Tracing looks at every consent of the patient (no index): the answer must not change.
    assert (traced.outcome, summary(traced)) == (decision.outcome, (basis, obligations))
    if scenario.note is not None:
        assert any(scenario.note in n for n in traced.notes), traced.notes
        assert any(scenario.note in n for n in decision.notes), decision.notes
