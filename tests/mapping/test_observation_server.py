"""The test FHIR server (our StructureDefinitions loaded, meta.profile enforced) accepts every resource
the observation mapping produces, PUT to its deterministic id, and rejects what breaks our profiles."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fhir_alliance import profiles
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.questionnaire import observations_from_questionnaire_response
from fhir_alliance.schemas.observations import load_record
from tests.mapping.observation_strategies import records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "observations").glob("*.json"))
_JSON = {"Content-Type": "application/fhir+json"}


def _put(server, resource: dict):
    body = server.tagged(resource)
    return server.http.put(
        server.url(f"{resource['resourceType']}/{resource['id']}"), json=body, headers=_JSON
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_server_accepts_every_resource_we_produce(fhir_server, path: Path) -> None:
    """Each example's R4 resources are stored under their deterministic ids; a second PUT is a no-op update."""
    resources = to_observations(load_record(json.loads(path.read_text())))
    for resource in resources:
        response = _put(fhir_server, resource)
        assert response.status_code in (200, 201), response.text[:1500]
        assert response.json()["id"] == resource["id"]
    again = _put(fhir_server, resources[0])
    assert again.status_code == 200, again.text[:1500]
    found = fhir_server.http.get(
        fhir_server.url("Observation"),
        params={
            "identifier": f"{resources[0]['identifier'][0]['system']}|{resources[0]['identifier'][0]['value']}"
        },
    ).json()
    assert found["total"] == 1


def test_server_accepts_observations_extracted_from_a_questionnaire_response(fhir_server) -> None:
    """SDC-style extraction of a partly answered SRS QuestionnaireResponse yields resources the server accepts."""
    qr = _srs_qr()
    resources = observations_from_questionnaire_response(qr)
    codes = [r["code"]["coding"][0]["code"] for r in resources]
    assert codes == ["srs", "srs.1", "srs.2", "srs.4"]  # item 3 unanswered: no item, no total
    for resource in resources:
        response = _put(fhir_server, resource)
        assert response.status_code in (200, 201), response.text[:1500]


def _srs_qr() -> dict:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "identifier": {"system": "https://clinic.example.org/qr", "value": "qr-1"},
        "questionnaire": "https://fhir-alliance.org/fhir/Questionnaire/srs",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-11-20T15:50:00+00:00",
        "item": [
            {"linkId": "1", "answer": [{"valueDecimal": 9.1}]},
            {"linkId": "2", "answer": [{"valueDecimal": 8.7}]},
            {"linkId": "3"},
            {"linkId": "4", "answer": [{"valueDecimal": 9.0}]},
        ],
    }


@pytest.mark.local_fhir_server
def test_server_rejects_a_rupture_without_its_tension_component(fhir_server) -> None:
    """Our rupture profile's tension slice (1..1) is enforced: dropping it is refused."""
    rupture = to_observations(
        load_record(json.loads((ROOT / "examples/observations/rupture.json").read_text()))
    )[0]
    assert _put(fhir_server, rupture).status_code in (200, 201)
    broken = copy.deepcopy(rupture)
    broken["component"] = [
        c for c in broken["component"] if c["code"]["coding"][0]["code"] != "tension"
    ]
    response = _put(fhir_server, broken)
    assert response.status_code in (400, 422), response.text[:1500]


@pytest.mark.local_fhir_server
def test_tightened_profile_makes_validation_fail(fhir_server) -> None:
    """Loading a copy of our score profile with referenceRange 2..* makes our score Observation fail."""
    sd = profiles.resource("StructureDefinition", "alliance-score")
    tightened = copy.deepcopy(sd)
    for element in tightened["snapshot"]["element"]:
        if element["id"] == "Observation.referenceRange":
            element["min"] = 2
    score = to_observations(
        load_record(
            json.loads((ROOT / "examples/observations/srs-administration.json").read_text())
        )
    )[1]
    assert _put(fhir_server, score).status_code in (200, 201)
    fhir_server.load_profile(tightened)
    response = _put(fhir_server, score)
    assert response.status_code in (400, 422), response.text[:1500]
    assert "referenceRange" in response.text


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(record=records)
def test_server_accepts_generated_records(fhir_server, record) -> None:
    """Any valid record (every kind, rater, optional field) maps to resources the server accepts."""
    for resource in to_observations(record):
        response = _put(fhir_server, resource)
        assert response.status_code in (200, 201), response.text[:1500]


@pytest.mark.local_fhir_server
def test_server_rejects_an_automated_measure_without_its_tool_details(fhir_server) -> None:
    """Invariant alliance-rater-1: rater role automated requires the automated-rater extension."""
    data = json.loads((ROOT / "examples/observations/dimension-rating-automated.json").read_text())
    rating = to_observations(load_record(data))[0]
    rating["extension"] = [
        e for e in rating["extension"] if not e["url"].endswith("/automated-rater")
    ]
    response = _put(fhir_server, rating)
    assert response.status_code in (400, 422), response.text[:1500]
    assert "alliance-rater-1" in response.text


@pytest.mark.parametrize("restful", [False, True], ids=["urn-uuid", "base-url"])
def test_server_accepts_the_collection_bundle_map_writes(fhir_server, restful: bool) -> None:
    """The collection Bundle of several records (urn:uuid fullUrls with references rewritten to
    them, or the server's base/Type/id) is a valid Bundle for the server: base structure of every
    entry and the Bundle invariants (bdl-7: unique fullUrls). Medplum warns that it cannot type a
    urn:uuid reference; a warning, which FHIR's Bundle rules do not share."""
    from fhir_alliance.mapping.collection import collection_bundle

    names = ("srs-administration", "dimension-rating-automated", "rupture", "repair")
    resources = [
        resource
        for name in names
        for resource in to_observations(
            load_record(json.loads((ROOT / "examples/observations" / f"{name}.json").read_text()))
        )
    ]
    fhir_server.track("Bundle")
    base_url = fhir_server.url("").rstrip("/") if restful else None
    body = fhir_server.tagged(collection_bundle(resources, base_url=base_url))
    response = fhir_server.http.post(fhir_server.url("Bundle"), json=body, headers=_JSON)
    assert response.status_code == 201, response.text[:1500]
    stored = response.json()
    assert [e["fullUrl"] for e in stored["entry"]] == [e["fullUrl"] for e in body["entry"]]
