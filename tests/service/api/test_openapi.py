"""Tests of the OpenAPI document: valid OpenAPI 3, complete, and built from the library's schemas."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
from fhir_alliance_service.api.openapi import is_api_rule
from fhir_alliance_service.auth import PUBLIC, SCOPES, declared_scope, grants
from flask import Flask
from flask.testing import FlaskClient

# schemathesis (a dev dependency, pinned <5) ships the official OpenAPI 3.0 meta-schema.
from schemathesis.specs.openapi.definitions import OPENAPI_30

from fhir_alliance.schemas.consent import ConsentRecordSchema
from fhir_alliance.schemas.observations import InstrumentAdministrationSchema

VALIDATOR = jsonschema_rs.Draft4Validator(OPENAPI_30)


@pytest.fixture
def document(client: FlaskClient, auth_headers: dict[str, dict[str, str]]) -> dict[str, Any]:
    response = client.get("/openapi.json", headers=auth_headers["read"])
    assert response.status_code == 200
    doc: dict[str, Any] = response.json
    return doc


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method.upper()): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }


def test_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    """The served document validates against the OpenAPI 3.0 meta-schema."""
    assert document["openapi"].startswith("3.0")
    errors = [str(e) for e in VALIDATOR.iter_errors(document)]
    assert errors == []


def test_request_bodies_offer_every_content_type_the_api_takes(document: dict[str, Any]) -> None:
    """Every body the API reads is taken as application/json or application/fhir+json (415
    otherwise; ``api/body.py``); the document offered only application/json, so a client built
    from it (or the fuzzing) never sent what a FHIR server sends."""
    from fhir_alliance_service.api.body import JSON_TYPES

    bodies = {
        f"{method} {path}": sorted(operation["requestBody"]["content"])
        for (path, method), operation in _operations(document).items()
        if "requestBody" in operation
    }
    assert "POST /v1/fhir/notifications" in bodies
    assert "POST /cds-services/patient-consent-consult" in bodies
    wrong = {where: types for where, types in bodies.items() if types != sorted(JSON_TYPES)}
    assert not wrong, f"request bodies with other content types than the API takes: {wrong}"


def test_validator_rejects_a_broken_document(document: dict[str, Any]) -> None:
    """The meta-schema check is real: the same document without ``info`` is invalid."""
    broken = {k: v for k, v in document.items() if k != "info"}
    assert not VALIDATOR.is_valid(broken)


def test_every_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    """Every rule and method of app.url_map (but HEAD/OPTIONS and the console's HTML pages) is an
    operation in the document."""
    operations = _operations(document)
    for rule in app.url_map.iter_rules():
        if not is_api_rule(rule.endpoint):
            assert not any(path.startswith("/console") for path, _ in operations)
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method) in operations, (path, method)


def test_the_notification_route_names_every_scope_that_opens_it(document: dict[str, Any]) -> None:
    """POST /v1/fhir/notifications needs ``notify``, and says that ``write`` and ``admin`` keys
    (which include it) are accepted too: a reader of the document does not conclude that the
    write key a Subscription already carries stopped working."""
    operation = _operations(document)[("/v1/fhir/notifications", "POST")]
    assert operation["x-required-scope"] == "notify"
    assert operation["x-accepted-scopes"] == ["admin", "notify", "write"]
    consult = _operations(document)[("/cds-services/patient-consent-consult", "POST")]
    assert consult["x-accepted-scopes"] == ["consult"]


def test_security_follows_declared_scopes(app: Flask, document: dict[str, Any]) -> None:
    """Public routes say ``security: []``; every other operation names the key schemes and its scope."""
    operations = _operations(document)
    for rule in filter(lambda r: is_api_rule(r.endpoint), app.url_map.iter_rules()):
        scope = declared_scope(app.view_functions[rule.endpoint])
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operation = operations[(path, method)]
            if scope == PUBLIC:
                assert operation["security"] == []
            else:
                assert {"bearerKey": []} in operation["security"]
                assert operation["x-required-scope"] == scope
                assert operation["x-accepted-scopes"] == sorted(
                    s for s in SCOPES if grants({s}, scope)
                )
                assert "401" in operation["responses"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["headerKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_record_bodies_reference_the_library_schemas(document: dict[str, Any]) -> None:
    """POST /v1/records and /v1/consents take the library's schemas, by reference."""
    for path, expected in (
        ("/v1/records", "InstrumentAdministration"),
        ("/v1/consents", "ConsentRecord"),
    ):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        refs = re.findall(r"#/components/schemas/(\w+)", str(body["schema"]))
        assert expected in refs, (path, refs)


@pytest.mark.parametrize(
    ("component", "schema"),
    [
        ("ConsentRecord", ConsentRecordSchema),
        ("InstrumentAdministration", InstrumentAdministrationSchema),
    ],
)
def test_components_are_generated_from_marshmallow(
    document: dict[str, Any], component: str, schema: type
) -> None:
    """A component's properties and required list are the marshmallow schema's fields."""
    generated = document["components"]["schemas"][component]
    fields = schema().fields
    assert set(generated["properties"]) == {f.data_key or name for name, f in fields.items()}
    assert set(generated["required"]) == {
        f.data_key or name for name, f in fields.items() if f.required
    }


def test_errors_are_documented_as_operation_outcomes(document: dict[str, Any]) -> None:
    """Every operation's default response is the OperationOutcome schema."""
    for key, operation in _operations(document).items():
        default = operation["responses"]["default"]["content"]["application/fhir+json"]
        assert default["schema"] == {"$ref": "#/components/schemas/OperationOutcome"}, key


def test_openapi_needs_read_scope(client: FlaskClient) -> None:
    """The document is behind a key like everything but the health checks."""
    assert client.get("/openapi.json").status_code == 401
