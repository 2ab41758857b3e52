"""Scenarios fed as FHIR R4 and R5 Consents (through the mapping) decide as the domain form does."""

from __future__ import annotations

import json

import pytest

from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import R4, R5, from_consent, to_consent
from tests.consent.scenarios import SCENARIOS, Scenario
from tests.consent.test_scenarios import summary

#: Domain-only scenarios: FHIR cannot carry them, and the mapping refuses them (tested below).
NOT_IN_FHIR = {
    "root-provision-period-over": "provision.period",  # the root's time frame is Consent.period
    "untyped-nested-negates-parent": "type",  # FHIR requires a type on nested provisions
}
CASES = [
    pytest.param(s, v, id=f"{s.name}-{'r4' if v == R4 else 'r5'}")
    for s in SCENARIOS
    if s.name not in NOT_IN_FHIR
    for v in (R4, R5)
]


@pytest.mark.parametrize(("scenario", "version"), CASES)
def test_fhir_consents_decide_like_domain(scenario: Scenario, version: str) -> None:
    """Consents written as FHIR JSON and read back give the same outcome, paths and obligations."""
    wire = [json.loads(json.dumps(to_consent(c, version=version))) for c in scenario.consents]
    records = [from_consent(r) for r in wire]
    domain = ConsentEngine(
        scenario.consents, directory=scenario.directory, combining=scenario.combining
    ).decide(scenario.request)
    fhir = ConsentEngine(
        records, directory=scenario.directory, combining=scenario.combining
    ).decide(scenario.request)
    assert fhir.outcome is domain.outcome is scenario.outcome
    assert summary(fhir) == summary(domain)


@pytest.mark.parametrize("name", sorted(NOT_IN_FHIR))
def test_domain_only_scenarios_are_refused_by_the_mapping(name: str) -> None:
    """The scenarios left out above are exactly those the FHIR mapping cannot write."""
    scenario = next(s for s in SCENARIOS if s.name == name)
    with pytest.raises(MappingError) as info:
        for record in scenario.consents:
            to_consent(record, version=R4)
    assert info.value.element.endswith(NOT_IN_FHIR[name])
