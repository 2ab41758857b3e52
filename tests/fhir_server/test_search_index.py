"""The test server's search indexes give exactly what a full scan gives.

One mixed store (references in several forms, identifiers with and without systems and in other
case, updates that move a resource to another patient, deletes, a re-create, a rolled-back
transaction); every query is asked twice, once as usual (indexes) and once with
``X-Search-Scan: full`` (the full scan Medplum's matcher does over every resource), and the
answers must be the same: total, ids in order, links. Local only: the header is our server's.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fhir_server.plugin import FhirTestServer

pytestmark = [pytest.mark.server_conformance, pytest.mark.local_fhir_server]

FHIR_JSON = {"Content-Type": "application/fhir+json"}
SYS = "urn:index-test:id"
OTHER = "urn:index-test:other"
TAG = "urn:index-test:tag"
SCAN = {"X-Search-Scan": "full"}


def consent(cid: str, patient: dict[str, Any], *identifiers: dict[str, str], **extra: Any) -> Any:
    return {
        "resourceType": "Consent",
        "id": cid,
        "identifier": list(identifiers),
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": patient,
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        **extra,
    }


def observation(oid: str, subject: dict[str, Any], *identifiers: dict[str, str]) -> Any:
    return {
        "resourceType": "Observation",
        "id": oid,
        "identifier": list(identifiers),
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
        "subject": subject,
        "valueInteger": 1,
    }


def ref(text: str) -> dict[str, str]:
    return {"reference": text}


def put(server: FhirTestServer, resource: dict[str, Any]) -> dict[str, Any]:
    url = server.url(f"{resource['resourceType']}/{resource['id']}")
    response = server.http.put(url, json=resource, headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.text
    stored: dict[str, Any] = response.json()
    return stored


def build_store(server: FhirTestServer) -> list[str]:
    """Writes the mixed store; returns the lastUpdated of every write, in order."""
    stamps: list[str] = []

    def keep(resource: dict[str, Any]) -> dict[str, Any]:
        stored = put(server, resource)
        stamps.append(stored["meta"]["lastUpdated"])
        return stored

    tagged = {"meta": {"tag": [{"system": TAG, "code": "a"}]}}
    for i in range(24):
        patient = [
            ref(f"Patient/p{i % 4}"),
            ref(f"http://other.example/fhir/Patient/p{i % 4}"),
            {"identifier": {"system": SYS, "value": f"p{i % 4}"}},
            ref(f"Group/p{i % 4}"),
        ][i % 4]
        identifiers = [
            [{"system": SYS, "value": f"v{i}"}],
            [{"value": f"v{i}"}],
            [{"system": OTHER, "value": f"V{i}"}, {"system": SYS, "value": f"w{i}"}],
        ][i % 3]
        extra = tagged if i % 5 == 0 else {}
        keep(consent(f"c{i}", patient, *identifiers, **extra))
        keep(observation(f"o{i}", ref(f"Patient/p{i % 3}"), {"system": SYS, "value": f"v{i}"}))
    # Updates that move a Consent to another patient and identifier (old index keys go stale).
    for i in (1, 2, 7):
        keep(
            consent(
                f"c{i}", ref("Patient/p9"), {"system": SYS, "value": f"moved{i}"}, status="inactive"
            )
        )
    for i in (3, 8):
        assert server.http.delete(server.url(f"Consent/c{i}")).status_code in (200, 204)
    keep(consent("c3", ref("Patient/p1"), {"system": SYS, "value": "again3"}))  # re-created
    failing = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": consent("rolled", ref("Patient/p1"), {"system": SYS, "value": "v1"}),
                "request": {"method": "PUT", "url": "Consent/rolled"},
            },
            {
                "resource": consent("c4", ref("Patient/p1")),
                "request": {"method": "PUT", "url": "Consent/c4", "ifMatch": 'W/"99"'},
            },
        ],
    }
    assert server.http.post(server.base_url, json=failing, headers=FHIR_JSON).status_code == 412
    return stamps


def queries(stamps: list[str]) -> list[str]:
    mid, late = stamps[len(stamps) // 2], stamps[-4]
    second = mid[:19] + "Z"  # second precision
    minute = mid[:16] + "Z"
    day = mid[:10]
    out = [
        "Consent?patient=Patient/p1",
        "Consent?patient=p1",
        "Consent?patient=Patient/p0,Patient/p1",
        "Consent?patient=http://other.example/fhir/Patient/p1",
        "Consent?patient=Patient/p9&_sort=-_lastUpdated",
        "Consent?patient:missing=true",
        "Observation?subject=Patient/p2&_count=3&_offset=2",
        "Observation?subject=p2",
        "Observation?patient=Patient/p0&_sort=_lastUpdated",
        f"Consent?identifier={SYS}|v1",
        "Consent?identifier=v1",
        "Consent?identifier=|v1",
        "Consent?identifier=V4",
        f"Consent?identifier={SYS.upper()}|V0",
        f"Consent?identifier={OTHER}|v5",
        f"Consent?identifier={SYS}|",
        f"Consent?identifier={SYS}|v0,{SYS}|w2,|v4",
        f"Consent?identifier={SYS}|moved1",
        "Consent?identifier=again3",
        f"Consent?_tag={TAG}|a",
        "Consent?status=inactive",
        f"Consent?identifier:not={SYS}|v0",
        f"Observation?identifier={SYS}|v7&subject=Patient/p1",
        "Consent?_id=c5",
        "Consent?_sort=status,-_lastUpdated&_count=5&_offset=5&patient=Patient/p1,Patient/p9",
    ]
    for when in (mid, late, second, minute, day):
        for op in ("ge", "gt", "le", "lt", "sa", "eb", "eq", "ne"):
            out.append(f"Consent?_lastUpdated={op}{when}&_sort=_lastUpdated&_count=50")
        out.append(f"Consent?_lastUpdated=ge{when}&_sort=-_lastUpdated&_count=4&_offset=3")
        out.append(f"Consent?_lastUpdated=ge{when}")
        out.append(f"Consent?_lastUpdated=ge{when}&patient=Patient/p1&_sort=_lastUpdated")
        out.append(f"Consent?_lastUpdated=ge{when}&_sort=status,_lastUpdated")
        out.append(f"Observation?_lastUpdated=gt{when}&_lastUpdated=lt{late}&_sort=_lastUpdated")
        out.append(f"Consent?_lastUpdated=ge{when},lt{mid}")
    return out


def answer(server: FhirTestServer, query: str, headers: dict[str, str]) -> tuple[Any, ...]:
    response = server.http.get(server.url(query), headers=headers)
    body = response.json()
    if response.status_code != 200:
        return (response.status_code, body.get("issue"))
    ids = [e["resource"]["id"] for e in body.get("entry", [])]
    links = [(x["relation"], x["url"]) for x in body["link"]]
    return (200, body["total"], ids, links)


def test_indexed_search_answers_as_the_full_scan(fhir_server: FhirTestServer) -> None:
    """Every query (references, identifiers, tags, _lastUpdated ranges, sorts, paging) gives the same total, ids in order and links with and without indexes."""
    stamps = build_store(fhir_server)
    found_any = 0
    for query in queries(stamps):
        indexed = answer(fhir_server, query, {})
        scanned = answer(fhir_server, query, SCAN)
        assert indexed == scanned, query
        found_any += bool(indexed[0] == 200 and indexed[2])
    assert found_any > 40  # the queries are not vacuous


def test_indexes_follow_later_writes(fhir_server: FhirTestServer) -> None:
    """After an index is built, an update moving a resource and a delete are seen by the next search."""
    cid = f"c-{uuid.uuid4()}"
    put(fhir_server, consent(cid, ref("Patient/first"), {"system": SYS, "value": cid}))
    query = f"Consent?identifier={SYS}|{cid}"
    assert answer(fhir_server, query, {})[1] == 1  # builds the identifier index
    assert answer(fhir_server, "Consent?patient=Patient/second", {})[1] == 0
    put(fhir_server, consent(cid, ref("Patient/second"), {"system": SYS, "value": "other"}))
    assert answer(fhir_server, query, {})[1] == 0
    assert answer(fhir_server, "Consent?patient=Patient/second", {})[2] == [cid]
    fhir_server.http.delete(fhir_server.url(f"Consent/{cid}"))
    assert answer(fhir_server, "Consent?patient=Patient/second", {})[1] == 0
