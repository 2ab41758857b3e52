"""/v1/records: intake of one record or a list, reading, listing by patient, scopes."""

from __future__ import annotations

from typing import Any

from fhir_alliance_service.api.schemas import IntakeResponseSchema
from fhir_alliance_service.store.interface import Store, SyncState
from flask import Flask, url_for
from flask.testing import FlaskClient

from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Identifier
from tests.service.usecases.payloads import for_patient, observation, plain_sharing

Headers = dict[str, dict[str, str]]


def _post(client: FlaskClient, headers: Headers, body: Any, scope: str = "write") -> Any:
    return client.post("/v1/records", json=body, headers=headers[scope])


def _store_size(store: Store) -> tuple[int, int, int]:
    return (
        len(store.list_records(limit=1000)),
        sum(store.counts_by_state().values()),
        len(store.list_audit(limit=1000)),
    )


def test_one_record_is_created_with_201_and_a_status_url(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """POST one object: 201, its id, identifier, version 1, outcome created and a working status URL."""
    payload = observation("srs-administration")
    response = _post(client, auth_headers, payload)
    assert response.status_code == 201, response.json
    [entry] = response.json["records"]
    expected_id = resource_id(Identifier.parse(payload["id"]))
    assert entry == {
        "id": expected_id,
        "identifier": payload["id"],
        "kind": "instrument-administration",
        "version": 1,
        "outcome": "created",
        "status_url": f"/v1/records/{expected_id}/status",
    }
    status = client.get(entry["status_url"], headers=auth_headers["read"])
    assert status.status_code == 200
    assert status.json["state"] == "queued"
    assert _store_size(store) == (1, 1, 1)


def test_a_list_is_taken_in_and_answered_in_order(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """POST a list of several kinds (a rupture, its repair, a consent): one entry each, in order."""
    body = [observation("rupture"), observation("repair"), plain_sharing()]
    response = _post(client, auth_headers, body)
    assert response.status_code == 201, response.json
    assert [e["kind"] for e in response.json["records"]] == ["rupture", "repair", "consent"]


def test_reposting_the_same_content_is_200_and_stores_nothing_new(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """The same records again: 200, every outcome unchanged, store counts unchanged."""
    body = [observation("rupture"), observation("srs-administration")]
    assert _post(client, auth_headers, body).status_code == 201
    before = _store_size(store)
    again = _post(client, auth_headers, body)
    assert again.status_code == 200
    assert {e["outcome"] for e in again.json["records"]} == {"unchanged"}
    assert _store_size(store) == before


def test_changed_content_queues_version_2(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """Changed content under the same identifier: 201, version 2, outcome updated, queued."""
    payload = observation("srs-administration")
    _post(client, auth_headers, payload)
    payload["responses"]["3"] = 2.5
    response = _post(client, auth_headers, payload)
    assert response.status_code == 201
    [entry] = response.json["records"]
    assert (entry["version"], entry["outcome"]) == (2, "updated")
    status = store.sync_status(entry["id"])
    assert status is not None and (status.record_version, status.state) == (2, SyncState.QUEUED)


def test_a_list_with_one_bad_record_stores_nothing(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """One bad record in a list: 422 naming ``1.<field path>`` and the good one is not stored either."""
    bad = observation("srs-administration")
    bad["responses"]["2"] = "very good"
    response = _post(client, auth_headers, [observation("rupture"), bad])
    assert response.status_code == 422
    assert response.json["resourceType"] == "OperationOutcome"
    expressions = {e for issue in response.json["issue"] for e in issue["expression"]}
    assert any(e.startswith("1.responses") for e in expressions), expressions
    assert _store_size(store) == (0, 0, 0)


def test_get_record_returns_the_stored_form_and_status(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """GET /v1/records/<id>: our JSON form, version, patient key and the sync status."""
    payload = observation("rupture")
    [entry] = _post(client, auth_headers, payload).json["records"]
    response = client.get(f"/v1/records/{entry['id']}", headers=auth_headers["read"])
    assert response.status_code == 200
    body = response.json
    assert (body["id"], body["version"], body["patient"]) == (
        entry["id"],
        1,
        "Patient/example-client",
    )
    assert body["record"]["tension"] == payload["tension"]
    assert body["status"]["state"] == "queued"


def test_unknown_and_malformed_record_ids_are_404(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """An unknown UUID and a non-UUID id both answer 404 with an OperationOutcome."""
    for record_id in ("00000000-0000-5000-8000-000000000000", "not-an-id"):
        response = client.get(f"/v1/records/{record_id}", headers=auth_headers["read"])
        assert response.status_code == 404
        assert response.json["issue"][0]["code"] == "not-found"


def test_patient_records_are_paged_by_record_id(client: FlaskClient, auth_headers: Headers) -> None:
    """GET /v1/patients/<ref>/records pages with ``limit`` and a ``next`` link, and only that patient."""
    mine = [for_patient(observation("rupture"), "Patient/p7", suffix=f"-{n}") for n in range(5)]
    other = for_patient(observation("rupture"), "Patient/p8", suffix="-x")
    assert _post(client, auth_headers, [*mine, other]).status_code == 201
    seen: list[str] = []
    url: str | None = "/v1/patients/Patient/p7/records?limit=2"
    pages = 0
    while url:
        page = client.get(url, headers=auth_headers["read"])
        assert page.status_code == 200, page.json
        seen += [r["id"] for r in page.json["records"]]
        assert {r["patient"] for r in page.json["records"]} <= {"Patient/p7"}
        url = page.json["next"]
        pages += 1
    assert pages == 3
    assert seen == sorted(seen)
    assert len(set(seen)) == 5


def test_patient_records_refuse_bad_paging(client: FlaskClient, auth_headers: Headers) -> None:
    """``limit`` out of range, ``after`` that is no record id, and a paging parameter given twice
    (its first value alone used to count) are 422 naming the parameter."""
    for query, field in (
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("after=x", "after"),
        ("limit=1&limit=50", "limit"),
    ):
        response = client.get(
            f"/v1/patients/Patient/p7/records?{query}", headers=auth_headers["read"]
        )
        assert response.status_code == 422, query
        assert response.json["issue"][0]["expression"] == [field]


def test_write_needs_the_write_scope_and_read_the_read_scope(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A read key cannot post (403), a consult key cannot read (403), no key is 401; nothing stored."""
    assert _post(client, auth_headers, observation("rupture"), scope="read").status_code == 403
    assert client.post("/v1/records", json=observation("rupture")).status_code == 401
    assert (
        client.get("/v1/patients/Patient/p1/records", headers=auth_headers["consult"]).status_code
        == 403
    )
    assert _store_size(store) == (0, 0, 0)


def test_too_many_records_in_one_request_is_413(
    app: Any, client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A list longer than ``max_records_per_request`` is refused whole with 413."""
    limit = app.extensions["fhir_alliance"].settings.max_records_per_request
    body = [observation("rupture")] * (limit + 1)
    response = _post(client, auth_headers, body)
    assert response.status_code == 413
    assert _store_size(store) == (0, 0, 0)


def test_openapi_document_describes_the_record_routes(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """/openapi.json documents POST /v1/records with the library's record schemas and our envelope."""
    spec = client.get("/openapi.json", headers=auth_headers["read"]).json
    post = spec["paths"]["/v1/records"]["post"]
    assert post["x-required-scope"] == "write"
    body = post["requestBody"]["content"]["application/json"]["schema"]
    refs = {choice["$ref"] for choice in body["oneOf"][0]["oneOf"]}
    assert "#/components/schemas/RuptureEvent" in refs
    assert "#/components/schemas/ConsentRecord" in refs
    created = post["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["$ref"] == "#/components/schemas/IntakeResponse"
    status = spec["paths"]["/v1/records/{record_id}/status"]["get"]
    assert status["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == (
        "#/components/schemas/SyncStatus"
    )


def test_the_intake_answer_is_what_its_schema_renders_with_url_for_status_urls(
    app: Flask, client: FlaskClient, auth_headers: Headers
) -> None:
    """The intake envelope (built without marshmallow) is exactly what IntakeResponseSchema
    renders, and its status URLs are the ones ``url_for`` builds, under a mount point too."""
    body = [observation("rupture"), observation("srs-administration")]
    mounted = "http://localhost/clinic/"
    response = client.post(
        "/v1/records", json=body, headers=auth_headers["write"], base_url=mounted
    )
    assert response.status_code == 201, response.json
    schema = IntakeResponseSchema()
    assert response.json == schema.dump(schema.load(response.json))
    with app.test_request_context(base_url=mounted):
        expected = [
            url_for("records.get_status", record_id=e["id"]) for e in response.json["records"]
        ]
    assert [e["status_url"] for e in response.json["records"]] == expected
    assert expected[0].startswith("/clinic/v1/records/")


def test_no_key_reads_a_rupture_or_repair_narrative(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """Session narrative is psychotherapy-note content (the library labels it PSYTHPN): every
    record answer, to a ``read`` key and to ``admin`` alike, has the marker in its place and says
    so; every other field comes back as posted."""
    from fhir_alliance_service.usecases.withholding import PSYCHOTHERAPY_CONTENT_WITHHELD

    words = "the client spoke of the anniversary"
    rupture = observation("rupture") | {"narrative": f"Went quiet: {words}."}
    repair = observation("repair") | {"narrative": f"Named it: {words}."}
    posted = _post(client, auth_headers, [rupture, repair])
    assert posted.status_code == 201, posted.json
    ids = [r["id"] for r in posted.json["records"]]
    for scope in ("read", "admin"):
        listed = client.get(
            f"/v1/patients/{rupture['patient']['reference']}/records",
            headers=auth_headers[scope],
        )
        answers = [client.get(f"/v1/records/{i}", headers=auth_headers[scope]) for i in ids]
        for answer in (listed, *answers):
            assert answer.status_code == 200
            assert words not in answer.get_data(as_text=True), scope
        entries = [a.json for a in answers] + [r for r in listed.json["records"] if r["id"] in ids]
        assert sorted(e["id"] for e in entries) == sorted(ids * 2)
        bodies = dict(zip(ids, (rupture, repair), strict=True))
        for entry in entries:
            assert entry["note_text_withheld"] is True
            expected = bodies[entry["id"]] | {"narrative": PSYCHOTHERAPY_CONTENT_WITHHELD}
            assert entry["record"] == expected


def test_a_rupture_without_narrative_is_returned_whole(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """No narrative, no PSYTHPN label: the read key gets the record as posted."""
    rupture = observation("rupture")
    del rupture["narrative"]
    posted = _post(client, auth_headers, rupture)
    assert posted.status_code == 201, posted.json
    got = client.get(f"/v1/records/{posted.json['records'][0]['id']}", headers=auth_headers["read"])
    assert got.json["note_text_withheld"] is False
    assert got.json["record"] == rupture
