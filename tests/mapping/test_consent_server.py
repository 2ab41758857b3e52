"""Every Consent we produce is accepted by the real test FHIR server with our profiles enforced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from fhir_alliance.mapping.consent import R4, from_consent, to_consent
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.schemas.consent import load_consent
from tests.fhir_server.plugin import FhirTestServer
from tests.mapping.consent_strategies import consent_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "consent").glob("*.json"))
_FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _put(server: FhirTestServer, resource: dict[str, Any]) -> Any:
    tagged = server.tagged(resource)
    return server.http.put(
        server.url(f"Consent/{resource['id']}"), data=json.dumps(tagged), headers=_FHIR_JSON
    )


def _without_tag(resource: dict[str, Any]) -> dict[str, Any]:
    """The server adds meta.versionId/lastUpdated and keeps our tag: compare the rest."""
    return {k: v for k, v in resource.items() if k != "meta"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_accepted_and_read_back(fhir_server: FhirTestServer, path: Path) -> None:
    """Each example's R4 Consent is stored by PUT to its deterministic id and reads back equal."""
    record = load_consent(json.loads(path.read_text()))
    resource = to_consent(record, version=R4)
    response = _put(fhir_server, resource)
    assert response.status_code in (200, 201), response.text[:2000]
    stored = fhir_server.http.get(fhir_server.url(f"Consent/{resource['id']}")).json()
    assert _without_tag(stored) == _without_tag(resource)
    assert from_consent(stored) == record


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(record=consent_records())
def test_generated_consents_are_accepted(
    fhir_server: FhirTestServer, record: ConsentRecord
) -> None:
    """Generated records of every kind map to R4 Consents the server accepts under our profiles."""
    response = _put(fhir_server, to_consent(record, version=R4))
    assert response.status_code in (200, 201), response.text[:2000]


def _treatment() -> dict[str, Any]:
    record = load_consent(
        json.loads((ROOT / "examples/consent/treatment-declined.json").read_text())
    )
    return to_consent(record, version=R4)


@pytest.mark.local_fhir_server
def test_profile_rejects_treatment_without_intervention(fhir_server: FhirTestServer) -> None:
    """The treatment profile is enforced: dropping the intervention extension gets a 4xx."""
    resource = _treatment()
    assert _put(fhir_server, resource).status_code in (200, 201)
    resource["extension"] = [
        e for e in resource["extension"] if not e["url"].endswith("/consent-intervention")
    ]
    response = _put(fhir_server, resource)
    assert response.status_code in (400, 422), response.text[:500]


@pytest.mark.local_fhir_server
def test_profile_rejects_nested_provision_without_type(fhir_server: FhirTestServer) -> None:
    """alliance-consent-1 is enforced: a nested provision without a type gets a 4xx."""
    record = load_consent(json.loads((ROOT / "examples/consent/restriction.json").read_text()))
    resource = to_consent(record, version=R4)
    assert _put(fhir_server, resource).status_code in (200, 201)
    del resource["provision"]["provision"][0]["provision"][0]["type"]
    response = _put(fhir_server, resource)
    assert response.status_code in (400, 422), response.text[:500]


@pytest.mark.local_fhir_server
def test_profile_rejects_missing_state(fhir_server: FhirTestServer) -> None:
    """The precise-state extension is required (1..1) by every consent profile."""
    resource = _treatment()
    resource["extension"] = [
        e for e in resource["extension"] if not e["url"].endswith("/consent-state")
    ]
    response = _put(fhir_server, resource)
    assert response.status_code in (400, 422), response.text[:500]


@pytest.mark.local_fhir_server
def test_profile_rejects_wrong_kind_category(fhir_server: FhirTestServer) -> None:
    """The kind slice is enforced: a treatment consent tagged as sharing gets a 4xx."""
    resource = _treatment()
    resource["category"][0]["coding"][0]["code"] = "sharing"
    response = _put(fhir_server, resource)
    assert response.status_code in (400, 422), response.text[:500]


FOREIGN = sorted((Path(__file__).parent / "fixtures" / "consent").glob("*.json"))


@pytest.mark.parametrize("path", FOREIGN, ids=[p.stem for p in FOREIGN])
def test_foreign_consents_rewritten_as_ours_are_accepted(
    fhir_server: FhirTestServer, path: Path
) -> None:
    """A PCF- or LEAP-shaped consent read into the domain is written back as a profiled R4 Consent."""
    record = from_consent(json.loads(path.read_text()))
    resource = to_consent(record, version=R4)
    response = _put(fhir_server, resource)
    assert response.status_code in (200, 201), response.text[:2000]
    assert from_consent(resource) == record
