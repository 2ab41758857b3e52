"""fhir_alliance.profiles finds artefacts by id, name or URL, hands out fresh copies, and fails
clearly on a missing or broken package."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_alliance import profiles
from fhir_alliance.errors import ArtefactNotFoundError, FhirAllianceError, ProfilesPackageError
from fhir_alliance.terminology import CANONICAL_BASE, canonical
from tests.profiles.conftest import WriteResource

REPO = Path(__file__).resolve().parents[2]


def _code_system(id_: str, name: str, **extra: object) -> dict[str, object]:
    return {
        "resourceType": "CodeSystem",
        "id": id_,
        "url": canonical("CodeSystem", id_),
        "name": name,
        "status": "draft",
        "content": "complete",
        **extra,
    }


def test_source_checkout_reads_the_committed_directory() -> None:
    """In a checkout the loader reads profiles/fsh-generated/resources and says so."""
    assert Path(profiles.package_location()) == REPO / "profiles" / "fsh-generated" / "resources"
    assert profiles.package_info().origin == "source"


def test_lookup_by_id_name_url_and_versioned_url(crafted_package: WriteResource) -> None:
    """One resource is found by id, name, canonical URL and URL|version; the type must match."""
    crafted_package(_code_system("rater-role", "RaterRole", version="0.1.0"))
    url = canonical("CodeSystem", "rater-role")
    for key in ("rater-role", "RaterRole", url, f"{url}|0.1.0"):
        assert profiles.code_system(key)["id"] == "rater-role"
    with pytest.raises(ArtefactNotFoundError):
        profiles.value_set("rater-role")
    with pytest.raises(ArtefactNotFoundError, match=r"version '0\.1\.0'"):
        profiles.code_system(f"{url}|0.2.0")


def test_unknown_artefact_is_a_lookup_error_in_our_tree(crafted_package: WriteResource) -> None:
    """A missing artefact raises ArtefactNotFoundError: a LookupError and a FhirAllianceError."""
    crafted_package(_code_system("a", "A"))
    with pytest.raises(ArtefactNotFoundError) as caught:
        profiles.questionnaire("wai-sr")
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, FhirAllianceError)
    assert "wai-sr" in str(caught.value)


def test_each_call_returns_a_fresh_copy(crafted_package: WriteResource) -> None:
    """Changing a returned resource changes neither the cache nor later results."""
    crafted_package(_code_system("a", "A", concept=[{"code": "x"}]))
    first = profiles.code_system("a")
    first["concept"].append({"code": "injected"})
    first["status"] = "active"
    again = profiles.code_system("a")
    assert again["concept"] == [{"code": "x"}]
    assert again["status"] == "draft"
    assert profiles.all_resources()[0] is not profiles.all_resources()[0]


def test_listing_functions(crafted_package: WriteResource) -> None:
    """all_resources lists every file in name order; structure_definitions only the SDs."""
    crafted_package(_code_system("b", "B"))
    crafted_package(
        {
            "resourceType": "StructureDefinition",
            "id": "p",
            "url": canonical("StructureDefinition", "p"),
            "name": "P",
            "status": "draft",
        }
    )
    crafted_package(_code_system("a", "A"))
    assert [r["id"] for r in profiles.all_resources()] == ["a", "b", "p"]
    assert [r["id"] for r in profiles.structure_definitions()] == ["p"]


def test_id_or_url_wins_over_a_clashing_name(crafted_package: WriteResource) -> None:
    """When one resource's name equals another's id, lookup by that key finds the id."""
    crafted_package(_code_system("alpha", "beta"))
    crafted_package(_code_system("beta", "Gamma"))
    assert profiles.code_system("beta")["id"] == "beta"
    assert profiles.code_system("Gamma")["id"] == "beta"


def test_invalid_json_file_is_a_package_error(crafted_package: WriteResource) -> None:
    """A file that is not JSON, or not a FHIR resource, raises ProfilesPackageError naming it."""
    path = crafted_package(_code_system("a", "A"))
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ProfilesPackageError, match=r"CodeSystem-a\.json"):
        profiles.all_resources()


def test_resource_without_type_is_a_package_error(crafted_package: WriteResource) -> None:
    """A JSON object without resourceType is refused."""
    path = crafted_package(_code_system("a", "A"))
    path.write_text('{"id": "a"}', encoding="utf-8")
    with pytest.raises(ProfilesPackageError, match="not a FHIR resource"):
        profiles.all_resources()


def test_package_info_needs_exactly_one_manifest(crafted_package: WriteResource) -> None:
    """package_info() reads the one ImplementationGuide; none is a package error."""
    crafted_package(_code_system("a", "A"))
    with pytest.raises(ProfilesPackageError, match="exactly one ImplementationGuide"):
        profiles.package_info()


def test_package_info_from_manifest(crafted_package: WriteResource) -> None:
    """package_info() reports id, version, canonical base, FHIR versions and dependencies."""
    crafted_package(
        {
            "resourceType": "ImplementationGuide",
            "id": "x.y",
            "url": f"{CANONICAL_BASE}/ImplementationGuide/x.y",
            "packageId": "x.y",
            "version": "9.9.9",
            "fhirVersion": ["4.0.1"],
            "dependsOn": [{"packageId": "dep.one", "version": "1.0.0"}],
        }
    )
    info = profiles.package_info()
    assert (info.package_id, info.version, info.canonical) == ("x.y", "9.9.9", CANONICAL_BASE)
    assert info.fhir_versions == ("4.0.1",)
    assert dict(info.depends_on) == {"dep.one": "1.0.0"}


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With neither the wheel data nor the checkout directory, the error says how to fix it."""
    fake_module = tmp_path / "site" / "fhir_alliance" / "profiles.py"
    fake_module.parent.mkdir(parents=True)
    monkeypatch.setattr(profiles, "__file__", str(fake_module))
    monkeypatch.setattr(profiles.resources, "files", lambda _name: fake_module.parent)
    profiles._package.cache_clear()
    try:
        with pytest.raises(ProfilesPackageError, match="make profiles"):
            profiles.all_resources()
    finally:
        monkeypatch.undo()
        profiles._package.cache_clear()


def test_installed_data_is_preferred_over_the_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When fhir_alliance/_profiles exists (a wheel install) it is used, not the repository copy."""
    package_dir = tmp_path / "site" / "fhir_alliance"
    (package_dir / "_profiles").mkdir(parents=True)
    (package_dir / "_profiles" / "CodeSystem-only-here.json").write_text(
        '{"resourceType": "CodeSystem", "id": "only-here"}', encoding="utf-8"
    )
    monkeypatch.setattr(profiles.resources, "files", lambda _name: package_dir)
    profiles._package.cache_clear()
    try:
        assert profiles.package_location() == str(package_dir / "_profiles")
        assert [r["id"] for r in profiles.all_resources()] == ["only-here"]
    finally:
        monkeypatch.undo()
        profiles._package.cache_clear()
