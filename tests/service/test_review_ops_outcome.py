"""Review fix of the OperationOutcome bodies: an issue without a field path has no ``expression``
(it had ``"expression": []``, and FHIR forbids empty arrays); the OpenAPI schema still fits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhir_alliance_service.api.openapi import OperationOutcomeSchema
from fhir_alliance_service.auth import create_api_key
from flask import Flask
from flask.testing import FlaskClient

from fhir_alliance.errors import (
    AuthError,
    ConflictError,
    FhirAllianceError,
    InputError,
    Issue,
    NotFoundError,
)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(max_body_bytes=64)


def _empty_arrays(value: Any, path: str = "") -> list[str]:
    """Paths of every empty array (and empty object) in a JSON value."""
    if isinstance(value, list):
        if not value:
            return [path or "(root)"]
        return [p for n, item in enumerate(value) for p in _empty_arrays(item, f"{path}[{n}]")]
    if isinstance(value, dict):
        if not value:
            return [path or "(root)"]
        return [p for key, item in value.items() for p in _empty_arrays(item, f"{path}.{key}")]
    return []


def test_an_issue_without_a_path_has_no_expression() -> None:
    assert "expression" not in Issue(path="", message="no").to_fhir()
    assert Issue(path="items.0", message="no").to_fhir()["expression"] == ["items.0"]


@pytest.mark.parametrize(
    "error",
    [
        FhirAllianceError("boom"),
        AuthError("no key"),
        NotFoundError("no such record"),
        ConflictError("already there"),
        InputError("bad input"),
    ],
)
def test_an_error_without_issues_gives_no_empty_array(error: FhirAllianceError) -> None:
    outcome = error.to_operation_outcome()
    assert _empty_arrays(outcome) == []
    assert "expression" not in outcome["issue"][0]
    assert OperationOutcomeSchema().validate(outcome) == {}


def test_mixed_issues_keep_their_paths() -> None:
    outcome = InputError.from_issues(
        [Issue(path="", message="whole record"), Issue(path="kind", message="unknown")]
    ).to_operation_outcome()
    assert [issue.get("expression") for issue in outcome["issue"]] == [None, ["kind"]]
    assert OperationOutcomeSchema().validate(outcome) == {}


def test_http_errors_without_a_path_have_no_empty_arrays(app: Flask, client: FlaskClient) -> None:
    """401, 403, 404, 413 and 415 bodies: valid OperationOutcomes without ``"expression": []``."""
    store = app.extensions["fhir_alliance"].store
    write = {"Authorization": f"Bearer {create_api_key(store, 'writer', ['write'])}"}
    consult = {"Authorization": f"Bearer {create_api_key(store, 'consult', ['consult'])}"}
    responses = {
        401: client.get("/v1/records/0f8fad5b-d9cb-469f-a165-70867728950e"),
        403: client.get("/metrics", headers=consult),
        404: client.get("/nowhere"),
        413: client.post(
            "/v1/records", data="x" * 200, content_type="application/json", headers=write
        ),
        415: client.post("/v1/records", data="{}", content_type="text/plain", headers=write),
    }
    for status, response in responses.items():
        assert response.status_code == status, (status, response.status_code)
        body = response.get_json()
        assert body["resourceType"] == "OperationOutcome"
        assert _empty_arrays(body) == [], (status, body)
        assert OperationOutcomeSchema().validate(body) == {}, status
