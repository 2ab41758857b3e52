"""Consents the library cannot fully read never permit: generated FHIR Consents (R4 and R5) with an
element or a modifier extension the reader does not know, anywhere, are refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import from_consent, to_consent
from fhir_alliance.model.consent import ConsentRecord
from tests.mapping.consent_strategies import consent_records

#: Elements the reader never reads (they say nothing about what a consent allows).
UNREAD = frozenset({"meta", "text"})
FOREIGN_MODIFIER = [{"url": "https://ehr.example/fhir/except-this-party", "valueBoolean": True}]


def _objects(node: Any, path: str = "Consent") -> list[tuple[str, dict[str, Any]]]:
    """Every JSON object of a resource but those under ``UNREAD``, with its path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            if key not in UNREAD:
                found += _objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects(value, f"{path}[{i}]")
    return found


@settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(record=consent_records(), version=st.sampled_from(["4.0.1", "5.0.0"]))
def test_an_element_or_modifier_the_reader_does_not_know_is_refused_anywhere(
    record: ConsentRecord, version: str
) -> None:
    """An unknown element or a foreign modifier extension in any object of a Consent (a Period, a
    Coding, a Reference, an actor's role…) is a MappingError naming where, never read past: a
    modifier may mean "everyone but", and an element we cannot read may be the period's end."""
    resource = to_consent(record, version=version)
    assert from_consent(copy.deepcopy(resource)) == record
    for index, (path, _) in enumerate(_objects(resource)):
        for key, value in (("unknownElement", "x"), ("modifierExtension", FOREIGN_MODIFIER)):
            mutated = copy.deepcopy(resource)
            target = _objects(mutated)[index][1]
            if key in target:
                continue
            target[key] = copy.deepcopy(value)
            with pytest.raises(MappingError) as error:
                from_consent(mutated)
            assert error.value.element.startswith("Consent"), (path, key)
