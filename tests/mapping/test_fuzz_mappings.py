"""Every mapper (Observation, Consent, session note), R4 and R5: a valid resource with any one element
replaced by hostile JSON, or left out, maps or raises ``MappingError`` naming the element; nothing
else escapes (no ``KeyError``, ``TypeError``, ``ValueError``…)."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.mapping.note import MAPPER as NOTE_MAPPER
from fhir_alliance.mapping.note import to_fhir as note_to_fhir
from fhir_alliance.mapping.observation import MAPPER as OBSERVATION_MAPPER
from fhir_alliance.mapping.registry import RecordMapper
from fhir_alliance.schemas.notes import load_note
from tests.mapping.consent_strategies import consent_records
from tests.mapping.observation_strategies import records as observation_records
from tests.notes.note_strategies import notes

ROOT = Path(__file__).resolve().parents[2]

#: Values that broke readers somewhere (wrong type, empty, huge, not ASCII, a lone surrogate,
#: dates FHIR refuses or that overflow, nested junk).
JUNK: list[Any] = [
    None, [], {}, [{}], [None], [[]], "", " ", "x", "é", "\ud800", 0, -1, 10**400, 1.5, 1e308,
    True, {"a": []}, ["x"], "2025-13-45", "2025-01-01T10:00:00", "9999-12-31T23:59:59+14:00",
    "0001-01-01T00:00:00-14:00", {"reference": []}, {"coding": "x"}, {"coding": [[]]},
    {"system": [], "code": {}},
]  # fmt: skip
LEAVE_OUT = object()

MAPPERS: dict[str, tuple[RecordMapper, st.SearchStrategy[Any]]] = {
    "observation": (OBSERVATION_MAPPER, observation_records),
    "consent": (CONSENT_MAPPER, consent_records()),
    "note": (NOTE_MAPPER, notes()),
}


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON value, depth first."""
    found: list[tuple[Any, Any]] = []

    def walk(value: Any) -> None:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in list(items):
            found.append((value, key))
            if isinstance(child, dict | list):
                walk(child)

    walk(node)
    return found


#: Examples per mapper (consent records cost most to draw); each element of each is mutated.
EXAMPLES = {"observation": 15, "consent": 12, "note": 25}


@pytest.mark.parametrize("kind", MAPPERS)
def test_one_element_replaced_maps_or_names_the_element(kind: str) -> None:
    """Replacing (or leaving out) each element in turn, by junk drawn for it: a record, or a
    MappingError with an element."""
    mapper, strategy = MAPPERS[kind]

    @settings(
        max_examples=EXAMPLES[kind],
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(record=strategy, version=st.sampled_from(["4.0.1", "5.0.0"]), seed=st.integers(0, 2**32))
    def check(record: Any, version: str, seed: int) -> None:
        original = mapper.to_fhir(record, version=version)
        choose = random.Random(seed).choice  # one draw per element would overrun hypothesis
        for index in range(len(_slots(original))):
            resources = copy.deepcopy(original)
            container, key = _slots(resources)[index]
            junk = choose([*JUNK, LEAVE_OUT])
            if junk is LEAVE_OUT:
                del container[key]
            else:
                container[key] = copy.deepcopy(junk)
            try:
                mapper.from_fhir(resources)
            except MappingError as error:
                assert error.element or error.issues, error

    check()


@pytest.mark.parametrize("data", ["é", "aGk=é", "\ud800", "\uff21\uff21\uff21\uff21"])
def test_note_text_that_is_not_ascii_base64_is_a_mapping_error(data: str) -> None:
    """A note's ``data`` with a character outside ASCII is refused at ``data`` (it was a
    ``ValueError`` from ``base64``)."""
    note = load_note(
        json.loads((ROOT / "examples" / "notes" / "psychotherapy-note.json").read_text())
    )
    resources = note_to_fhir(note, version="4.0.1")
    resources[0]["content"][0]["attachment"]["data"] = data
    with pytest.raises(MappingError) as error:
        NOTE_MAPPER.from_fhir(resources)
    assert error.value.element.endswith("attachment.data")
