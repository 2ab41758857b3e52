"""Bad input on every route that takes a body: a 4xx OperationOutcome naming the field path, the
refused value never echoed, and nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
from fhir_alliance_service.store.interface import Store
from flask import Flask
from flask.testing import FlaskClient

from tests.service.usecases.payloads import (
    observation,
    plain_sharing,
    srs_questionnaire_response,
)

Headers = dict[str, dict[str, str]]
BODY_ROUTES = ["/v1/records", "/v1/consents", "/v1/questionnaire-responses"]
SQL = "x'; DROP TABLE records; --"
SCRIPT = "<script>alert(1)</script>"
TRAVERSAL = "../../etc/passwd"


def _valid_body(url: str) -> dict[str, Any]:
    if url == "/v1/consents":
        return plain_sharing()
    if url == "/v1/questionnaire-responses":
        return srs_questionnaire_response()
    return observation("rupture")


def _nothing_stored(store: Store) -> bool:
    return (
        store.list_records() == []
        and sum(store.counts_by_state().values()) == 0
        and store.list_audit() == []
    )


def _outcome(response: Any, status: int) -> set[str]:
    """Assert an OperationOutcome with ``status``; return the issues' expressions."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.json["resourceType"] == "OperationOutcome"
    return {e for issue in response.json["issue"] for e in issue.get("expression", [])}


@pytest.mark.parametrize("url", BODY_ROUTES)
def test_malformed_json_is_400(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str
) -> None:
    """A truncated JSON body is 400 and says where it broke."""
    response = client.post(
        url,
        data=b'{"kind": "rupture", ',
        headers={**auth_headers["write"], "Content-Type": "application/json"},
    )
    _outcome(response, 400)
    assert "line 1" in response.json["issue"][0]["details"]["text"]
    assert _nothing_stored(store)


@pytest.mark.parametrize("url", BODY_ROUTES)
def test_wrong_content_type_is_415(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str
) -> None:
    """A form-encoded or text body is 415 even when its text is valid JSON."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = client.post(
            url, data=b"{}", headers={**auth_headers["write"], "Content-Type": content_type}
        )
        _outcome(response, 415)
    assert _nothing_stored(store)


@pytest.mark.parametrize("url", BODY_ROUTES)
def test_oversized_body_is_413(
    app: Flask, client: FlaskClient, auth_headers: Headers, store: Store, url: str
) -> None:
    """A body over ``max_body_bytes`` is 413 before it is parsed."""
    limit = app.extensions["fhir_alliance"].settings.max_body_bytes
    body = _valid_body(url)
    body["padding"] = "x" * (limit + 1)
    response = client.post(url, json=body, headers=auth_headers["write"])
    _outcome(response, 413)
    assert _nothing_stored(store)


@pytest.mark.parametrize("url", ["/v1/records", "/v1/consents"])
def test_a_json_value_that_is_no_record_is_422(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str
) -> None:
    """A number, a string, null or an empty list is not a record (or a list of them)."""
    for body in (b"42", b'"rupture"', b"null", b"[]"):
        response = client.post(
            url, data=body, content_type="application/json", headers=auth_headers["write"]
        )
        _outcome(response, 422)
    assert _nothing_stored(store)


@pytest.mark.parametrize(
    ("url", "field", "value", "path"),
    [
        ("/v1/records", "tension", "3", "tension"),
        ("/v1/records", "markers", "topic-shift", "markers"),
        ("/v1/records", "patient", "Patient/example-client", "patient"),
        ("/v1/consents", "status", 1, "status"),
        ("/v1/consents", "date", "last tuesday", "date"),
        ("/v1/questionnaire-responses", "status", ["completed"], "QuestionnaireResponse.status"),
    ],
)
def test_wrong_types_name_the_field(
    client: FlaskClient,
    auth_headers: Headers,
    store: Store,
    url: str,
    field: str,
    value: Any,
    path: str,
) -> None:
    """A field of the wrong JSON type is 422 with that field's path."""
    body = _valid_body(url)
    body[field] = value
    response = client.post(url, json=body, headers=auth_headers["write"])
    assert path in _outcome(response, 422)
    assert _nothing_stored(store)


@pytest.mark.parametrize("url", ["/v1/records", "/v1/consents"])
def test_unknown_fields_are_refused_by_path(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str
) -> None:
    """Unknown fields, top-level and nested, are 422 at their own path (no mass assignment)."""
    body = _valid_body(url)
    body["is_admin"] = True
    body["patient"] = {**body["patient"], "verified": True}
    response = client.post(url, json=[body], headers=auth_headers["write"])
    assert {"0.is_admin", "0.patient.verified"} <= _outcome(response, 422)
    assert _nothing_stored(store)


