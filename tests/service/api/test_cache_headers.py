"""Answers of the API carry patient data: no cache may keep them, and none is read as another type.

A shared cache (a reverse proxy or an organisation's TLS-inspecting proxy) keeps a ``200`` to a
``GET`` that says nothing about caching (Varnish for two minutes by default), and only a request
with ``Authorization`` makes it refrain: one with ``X-API-Key`` does not. It would then give the
next asker of the same URL, who needs no key, the record it kept.
"""

from __future__ import annotations

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.service.usecases.payloads import observation, plain_sharing

Headers = dict[str, dict[str, str]]


def _uncacheable(answer: TestResponse) -> None:
    assert answer.headers.get("Cache-Control") == "no-store", answer.headers
    assert answer.headers.get("X-Content-Type-Options") == "nosniff", answer.headers


def test_answers_with_patient_data_are_never_stored_by_a_cache(
    client: FlaskClient, auth_headers: Headers, api_keys: dict[str, str]
) -> None:
    """A record, a patient's records, a consent, a sync status and a decision read with either
    key header answer ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``, and
    so does the intake's answer."""
    posted = client.post(
        "/v1/records", json=[observation("srs-administration")], headers=auth_headers["write"]
    )
    _uncacheable(posted)
    record_id = posted.json["records"][0]["id"]
    consent = client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"])
    _uncacheable(consent)
    consent_id = consent.json["records"][0]["id"]
    paths = (
        f"/v1/records/{record_id}",
        f"/v1/records/{record_id}/status",
        "/v1/patients/Patient/p1/records",
        f"/v1/consents/{consent_id}",
        "/v1/patients/Patient/p1/decision?recipient=Organization/ehr&purpose=TREAT",
    )
    for headers in (auth_headers["read"], {"X-API-Key": api_keys["read"]}):
        for path in paths:
            answer = client.get(path, headers=headers)
            assert answer.status_code == 200, (path, answer.json)
            _uncacheable(answer)


def test_error_answers_and_operational_routes_are_never_stored_either(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """An OperationOutcome (401, 404, 422), the health checks and the metrics answer
    ``no-store`` too: one rule for every answer the API gives."""
    for answer in (
        client.get("/v1/records/0f8fad5b-d9cb-469f-a165-70867728950e"),
        client.get(
            "/v1/records/0f8fad5b-d9cb-469f-a165-70867728950e", headers=auth_headers["read"]
        ),
        client.post("/v1/records", json={"kind": "nonsense"}, headers=auth_headers["write"]),
        client.get("/healthz"),
        client.get("/metrics", headers=auth_headers["read"]),
        client.get("/no/such/route"),
    ):
        _uncacheable(answer)
