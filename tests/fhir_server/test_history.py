"""The test server's ``_history`` at system, type and instance level (deletions included).

Marked ``server_conformance``: the suite's sync code reads type-level history where a server
advertises ``history-type``; these tests pin down what our server answers. Entries are filtered to
the ids each test wrote, so that they also hold on a shared remote server.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from fhir_alliance.terminology import CANONICAL_BASE
from tests.fhir_server.plugin import FhirTestServer

pytestmark = pytest.mark.server_conformance

FHIR_JSON = {"Content-Type": "application/fhir+json"}
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def consent(server: FhirTestServer, status: str = "active") -> dict[str, Any]:
    return server.tagged(
        {
            "resourceType": "Consent",
            "status": status,
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{uuid.uuid4()}"},
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        }
    )


def observation(server: FhirTestServer) -> dict[str, Any]:
    return server.tagged(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": f"{CANONICAL_BASE}/CodeSystem/test", "code": "probe"}]},
            "valueInteger": 3,
        }
    )


def put(server: FhirTestServer, resource: dict[str, Any]) -> dict[str, Any]:
    ref = f"{resource['resourceType']}/{resource['id']}"
    response = server.http.put(server.url(ref), json=resource, headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.text
    stored: dict[str, Any] = response.json()
    return stored


def history(server: FhirTestServer, path: str, **params: str) -> dict[str, Any]:
    response = server.http.get(server.url(path), params=params)
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    return bundle


def all_pages(server: FhirTestServer, path: str, **params: str) -> list[dict[str, Any]]:
    """Every entry, following ``next`` links (only within the base)."""
    bundle = history(server, path, **params)
    entries = list(bundle.get("entry", []))
    while True:
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return entries
        assert following[0].startswith(server.base_url + "/")
        response = server.http.get(following[0])
        assert response.status_code == 200, response.text
        bundle = response.json()
        entries.extend(bundle.get("entry", []))


def mine(entries: list[dict[str, Any]], *ids: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["fullUrl"].rsplit("/", 1)[-1] in ids]


def test_type_history_lists_create_update_and_delete_newest_first(
    fhir_server: FhirTestServer,
) -> None:
    """GET Consent/_history: a create, an update and a delete, newest first, with request and response; the delete has no resource."""
    cid = f"h-{uuid.uuid4()}"
    created = put(fhir_server, {**consent(fhir_server), "id": cid})
    updated = put(fhir_server, {**created, "status": "inactive"})
    deleted = fhir_server.http.delete(fhir_server.url(f"Consent/{cid}"))
    assert deleted.status_code in (200, 204)

    entries = mine(all_pages(fhir_server, "Consent/_history"), cid)
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "PUT"]
    assert all(e["request"]["url"] == f"Consent/{cid}" for e in entries)
    assert "resource" not in entries[0]
    assert entries[0]["response"]["etag"] == 'W/"3"'
    assert entries[0]["response"]["lastModified"] > updated["meta"]["lastUpdated"]
    assert entries[1]["resource"]["status"] == "inactive"
    assert entries[1]["response"] == {
        "status": "200 OK",
        "etag": 'W/"2"',
        "lastModified": updated["meta"]["lastUpdated"],
    }
    assert entries[2]["resource"]["meta"]["versionId"] == "1"
    assert entries[2]["response"]["status"] == "201 Created"


def test_type_history_holds_only_that_type_and_posts_name_the_type(
    fhir_server: FhirTestServer,
) -> None:
    """Observation/_history holds Observations only; a POST entry's request.url is the type."""
    obs = fhir_server.http.post(
        fhir_server.url("Observation"), json=observation(fhir_server), headers=FHIR_JSON
    ).json()
    cid = f"h-{uuid.uuid4()}"
    put(fhir_server, {**consent(fhir_server), "id": cid})
    entries = all_pages(fhir_server, "Observation/_history")
    assert {e["request"]["url"].split("/")[0] for e in entries} == {"Observation"}
    (entry,) = mine(entries, obs["id"])
    assert entry["request"] == {"method": "POST", "url": "Observation"}
    assert entry["response"]["status"] == "201 Created"
    assert not mine(entries, cid)


