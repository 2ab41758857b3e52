"""Tests of the one error path: every 4xx/5xx is an OperationOutcome, and a refused request stores
nothing. Bodies go to POST /v1/records (the intake route) and the CDS consult."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from fhir_alliance_service.api.body import MAX_DEPTH
from fhir_alliance_service.auth import require_scope
from fhir_alliance_service.store.interface import Store
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import ValidationError
from werkzeug.test import TestResponse

from fhir_alliance.errors import TransientServerError

RECORDS = "/v1/records"
SRS = {
    "kind": "instrument-administration",
    "id": "https://clinic.example.org/alliance-records|srs-err-1",
    "instrument": "srs",
    "patient": {"reference": "Patient/example-client"},
    "effective": "2026-11-20T15:50:00+00:00",
    "rater": {"role": "client"},
    "responses": {"1": 9.1, "2": 8.7, "3": 8.0, "4": 9.2},
}


def _outcome(response: TestResponse, status: int) -> dict[str, Any]:
    """Assert ``response`` is a ``status`` OperationOutcome; return it."""
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/fhir+json"
    outcome: dict[str, Any] = response.json
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"], outcome
    assert b"Traceback" not in response.data
    return outcome


def _nothing_stored(store: Store) -> None:
    assert store.list_records() == []
    assert sum(store.counts_by_state().values()) == 0
    assert store.list_audit() == []


def _post(
    client: FlaskClient, headers: dict[str, str], data: bytes | str, **kw: Any
) -> TestResponse:
    kw.setdefault("content_type", "application/json")
    return client.post(RECORDS, data=data, headers=headers, **kw)


def test_unknown_route_is_404_outcome(client: FlaskClient) -> None:
    """An unknown path answers a not-found OperationOutcome."""
    outcome = _outcome(client.get("/v1/nothing-here"), 404)
    assert outcome["issue"][0]["code"] == "not-found"


def test_wrong_method_is_405_outcome_with_allow(client: FlaskClient) -> None:
    """A known path with the wrong method answers 405 with Allow."""
    response = client.delete(RECORDS)
    _outcome(response, 405)
    assert "POST" in response.headers["Allow"]


def test_valid_record_is_accepted(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """The control case: the body used below, unbroken, is stored (so refusals are real)."""
    response = _post(client, auth_headers["write"], json.dumps(SRS))
    assert response.status_code == 201, response.json
    assert len(store.list_records()) == 1


@pytest.mark.parametrize(
    ("body", "expected_text", "expected_path"),
    [
        (b'{"kind": "instrument-administration",\n "id": }', "line 2 column", None),
        (b'{"kind": "a", "kind": "b"}', "duplicate", "kind"),
        (
            b'{"patient": {"reference": "P/1", "reference": "P/2"}}',
            "duplicate",
            "patient.reference",
        ),
        (b'{"responses": {"1": NaN}}', "NaN", None),
        (b'{"responses": {"1": Infinity}}', "Infinity", None),
        (b'{"responses": {"1": ' + b"9" * 5000 + b"}}", "longer than", None),
        (b'{"responses": {"1": 1e999}}', "too large", None),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested", None),
        (b"[" * 100_000, "nested", None),
        (b'{"id": "\xff\xfe"}', "UTF-8", None),
        (b"", "empty", None),
        (b"{} {}", "line 1 column 4", None),
    ],
    ids=[
        "malformed",
        "duplicate-key",
        "duplicate-nested-key",
        "nan",
        "infinity",
        "huge-int",
        "overflow-float",
        "too-deep",
        "absurdly-deep",
        "not-utf8",
        "empty",
        "extra-data",
    ],
)
def test_bad_json_is_400_and_stores_nothing(
    client: FlaskClient,
    store: Store,
    auth_headers: dict[str, dict[str, str]],
    body: bytes,
    expected_text: str,
    expected_path: str | None,
) -> None:
    """Malformed or hostile JSON answers 400 saying where, never a traceback; nothing is stored."""
    outcome = _outcome(_post(client, auth_headers["write"], body), 400)
    issue = outcome["issue"][0]
    assert expected_text in issue["details"]["text"]
    if expected_path is not None:
        assert issue["expression"] == [expected_path]
    _nothing_stored(store)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_wrong_content_type_is_415(
    client: FlaskClient,
    store: Store,
    auth_headers: dict[str, dict[str, str]],
    content_type: str | None,
) -> None:
    """Only application/json and application/fhir+json bodies are read."""
    response = client.post(
        RECORDS, data=json.dumps(SRS), headers=auth_headers["write"], content_type=content_type
    )
    _outcome(response, 415)
    _nothing_stored(store)


def test_fhir_json_content_type_is_accepted(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """application/fhir+json (with a charset) is read like application/json."""
    response = _post(
        client,
        auth_headers["write"],
        json.dumps(SRS),
        content_type="application/fhir+json; charset=utf-8",
    )
    assert response.status_code == 201


def test_oversized_body_with_length_is_413(
    app: Flask, client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A body over max_body_bytes answers 413 before it is parsed."""
    limit = app.extensions["fhir_alliance"].settings.max_body_bytes
    body = json.dumps({**SRS, "padding": "x" * limit})
    outcome = _outcome(_post(client, auth_headers["write"], body), 413)
    assert outcome["issue"][0]["code"] == "too-costly"
    _nothing_stored(store)


