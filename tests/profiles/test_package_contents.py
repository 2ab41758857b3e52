"""The committed profiles package (profiles/fsh-generated/resources) is complete and ours."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance import profiles, terminology
from fhir_alliance.terminology import CANONICAL_BASE
from tests.profiles import licensed_text

REPO = Path(__file__).resolve().parents[2]
RESOURCES = sorted(profiles.all_resources(), key=lambda r: (r["resourceType"], r["id"]))
IDS = [f"{r['resourceType']}/{r['id']}" for r in RESOURCES]
# Canonical resources carry a url; Questionnaires, CodeSystems etc. are all canonical in R4.
CANONICAL_TYPES = {
    "StructureDefinition",
    "CodeSystem",
    "ValueSet",
    "Questionnaire",
    "ImplementationGuide",
    "ConceptMap",
    "SearchParameter",
    "OperationDefinition",
    "CapabilityStatement",
    "NamingSystem",
}


def test_sushi_config_canonical_is_the_python_canonical_base() -> None:
    """sushi-config.yaml's canonical equals terminology.CANONICAL_BASE (defined once, checked here)."""
    config = (REPO / "profiles" / "sushi-config.yaml").read_text(encoding="utf-8")
    match = re.search(r"^canonical:\s*(\S+)\s*$", config, re.MULTILINE)
    assert match is not None
    assert match.group(1) == CANONICAL_BASE


def test_package_manifest() -> None:
    """The package names itself fhir-alliance.profiles, FHIR 4.0.1, with the pinned dependencies."""
    info = profiles.package_info()
    assert info.package_id == "fhir-alliance.profiles"
    assert info.canonical == CANONICAL_BASE
    assert info.fhir_versions == ("4.0.1",)
    assert info.depends_on == {
        "hl7.terminology.r4": "7.0.1",
        "hl7.fhir.uv.extensions.r4": "5.3.0-ballot-tc1",
    }


def test_file_names_match_resources() -> None:
    """Every file is named <resourceType>-<id>.json after the resource it holds."""
    location = Path(profiles.package_location())
    for path in sorted(location.glob("*.json")):
        resource = profiles.resource(path.stem.split("-", 1)[0], path.stem.split("-", 1)[1])
        assert path.name == f"{resource['resourceType']}-{resource['id']}.json"


@pytest.mark.parametrize("resource", RESOURCES, ids=IDS)
def test_canonical_urls_are_ours(resource: dict[str, Any]) -> None:
    """Every canonical artefact's url is {CANONICAL_BASE}/{resourceType}/{id}; example instances
    (Observation, Consent, ...) carry none."""
    if resource["resourceType"] in CANONICAL_TYPES:
        assert resource["url"] == terminology.canonical(resource["resourceType"], resource["id"])
    else:
        assert "url" not in resource


@pytest.mark.parametrize("resource", RESOURCES, ids=IDS)
def test_status_draft_and_fhir_version(resource: dict[str, Any]) -> None:
    """Canonical artefacts are draft, version 0.1.0; StructureDefinitions target FHIR 4.0.1."""
    if resource["resourceType"] not in CANONICAL_TYPES:
        return
    assert resource.get("status") == "draft"
    assert resource.get("version") == profiles.package_info().version == "0.1.0"
    if resource["resourceType"] == "StructureDefinition":
        assert resource["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize(
    "definition",
    [r for r in RESOURCES if r["resourceType"] == "StructureDefinition"],
    ids=[
        i for i, r in zip(IDS, RESOURCES, strict=True) if r["resourceType"] == "StructureDefinition"
    ],
)
def test_structure_definitions_have_snapshots(definition: dict[str, Any]) -> None:
    """Every StructureDefinition has a snapshot whose first element is its type (validators need it)."""
    elements = definition.get("snapshot", {}).get("element", [])
    assert elements, "no snapshot"
    assert elements[0]["path"] == definition["type"]
    assert all(e["path"].split(".")[0] == definition["type"] for e in elements)


# Elements Medplum adds to its copy of the R4 definitions, which the build strips from the
# hl7.fhir.r4.core package it lays out (see profiles/tools/build.mjs). A profile that constrains
# meta would otherwise carry e.g. Observation.meta.project in its snapshot.
MEDPLUM_ADDITIONS = re.compile(
    r"(^|\.)meta\.(project|author|onBehalfOf|account|accounts|compartment|deleted)$"
    r"|^Binary\.url$"
)


def medplum_traces(resource: dict[str, Any]) -> list[str]:
    """Element paths or URLs in ``resource`` that come from Medplum, not from FHIR R4."""
    found = [
        element["path"]
        for view in ("snapshot", "differential")
        for element in resource.get(view, {}).get("element", [])
        if MEDPLUM_ADDITIONS.search(element["path"])
    ]
    if "medplum" in json.dumps(resource).lower():
        found.append("a reference to medplum")
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=IDS)
def test_no_medplum_additions(resource: dict[str, Any]) -> None:
    """No artefact carries Medplum's additions to R4 (Meta.project, medplum.com targets, ...)."""
    assert medplum_traces(resource) == []


def test_medplum_trace_detector_finds_meta_project() -> None:
    """The detector flags an unfolded Meta.project and a medplum.com target profile."""
    polluted = {
        "snapshot": {
            "element": [{"path": "Observation.meta"}, {"path": "Observation.meta.project"}]
        },
        "differential": {
            "element": [
                {
                    "path": "Observation.performer",
                    "type": [
                        {
                            "code": "Reference",
                            "targetProfile": ["https://medplum.com/fhir/StructureDefinition/Bot"],
                        }
                    ],
                }
            ]
        },
    }
    assert medplum_traces(polluted) == ["Observation.meta.project", "a reference to medplum"]


@pytest.mark.parametrize("resource", RESOURCES, ids=IDS)
def test_no_licensed_item_text(resource: dict[str, Any]) -> None:
    """No artefact carries item wording of WAI-SR, SRS or ORS (structure only; docs/profiles.md)."""
    assert licensed_text.findings(resource) == []


def test_codes_read_every_code_system() -> None:
    """terminology.codes() returns each of our CodeSystems' codes, by id and by URL, and as many as
    the CodeSystem counts."""
    for system in (r for r in RESOURCES if r["resourceType"] == "CodeSystem"):
        codes = terminology.codes(system["id"])
        assert codes == terminology.codes(system["url"])
        assert len(codes) >= len(system.get("concept", []))
        if "count" in system:
            assert len(codes) == system["count"]