@pytest.mark.parametrize(
    ("place", "value", "path"),
    [
        ("id", f"https://clinic.example.org/x|{SQL}", "id"),
        ("id", f"{SCRIPT}|1", "id"),
        ("kind", SQL, "kind"),
        ("patient", {"reference": SCRIPT}, "patient.reference"),
        ("patient", {"reference": f"Patient/{TRAVERSAL}"}, "patient.reference"),
        ("patient", {"identifier": f"urn:oid:1.2|{SQL}"}, "patient.identifier"),
        ("encounter", {"reference": TRAVERSAL}, "encounter.reference"),
        ("counterpart", {"reference": f"javascript:{SCRIPT}"}, "counterpart.reference"),
    ],
)
def test_injection_strings_in_identifiers_and_references_are_refused(
    client: FlaskClient,
    auth_headers: Headers,
    store: Store,
    place: str,
    value: Any,
    path: str,
) -> None:
    """SQL, script and path-traversal text where an identifier, kind or reference belongs: 422 at
    that path, the text not echoed, nothing stored."""
    body = observation("rupture")
    body[place] = value
    response = client.post("/v1/records", json=body, headers=auth_headers["write"])
    assert path in _outcome(response, 422)
    text = response.get_data(as_text=True)
    assert "DROP TABLE" not in text and "<script>" not in text and "etc/passwd" not in text
    assert _nothing_stored(store)


def test_injection_text_in_free_text_is_stored_verbatim_and_harmless(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """Free text may hold anything: SQL and script text are stored as given and the store still works."""
    body = observation("rupture")
    body["narrative"] = f"{SQL} {SCRIPT}"
    response = client.post("/v1/records", json=body, headers=auth_headers["write"])
    assert response.status_code == 201
    [entry] = response.json["records"]
    stored = store.get_record(entry["id"])
    assert stored is not None and stored.body["narrative"] == f"{SQL} {SCRIPT}"
    assert len(store.list_records()) == 1
    got = client.get(f"/v1/records/{entry['id']}", headers=auth_headers["read"])
    assert got.mimetype == "application/json"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/records/..%2F..%2Fetc%2Fpasswd",
        "/v1/records/%27%20OR%20%271%27%3D%271",
        "/v1/records/..%2F..%2Fetc%2Fpasswd/status",
        "/v1/consents/%3Cscript%3E",
    ],
)
def test_hostile_record_ids_in_the_path_are_404(
    client: FlaskClient, auth_headers: Headers, path: str
) -> None:
    """Ids that are no UUID name no record: 404, the id not echoed."""
    response = client.get(path, headers=auth_headers["read"])
    _outcome(response, 404)
    text = response.get_data(as_text=True)
    assert "passwd" not in text and "script" not in text and "OR" not in text


@pytest.mark.parametrize(
    "patient", ["..%2F..%2Fetc%2Fpasswd", "Patient%2F1%27%20OR%20%271%27%3D%271", "%3Cscript%3E"]
)
def test_hostile_patient_refs_in_the_path_are_422(
    client: FlaskClient, auth_headers: Headers, patient: str
) -> None:
    """A patient path that is neither Type/id nor system|value is 422 at ``patient``."""
    response = client.get(f"/v1/patients/{patient}/records", headers=auth_headers["read"])
    assert _outcome(response, 422) == {"patient"}


def test_hostile_revoke_targets_and_bodies(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """Revoke of a hostile id is 404; a revoke body with a script reference is 422 at ``by.reference``."""
    missing = client.post(
        "/v1/consents/..%2F..%2Fx/revoke",
        json={"at": "2025-05-01T00:00:00+00:00"},
        headers=auth_headers["write"],
    )
    _outcome(missing, 404)
    [c] = client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"]).json[
        "records"
    ]
    response = client.post(
        f"/v1/consents/{c['id']}/revoke",
        json={"at": "2025-05-01T00:00:00+00:00", "by": {"reference": SCRIPT}},
        headers=auth_headers["write"],
    )
    assert _outcome(response, 422) == {"by.reference"}
    stored = store.get_record(c["id"])
    assert stored is not None and (stored.version, stored.body["status"]) == (1, "active")