def test_oversized_chunked_body_without_length_is_413(
    app: Flask, client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Without Content-Length (chunked, as gunicorn passes it on) the cap still holds."""
    limit = app.extensions["fhir_alliance"].settings.max_body_bytes
    body = json.dumps({**SRS, "padding": "x" * limit}).encode()
    response = client.post(
        RECORDS,
        input_stream=io.BytesIO(body),
        headers={**auth_headers["write"], "Transfer-Encoding": "chunked"},
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    _outcome(response, 413)
    _nothing_stored(store)


def test_schema_error_is_422_naming_each_path(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Content that does not fit the schema answers 422 with one issue per bad field path."""
    body = {**SRS, "instrument": 7, "unexpected": "x"}
    outcome = _outcome(_post(client, auth_headers["write"], json.dumps(body)), 422)
    paths = {p for issue in outcome["issue"] for p in issue["expression"]}
    assert {"instrument", "unexpected"} <= paths
    _nothing_stored(store)


def test_injection_in_an_identifier_is_refused_by_path(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """SQL and markup in a business identifier are a 422 naming ``id``; nothing is stored."""
    hostile = "x'); DROP TABLE records; --|<script>alert(1)</script>"
    response = _post(client, auth_headers["write"], json.dumps({**SRS, "id": hostile}))
    outcome = _outcome(response, 422)
    assert ["id"] in [issue["expression"] for issue in outcome["issue"]]
    _nothing_stored(store)


def test_injection_in_free_text_is_stored_verbatim(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """SQL and markup in free text are data, not code: stored verbatim, the database intact."""
    hostile = "'); DROP TABLE records; -- <script>alert(1)</script>"
    rupture = {
        "kind": "rupture",
        "id": "https://clinic.example.org/alliance-records|rupture-err-1",
        "rupture_type": "withdrawal",
        "markers": ["minimal-response"],
        "tension": 3,
        "repaired": False,
        "patient": {"reference": "Patient/example-client"},
        "effective": "2026-11-20T15:30:00+00:00",
        "rater": {"role": "client"},
        "narrative": hostile,
    }
    response = _post(client, auth_headers["write"], json.dumps(rupture))
    assert response.status_code == 201, response.json
    (stored,) = store.list_records()
    assert stored.body["narrative"] == hostile
    assert _post(client, auth_headers["write"], json.dumps(SRS)).status_code == 201
    assert len(store.list_records()) == 2


def test_one_bad_record_in_a_batch_stores_none(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """All or nothing: a list with one bad record stores none of the good ones."""
    bad = {**SRS, "id": "https://clinic.example.org/alliance-records|srs-err-2", "rater": 1}
    outcome = _outcome(_post(client, auth_headers["write"], json.dumps([SRS, bad])), 422)
    assert any(p.startswith("1.") for i in outcome["issue"] for p in i["expression"])
    _nothing_stored(store)


@pytest.fixture
def failing_app(app: Flask) -> Flask:
    """The app with three extra routes that raise the errors no real route should."""

    @app.get("/test/crash")
    @require_scope("read")
    def crash() -> str:
        raise RuntimeError("Jane Doe, MRN 000123, token abc")

    @app.get("/test/validation")
    @require_scope("read")
    def validation() -> str:
        raise ValidationError({"items": {"0": {"value": ["Not a valid number."]}}})

    @app.get("/test/upstream")
    @require_scope("read")
    def upstream() -> str:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": "Jane Doe"}],
        }
        raise TransientServerError("server said 503", status=503, outcome=outcome)

    return app


def test_unexpected_exception_is_500_without_detail(
    failing_app: Flask, auth_headers: dict[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A crash answers a bare 500 OperationOutcome; the log has the request id and the exception
    type, never its message."""
    caplog.set_level(logging.DEBUG)
    response = failing_app.test_client().get("/test/crash", headers=auth_headers["read"])
    outcome = _outcome(response, 500)
    assert outcome["issue"][0]["details"]["text"] == "internal error"
    assert b"Jane" not in response.data
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "the crash is logged"
    assert errors[0].__dict__["error_type"] == "RuntimeError"
    assert errors[0].__dict__["request_id"] == response.headers["X-Request-ID"]
    assert "Jane" not in caplog.text
    assert all(r.exc_info is None for r in errors)


def test_marshmallow_validation_error_is_422_by_path(
    failing_app: Flask, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A marshmallow ValidationError escaping a view answers 422 with the dotted field path."""
    response = failing_app.test_client().get("/test/validation", headers=auth_headers["read"])
    outcome = _outcome(response, 422)
    assert outcome["issue"][0]["expression"] == ["items.0.value"]


def test_fhir_server_error_is_502_without_diagnostics(
    failing_app: Flask, auth_headers: dict[str, dict[str, str]]
) -> None:
    """An error from the FHIR server answers 502; its diagnostics are not passed on."""
    response = failing_app.test_client().get("/test/upstream", headers=auth_headers["read"])
    _outcome(response, 502)
    assert b"Jane" not in response.data


@pytest.mark.parametrize("key", ["²", "x¹²", "٣", "Ⅻ"])
def test_unknown_field_with_unicode_digits_is_422(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]], key: str
) -> None:
    """Unknown fields named with superscript or other non-ASCII digits are a 422 naming them, not a
    crash while sorting the issue paths (found by the fuzz test)."""
    outcome = _outcome(_post(client, auth_headers["write"], json.dumps({**SRS, key: 1})), 422)
    assert [key] in [issue["expression"] for issue in outcome["issue"]]
    _nothing_stored(store)
