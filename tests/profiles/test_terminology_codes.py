"""terminology.codes() reads one of our CodeSystems from the profiles package."""

from __future__ import annotations

import pytest

from fhir_alliance import terminology
from fhir_alliance.errors import ArtefactNotFoundError, ProfilesPackageError
from tests.profiles.conftest import WriteResource


def _system(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "CodeSystem",
        "id": "rupture-marker",
        "url": terminology.canonical("CodeSystem", "rupture-marker"),
        "name": "RuptureMarker",
        "status": "draft",
        "content": "complete",
        **extra,
    }


def test_codes_flatten_hierarchy_in_order(crafted_package: WriteResource) -> None:
    """Nested concepts are included after their parent, in definition order; no display gives ''."""
    crafted_package(
        _system(
            concept=[
                {
                    "code": "withdrawal",
                    "display": "Withdrawal",
                    "concept": [{"code": "withdrawal-denial"}],
                },
                {"code": "confrontation", "display": "Confrontation"},
            ]
        )
    )
    codes = terminology.codes("rupture-marker")
    assert list(codes.items()) == [
        ("withdrawal", "Withdrawal"),
        ("withdrawal-denial", ""),
        ("confrontation", "Confrontation"),
    ]
    assert terminology.codes("RuptureMarker") == codes


def test_codes_result_is_a_copy(crafted_package: WriteResource) -> None:
    """Changing the returned dict does not change the next answer."""
    crafted_package(_system(concept=[{"code": "a", "display": "A"}]))
    terminology.codes("rupture-marker")["b"] = "B"
    assert terminology.codes("rupture-marker") == {"a": "A"}


def test_codes_refuse_incomplete_code_systems(crafted_package: WriteResource) -> None:
    """A CodeSystem that does not list all its codes (content != complete) is refused."""
    crafted_package(_system(content="not-present"))
    with pytest.raises(ProfilesPackageError, match="not-present"):
        terminology.codes("rupture-marker")


def test_codes_refuse_repeated_codes(crafted_package: WriteResource) -> None:
    """The same code twice (even at different depths) is a package error."""
    crafted_package(_system(concept=[{"code": "a", "concept": [{"code": "a"}]}]))
    with pytest.raises(ProfilesPackageError, match="repeated code 'a'"):
        terminology.codes("rupture-marker")


def test_codes_unknown_code_system(crafted_package: WriteResource) -> None:
    """An unknown CodeSystem raises ArtefactNotFoundError."""
    crafted_package(_system())
    with pytest.raises(ArtefactNotFoundError):
        terminology.codes("no-such-system")
