"""The actor directory links references and identifiers, and never guesses."""

from __future__ import annotations

import pytest

from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.errors import MappingError
from fhir_alliance.model.common import Identifier, Ref

NPI = "http://hl7.org/fhir/sid/us-npi"


def bundle(*entries: tuple[str | None, dict]) -> dict:  # type: ignore[type-arg]
    return {
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": url, "resource": res} if url else {"resource": res} for url, res in entries
        ],
    }


def practitioner(rid: str, *values: str) -> dict:  # type: ignore[type-arg]
    return {
        "resourceType": "Practitioner",
        "id": rid,
        "identifier": [{"system": NPI, "value": v} for v in values],
    }


def test_bundle_entries_known_by_type_id_and_full_url() -> None:
    """A Bundle entry resolves by Type/id and by its fullUrl to its identifiers."""
    directory = ActorDirectory.from_resources(
        [bundle(("https://ehr.example/fhir/Practitioner/a", practitioner("a", "111")))]
    )
    expected = frozenset({Identifier(NPI, "111")})
    assert directory.identifiers_of("Practitioner/a") == expected
    assert directory.identifiers_of("https://ehr.example/fhir/Practitioner/a") == expected
    assert directory.identifiers_of("Practitioner/a/_history/3") == expected


def test_unknown_reference_resolves_to_nothing() -> None:
    """A reference the directory was not given has no identifiers and is not resolvable."""
    directory = ActorDirectory.from_resources([practitioner("a", "111")])
    assert directory.identifiers_of("Practitioner/b") == frozenset()
    assert not directory.resolvable(Ref(reference="Practitioner/b"))
    assert directory.resolvable(Ref(reference="Practitioner/a"))


def test_shared_identifier_resolves_to_neither() -> None:
    """One identifier on two different resources is ambiguous and links neither."""
    directory = ActorDirectory.from_resources(
        [practitioner("a", "111", "999"), practitioner("b", "222", "999")]
    )
    assert directory.is_ambiguous(Identifier(NPI, "999"))
    assert directory.identifiers_of("Practitioner/a") == frozenset({Identifier(NPI, "111")})
    keys_a = directory.keys(Ref(reference="Practitioner/a"))
    assert ("id", NPI, "999") not in keys_a


def test_keys_cover_both_forms() -> None:
    """A reference's keys hold its literal and its identifiers; an identifier's only itself."""
    directory = ActorDirectory.from_resources([practitioner("a", "111")])
    assert directory.keys(Ref(reference="Practitioner/a")) == {
        ("ref", "Practitioner/a"),
        ("id", NPI, "111"),
    }
    assert directory.keys(Ref(identifier=Identifier(NPI, "111"))) == {("id", NPI, "111")}


def test_non_actor_resources_ignored() -> None:
    """Consents and Observations in the input do not enter the directory."""
    directory = ActorDirectory.from_resources(
        [{"resourceType": "Observation", "id": "o", "identifier": [{"system": "s", "value": "v"}]}]
    )
    assert len(directory) == 0


def test_malformed_identifier_names_element() -> None:
    """An identifier that is not an object raises MappingError naming where."""
    with pytest.raises(MappingError) as info:
        ActorDirectory.from_resources(
            [bundle((None, {"resourceType": "Device", "id": "d", "identifier": ["x"]}))]
        )
    assert info.value.element == "[0].entry[0].resource.identifier[0]"


BASE = "https://ehr.example/fhir"


def test_configured_base_equates_absolute_and_relative() -> None:
    """With a configured base, an absolute reference on it and the relative one are one party."""
    directory = ActorDirectory(base=f"{BASE}/")
    absolute = directory.keys(Ref(reference=f"{BASE}/Practitioner/x"))
    assert absolute == directory.keys(Ref(reference="Practitioner/x"))
    other_server = directory.keys(Ref(reference="https://other.example/fhir/Practitioner/x"))
    assert other_server.isdisjoint(directory.keys(Ref(reference="Practitioner/x")))


def test_bundle_full_url_teaches_the_base() -> None:
    """A Bundle entry's fullUrl gives the base: unknown parties on it equal their relative form."""
    directory = ActorDirectory.from_resources(
        [bundle((f"{BASE}/Practitioner/a", practitioner("a", "111")))]
    )
    assert directory.base == BASE
    assert directory.keys(Ref(reference=f"{BASE}/Organization/o")) == directory.keys(
        Ref(reference="Organization/o")
    )


def test_two_bases_equate_nothing() -> None:
    """Bundles from two servers leave the base unknown: relative references are not guessed."""
    directory = ActorDirectory.from_resources(
        [
            bundle((f"{BASE}/Practitioner/a", practitioner("a", "111"))),
            bundle(("https://other.example/r4/Practitioner/b", practitioner("b", "222"))),
        ]
    )
    assert directory.base is None
    assert directory.keys(Ref(reference=f"{BASE}/Organization/o")).isdisjoint(
        directory.keys(Ref(reference="Organization/o"))
    )


def test_rebased_directory_keeps_its_parties() -> None:
    """``with_base`` sets the base and keeps every party and identifier."""
    directory = ActorDirectory.from_resources([practitioner("a", "111")]).with_base(BASE)
    assert directory.identifiers_of(f"{BASE}/Practitioner/a") == frozenset({Identifier(NPI, "111")})
