"""Our consent vocabularies, extensions and profiles in the built package match the Python side."""

from __future__ import annotations

import pytest

from fhir_alliance import profiles, terminology
from fhir_alliance.mapping.consent import KIND_PROFILES
from fhir_alliance.model.consent import ConsentKind, ConsentStatus, VerificationMethod


@pytest.mark.parametrize(
    ("name", "enum"),
    [
        ("consent-kind", ConsentKind),
        ("consent-state", ConsentStatus),
        ("consent-verification-method", VerificationMethod),
    ],
)
def test_code_systems_match_the_model_enums(name: str, enum: type) -> None:
    """Each consent CodeSystem has exactly the codes of its model enum."""
    assert set(terminology.codes(name)) == {e.value for e in enum}


def test_every_extension_the_mapping_writes_is_defined() -> None:
    """Every EXT_CONSENT_* URL names a built StructureDefinition of an Extension."""
    urls = {getattr(terminology, n) for n in dir(terminology) if n.startswith("EXT_CONSENT_")}
    built = {sd["url"]: sd for sd in profiles.structure_definitions()}
    for url in urls:
        assert url in built, url
        assert built[url]["type"] == "Extension"


def test_r5_modifier_extensions_are_modifiers() -> None:
    """The two R5 provision extensions are declared modifiers (readers must not ignore them)."""
    for url in (terminology.EXT_CONSENT_ROOT_PROVISION, terminology.EXT_CONSENT_PROVISION_TYPE):
        sd = profiles.resource("StructureDefinition", url)
        root = sd["snapshot"]["element"][0]
        assert root["isModifier"] is True and root.get("isModifierReason")


def test_each_kind_has_a_profile_with_snapshot_fixing_scope_and_kind() -> None:
    """Each kind's profile exists with a snapshot; it fixes scope and the kind category slice."""
    for kind, url in KIND_PROFILES.items():
        sd = profiles.resource("StructureDefinition", url)
        assert sd["type"] == "Consent" and not sd.get("abstract")
        elements = {e["id"]: e for e in sd["snapshot"]["element"]}
        scope = elements["Consent.scope"]["patternCodeableConcept"]["coding"][0]["code"]
        assert scope == ("treatment" if kind is ConsentKind.TREATMENT else "patient-privacy")
        kind_slice = elements["Consent.category:kind"]["patternCodeableConcept"]["coding"][0]
        assert kind_slice == {"system": terminology.CS_CONSENT_KINDS, "code": kind.value}
