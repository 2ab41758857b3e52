"""profiles.bindings / required_bindings read a profile's snapshot; value_set_codes expands our
ValueSets offline, so required bindings can be checked without a terminology server."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_alliance import profiles
from fhir_alliance.errors import ArtefactNotFoundError, ProfilesPackageError
from fhir_alliance.terminology import CANONICAL_BASE, canonical
from tests.profiles.conftest import WriteResource

OURS = "https://fhir-alliance.org/fhir/CodeSystem/"


def _cs(id_: str, codes: list[Any]) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": id_,
        "url": canonical("CodeSystem", id_),
        "content": "complete",
        "concept": codes,
    }


def _vs(id_: str, **compose: Any) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "id": id_,
        "url": canonical("ValueSet", id_),
        "compose": compose,
    }


def test_bindings_of_a_profile(crafted_package: WriteResource) -> None:
    """Bindings come from the snapshot with element id, path and strength; required ones filtered."""
    crafted_package(
        {
            "resourceType": "StructureDefinition",
            "id": "p",
            "url": canonical("StructureDefinition", "p"),
            "snapshot": {
                "element": [
                    {"id": "Observation", "path": "Observation"},
                    {
                        "id": "Observation.status",
                        "path": "Observation.status",
                        "binding": {"strength": "required", "valueSet": "http://x/vs|1"},
                    },
                    {
                        "id": "Observation.component:t.code",
                        "path": "Observation.component.code",
                        "binding": {"strength": "extensible", "valueSet": "http://x/other"},
                    },
                    {"id": "Observation.code", "path": "Observation.code", "binding": {}},
                ]
            },
        }
    )
    all_bindings = profiles.bindings("p")
    assert [(b.element, b.path, b.strength) for b in all_bindings] == [
        ("Observation.status", "Observation.status", "required"),
        ("Observation.component:t.code", "Observation.component.code", "extensible"),
    ]
    assert [b.value_set for b in profiles.required_bindings("p")] == ["http://x/vs|1"]


def test_bindings_need_a_snapshot(crafted_package: WriteResource) -> None:
    """A profile without snapshot is a package error, not an empty answer."""
    crafted_package({"resourceType": "StructureDefinition", "id": "p"})
    with pytest.raises(ProfilesPackageError, match="no snapshot"):
        profiles.bindings("p")


def test_expand_enumerations_whole_systems_imports_and_excludes(
    crafted_package: WriteResource,
) -> None:
    """Enumerated concepts, a whole CodeSystem of ours (nested codes too), imported ValueSets and
    excludes combine as FHIR defines."""
    crafted_package(_cs("roles", [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b"}]))
    crafted_package(_vs("base", include=[{"system": "http://ext/cs", "concept": [{"code": "x"}]}]))
    crafted_package(
        _vs(
            "combined",
            include=[
                {"system": f"{OURS}roles"},
                {"valueSet": [canonical("ValueSet", "base")]},
            ],
            exclude=[{"system": f"{OURS}roles", "concept": [{"code": "b"}]}],
        )
    )
    assert profiles.value_set_codes("combined") == {
        (f"{OURS}roles", "a"),
        (f"{OURS}roles", "a1"),
        ("http://ext/cs", "x"),
    }


def test_expand_refuses_what_needs_a_terminology_server(crafted_package: WriteResource) -> None:
    """Filters and whole foreign systems cannot be expanded offline: a clear package error."""
    crafted_package(_vs("filtered", include=[{"system": "http://loinc.org", "filter": [{}]}]))
    crafted_package(_vs("foreign", include=[{"system": "http://loinc.org"}]))
    with pytest.raises(ProfilesPackageError, match="filter"):
        profiles.value_set_codes("filtered")
    with pytest.raises(ProfilesPackageError, match="not in this package"):
        profiles.value_set_codes("foreign")
    with pytest.raises(ArtefactNotFoundError):
        profiles.value_set_codes("absent")


def test_expand_refuses_cycles(crafted_package: WriteResource) -> None:
    """A ValueSet that includes itself (directly or not) is refused instead of recursing."""
    crafted_package(_vs("one", include=[{"valueSet": [canonical("ValueSet", "two")]}]))
    crafted_package(_vs("two", include=[{"valueSet": [canonical("ValueSet", "one")]}]))
    with pytest.raises(ProfilesPackageError, match="includes itself"):
        profiles.value_set_codes("one")


def _our_required_bindings() -> list[tuple[str, profiles.Binding]]:
    return [
        (sd["id"], binding)
        for sd in profiles.structure_definitions()
        for binding in profiles.required_bindings(sd["id"])
        if binding.value_set.startswith(CANONICAL_BASE)
    ]


def test_required_bindings_to_our_value_sets_resolve_and_expand() -> None:
    """Every required binding of our profiles to one of our ValueSets names a ValueSet in the
    package that expands offline to at least one code (catches a mistyped or empty ValueSet)."""
    for profile, binding in _our_required_bindings():
        codes = profiles.value_set_codes(binding.value_set)
        assert codes, f"{profile} {binding.element}: {binding.value_set} is empty"