def test_since_keeps_versions_at_or_after_the_instant(fhir_server: FhirTestServer) -> None:
    """_since is inclusive: the version written at exactly that instant and later ones, nothing before."""
    cid = f"h-{uuid.uuid4()}"
    first = put(fhir_server, {**consent(fhir_server), "id": cid})
    second = put(fhir_server, {**first, "status": "inactive"})
    fhir_server.http.delete(fhir_server.url(f"Consent/{cid}"))
    since = second["meta"]["lastUpdated"]
    entries = mine(all_pages(fhir_server, "Consent/_history", _since=since), cid)
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"']
    assert all(e["response"]["lastModified"] >= since for e in entries)


def test_paging_by_next_links_visits_every_version_once(fhir_server: FhirTestServer) -> None:
    """_count pages the history; following next links gives each version exactly once."""
    ids = [f"h-{uuid.uuid4()}" for _ in range(7)]
    start = None
    for cid in ids:
        stored = put(fhir_server, {**consent(fhir_server), "id": cid})
        start = start or stored["meta"]["lastUpdated"]
    assert start is not None
    first = history(fhir_server, "Consent/_history", _count="3", _since=start)
    assert len(first["entry"]) == 3
    assert first["total"] >= 7
    entries = mine(all_pages(fhir_server, "Consent/_history", _count="3", _since=start), *ids)
    seen = [e["fullUrl"].rsplit("/", 1)[-1] for e in entries]
    assert sorted(seen) == sorted(ids)
    assert seen == list(reversed(ids))


def test_system_history_holds_every_type(fhir_server: FhirTestServer) -> None:
    """GET [base]/_history holds writes of every type, newest first."""
    cid = f"h-{uuid.uuid4()}"
    stored = put(fhir_server, {**consent(fhir_server), "id": cid})
    obs = fhir_server.http.post(
        fhir_server.url("Observation"), json=observation(fhir_server), headers=FHIR_JSON
    ).json()
    entries = mine(
        all_pages(fhir_server, "_history", _since=stored["meta"]["lastUpdated"]), cid, obs["id"]
    )
    assert [e["request"]["url"] for e in entries] == ["Observation", f"Consent/{cid}"]


def test_instance_history_includes_the_delete(fhir_server: FhirTestServer) -> None:
    """GET Consent/[id]/_history lists the deletion too, as an entry without a resource."""
    cid = f"h-{uuid.uuid4()}"
    put(fhir_server, {**consent(fhir_server), "id": cid})
    fhir_server.http.delete(fhir_server.url(f"Consent/{cid}"))
    entries = history(fhir_server, f"Consent/{cid}/_history")["entry"]
    assert [(e["request"]["method"], "resource" in e) for e in entries] == [
        ("DELETE", False),
        ("PUT", True),
    ]
    missing = fhir_server.http.get(fhir_server.url(f"Consent/never-{uuid.uuid4()}/_history"))
    assert missing.status_code == 404


def test_rolled_back_transaction_leaves_no_history(fhir_server: FhirTestServer) -> None:
    """A transaction that fails late and is rolled back leaves none of its writes in _history."""
    cid = f"h-{uuid.uuid4()}"
    existing = put(fhir_server, {**consent(fhir_server), "id": cid})
    new_id = f"h-{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**consent(fhir_server), "id": new_id},
                "request": {"method": "PUT", "url": f"Consent/{new_id}"},
            },
            {
                "resource": {**existing, "status": "inactive"},
                "request": {"method": "PUT", "url": f"Consent/{cid}", "ifMatch": 'W/"9"'},
            },
        ],
    }
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 412, response.text
    entries = mine(all_pages(fhir_server, "Consent/_history"), cid, new_id)
    assert [e["response"]["etag"] for e in entries] == ['W/"1"']


def test_bad_history_parameters_are_400(fhir_server: FhirTestServer) -> None:
    """A _since that is not an instant, and parameters the server does not offer, are 400 naming them."""
    for params in ({"_since": "yesterday"}, {"_since": "2026-01-01T10:00"}, {"_at": "2026"}):
        response = fhir_server.http.get(fhir_server.url("Consent/_history"), params=params)
        assert response.status_code == 400, params
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == list(params)


def test_metadata_advertises_history_interactions(fhir_server: FhirTestServer) -> None:
    """The CapabilityStatement lists history-type for Consent and Observation, and history-system."""
    statement = fhir_server.http.get(fhir_server.url("metadata")).json()
    rest = statement["rest"][0]
    assert "history-system" in {i["code"] for i in rest["interaction"]}
    by_type = {r["type"]: r for r in rest["resource"]}
    for resource_type in ("Consent", "Observation"):
        codes = {i["code"] for i in by_type[resource_type]["interaction"]}
        assert {"history-type", "history-instance"} <= codes
