"""The service's rules for business identifiers, patients and literal references."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from fhir_alliance_service.usecases.references import (
    REFERENCE_MESSAGE,
    identifier_issues,
    patient_issues,
    reference_issues,
    valid_literal_reference,
)
from hypothesis import given
from hypothesis import strategies as st

from fhir_alliance.errors import Issue
from fhir_alliance.model.common import Identifier, Ref


@pytest.mark.parametrize(
    "text",
    [
        "Patient/p1",
        "Practitioner/dr-a.1",
        "Observation/o1/_history/3",
        "https://ehr.example.org/fhir/Organization/7",
        "urn:uuid:0f3b7143-718c-c21a-a923-8b93924d877e",
        "urn:oid:1.2.840.10008",
        "#contained-1",
    ],
)
def test_literal_references_fhir_allows_are_accepted(text: str) -> None:
    """Relative, absolute, versioned, urn and contained references pass."""
    assert valid_literal_reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "../../etc/passwd",
        "<script>x</script>",
        "patient/p1",
        "Patient/",
        "Patient/a b",
        "x' OR 1=1",
    ],
)
def test_anything_else_is_no_reference(text: str) -> None:
    """Traversal, markup, lower-case types, empty or spaced ids are refused."""
    assert not valid_literal_reference(text)


def test_identifiers_need_an_absolute_system_and_a_plain_value() -> None:
    """A relative system, or a value with spaces, quotes, '|' or ',' is refused at the given path."""
    assert identifier_issues(Identifier("https://c.example/ids", "a-1#x"), "id") == []
    for bad in (Identifier("ids", "a1"), Identifier("urn:x", "a b"), Identifier("urn:x", "a,b")):
        assert [i.path for i in identifier_issues(bad, "id")] == ["id"]


def test_the_patient_is_a_patient_reference_or_an_identifier() -> None:
    """``Patient/<id>`` passes; another resource type or a bad identifier names its sub-path."""
    assert patient_issues(Ref(reference="Patient/p1"), "patient") == []
    assert [i.path for i in patient_issues(Ref(reference="Group/g1"), "patient")] == [
        "patient.reference"
    ]
    bad_identifier = Ref(identifier=Identifier("urn:x", "a'b"))
    assert [i.path for i in patient_issues(bad_identifier, "3.patient")] == ["3.patient.identifier"]


def test_every_reference_in_a_payload_is_checked_with_its_path() -> None:
    """Nested references (actors inside provisions, lists) are found and reported by path."""
    payload = {
        "patient": {"reference": "Patient/p1"},
        "provision": {"actors": [{"reference": {"reference": "../x"}}]},
    }
    assert [i.path for i in reference_issues(payload, "2")] == [
        "2.provision.actors.0.reference.reference"
    ]


def _references_as_first_written(value: Any, path: str) -> list[tuple[str, str]]:
    """Every ``reference`` string's path and text, the generator walk first written (document
    order, depth first)."""
    found: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "reference" and isinstance(item, str):
                found.append((where, item))
            else:
                found += _references_as_first_written(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _references_as_first_written(item, f"{path}.{index}" if path else str(index))
    return found


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["Patient/1", "x y", "", "a|b"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["reference", "patient", "a", "b"]), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["reference", "patient", "rater", "x"]), _JSON), st.text())
def test_reference_issues_name_what_the_first_walk_found(
    payload: dict[str, Any], label: str
) -> None:
    """The walk that only descends into objects and arrays reports exactly the bad references,
    paths and order of the walk first written."""
    expected = [
        Issue(path=path, message=REFERENCE_MESSAGE)
        for path, text in _references_as_first_written(payload, label)
        if not valid_literal_reference(text)
    ]
    assert reference_issues(payload, label) == expected
