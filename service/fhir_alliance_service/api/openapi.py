"""The OpenAPI 3 document of the service, generated with apispec from the app's routes and the
same marshmallow schemas the library and the views use; served at ``/openapi.json``.

Every rule in ``app.url_map`` (but the clinic console's pages) becomes an operation: the path and
its parameters come from the rule, ``security`` from the scope the view declared
(``auth.require_scope``; ``x-required-scope``, and ``x-accepted-scopes``: every scope whose keys
it lets in), the summary from the docstring's first line. A view adds the rest in one of two ways:

* YAML after a ``---`` line in its docstring (apispec's convention; schema names resolve through
  marshmallow's class registry, e.g. ``schema: OperationOutcomeSchema``), or
* the :func:`describe` decorator: ``@describe(body=[SchemaA, SchemaB], query=PageQuerySchema,
  response=EnvelopeSchema)``.

Errors are OperationOutcomes; their schema is :class:`OperationOutcomeSchema`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from apispec.yaml_utils import load_operations_from_docstring
from flask import Flask, current_app
from marshmallow import Schema, fields, validate

from fhir_alliance._version import __version__
from fhir_alliance.schemas.common import IdentifierField
from fhir_alliance.terminology import PURPOSE_OF_USE_CODES
from fhir_alliance_service.api.body import JSON_TYPES
from fhir_alliance_service.auth import PUBLIC, SCOPES, declared_scope, grants

__all__ = [
    "CdsCardsSchema",
    "CdsDiscoverySchema",
    "CdsHookRequestSchema",
    "OperationOutcomeSchema",
    "ReadinessSchema",
    "StatusSchema",
    "build_spec",
    "describe",
    "openapi_spec",
]

OPENAPI_VERSION: Final = "3.0.3"
_FHIR_JSON: Final = "application/fhir+json"
_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerKey": []}, {"headerKey": []}]
_CONVERTER: Final = re.compile(r"<(?:[a-z_]+(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")
View = TypeVar("View", bound=Callable[..., Any])


# -- envelopes of the operational and CDS routes --------------------------------------------------


class _IssueDetailsSchema(Schema):
    text = fields.String()


class _IssueSchema(Schema):
    severity = fields.String(required=True, validate=validate.OneOf(["fatal", "error", "warning"]))
    code = fields.String(required=True)
    details = fields.Nested(_IssueDetailsSchema)
    expression = fields.List(
        fields.String(),
        metadata={"description": "field paths; absent when the issue is not about one field"},
    )


class OperationOutcomeSchema(Schema):
    """Every 4xx and 5xx body: a FHIR OperationOutcome, one issue per field path."""

    resourceType = fields.String(required=True, validate=validate.Equal("OperationOutcome"))
    issue = fields.List(fields.Nested(_IssueSchema), required=True)


class StatusSchema(Schema):
    status = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class _CdsServiceSchema(Schema):
    hook = fields.String(required=True)
    id = fields.String(required=True)
    title = fields.String()
    description = fields.String(required=True)
    prefetch = fields.Dict()


class CdsDiscoverySchema(Schema):
    services = fields.List(fields.Nested(_CdsServiceSchema), required=True)


class _CdsIdentifierSchema(Schema):
    system = fields.String(required=True, validate=validate.Length(min=1))
    value = fields.String(required=True, validate=validate.Length(min=1))


class _CdsCodingSchema(Schema):
    system = fields.String(required=True, validate=validate.Length(min=1))
    code = fields.String(required=True, validate=validate.Length(min=1))


class _CdsContextSchema(Schema):
    patientId = fields.List(
        fields.Nested(_CdsIdentifierSchema), required=True, validate=validate.Length(min=1)
    )
    actor = fields.List(
        fields.Nested(_CdsIdentifierSchema), required=True, validate=validate.Length(min=1)
    )
    purposeOfUse = fields.List(fields.String(validate=validate.OneOf(sorted(PURPOSE_OF_USE_CODES))))
    category = fields.List(fields.Nested(_CdsCodingSchema))
    class_ = fields.List(fields.Nested(_CdsCodingSchema), data_key="class")


class CdsHookRequestSchema(Schema):
    """A LEAP ``patient-consent-consult`` hook request."""

    hook = fields.String(validate=validate.Equal("patient-consent-consult"))
    hookInstance = fields.String()
    context = fields.Nested(_CdsContextSchema, required=True)


class _CdsSourceSchema(Schema):
    label = fields.String(required=True)
    url = fields.String()


class _CdsCardSchema(Schema):
    summary = fields.String(
        required=True, validate=validate.OneOf(["CONSENT_PERMIT", "CONSENT_DENY", "NO_CONSENT"])
    )
    detail = fields.String()
    indicator = fields.String(
        required=True, validate=validate.OneOf(["info", "warning", "critical"])
    )
    source = fields.Nested(_CdsSourceSchema, required=True)
    extension = fields.Dict(
        required=True, metadata={"description": "decision, obligations and basedOn, as LEAP"}
    )


class CdsCardsSchema(Schema):
    cards = fields.List(fields.Nested(_CdsCardSchema), required=True)


# -- describing views -------------------------------------------------------------------------

_DESCRIPTION_ATTRIBUTE: Final = "fhir_alliance_openapi"


def describe(
    *,
    body: type[Schema] | Iterable[type[Schema]] | None = None,
    query: type[Schema] | None = None,
    response: type[Schema] | None = None,
    status: int = 200,
) -> Callable[[View], View]:
    """Document a view's request body (one schema, or several: ``oneOf``, or a list of them),
    query parameters and success response. Apply it under the route decorator."""

    def decorate(view: View) -> View:
        setattr(
            view,
            _DESCRIPTION_ATTRIBUTE,
            {"body": body, "query": query, "response": response, "status": status},
        )
        return view

    return decorate


def _body_schema(body: type[Schema] | Iterable[type[Schema]]) -> dict[str, Any] | type[Schema]:
    if isinstance(body, type):
        return body
    choices: list[Any] = [_ref(s) for s in body]
    one: dict[str, Any] = {"oneOf": choices}
    return {"oneOf": [one, {"type": "array", "items": one, "minItems": 1}]}


def _ref(schema: type[Schema]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{_schema_name(schema)}"}


def _schema_name(schema: Any) -> str:
    resolved = resolve_schema_cls(schema)
    cls = resolved[0] if isinstance(resolved, list) else resolved
    name = cls.__name__.lstrip("_")
    return name.removesuffix("Schema") or name


def _outcome_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_FHIR_JSON: {"schema": "OperationOutcomeSchema"}},
    }


def _operation(rule_methods: str, view: Callable[..., Any], params: list[str]) -> dict[str, Any]:
    docstring = view.__doc__ or ""
    documented = load_operations_from_docstring(docstring).get(rule_methods.lower(), {})
    operation: dict[str, Any] = dict(documented)
    summary = docstring.strip().split("\n", 1)[0].strip()
    if summary and summary != "---":
        operation.setdefault("summary", summary)
    operation.setdefault("operationId", f"{view.__name__}_{rule_methods.lower()}")
    scope = declared_scope(view)
    responses: dict[Any, Any] = dict(operation.get("responses", {}))
    if scope == PUBLIC:
        operation["security"] = []
    else:
        operation["security"] = _SECURITY
        operation["x-required-scope"] = scope or "none (closed)"
        # The scopes whose keys are let in (``admin`` includes ``read`` and ``write``, ``write``
        # includes ``notify``): a reader need not know the implications.
        operation["x-accepted-scopes"] = sorted(s for s in SCOPES if scope and grants({s}, scope))
        responses.setdefault(401, _outcome_response("no valid API key"))
        responses.setdefault(403, _outcome_response("the key lacks the scope"))
    described: Mapping[str, Any] = getattr(view, _DESCRIPTION_ATTRIBUTE, {})
    if described.get("body") is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(described["body"])}},
        }
    if described.get("query") is not None:
        operation.setdefault("parameters", []).append({"in": "query", "schema": described["query"]})
    if described.get("response") is not None:
        responses.setdefault(
            described["status"],
            {
                "description": "success",
                "content": {"application/json": {"schema": described["response"]}},
            },
        )
    if "requestBody" in operation:
        # json_body() takes application/fhir+json as well as application/json (a FHIR server's
        # notification, a QuestionnaireResponse): the document offers both, with one schema.
        content = operation["requestBody"].get("content", {})
        if "application/json" in content:
            for media_type in sorted(JSON_TYPES):
                content.setdefault(media_type, dict(content["application/json"]))
        responses.setdefault(400, _outcome_response("malformed JSON"))
        responses.setdefault(413, _outcome_response("the body is too large"))
        responses.setdefault(415, _outcome_response("not a JSON content type"))
        responses.setdefault(422, _outcome_response("invalid content; issues name field paths"))
    if params:
        responses.setdefault(404, _outcome_response("not found"))
    if not any(str(code).startswith("2") for code in responses):
        responses[200] = {"description": "success"}
    responses.setdefault("default", _outcome_response("an error"))
    operation["responses"] = responses
    return operation


def build_spec(app: Flask) -> APISpec:
    spec = APISpec(
        title="fhir-alliance sync service",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name)],
        info={
            "description": (
                "Alliance records and consents in, consent-gated FHIR sync out. Every error is a "
                "FHIR OperationOutcome. Keys: Authorization: Bearer <key> or X-API-Key."
            )
        },
    )
    marshmallow_plugin = spec.plugins[0]
    assert isinstance(marshmallow_plugin, MarshmallowPlugin)
    marshmallow_plugin.map_to_openapi_type(IdentifierField, "string", None)
    spec.components.security_scheme("bearerKey", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme(
        "headerKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    )
    for schema in _component_schemas():
        spec.components.schema(_schema_name(schema), schema=schema)
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not is_api_rule(rule.endpoint):
            continue
        view = app.view_functions[rule.endpoint]
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        params = list(rule.arguments)
        operations = {
            method.lower(): _operation(method, view, params)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        }
        parameters = [
            {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
            for name in sorted(params)
        ]
        spec.path(path=path, operations=operations, parameters=parameters)
    return spec


def is_api_rule(endpoint: str) -> bool:
    """Whether a route belongs in the document: all but the clinic console's HTML pages
    (``docs/console.md``), which are for browsers, not API clients."""
    return not endpoint.startswith("console.")


def _component_schemas() -> list[type[Schema]]:
    """The library's record schemas (request bodies) and our envelopes, named once."""
    schemas: list[type[Schema]] = [OperationOutcomeSchema]
    try:
        from fhir_alliance_service.api.schemas import RECORD_BODY_SCHEMAS
    except ImportError:  # the records API is not installed in this build
        return schemas
    return schemas + list(RECORD_BODY_SCHEMAS.values())


def _json_numbers(value: Any) -> Any:
    """The document with ``Decimal`` bounds (from marshmallow ``Range`` validators) as JSON numbers,
    not the strings Flask's encoder would make of them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_numbers(v) for v in value]
    return value


def openapi_spec() -> dict[str, Any]:
    """The current app's document as a dict (built once per app and cached)."""
    cached: dict[str, Any] | None = current_app.extensions.get(_DESCRIPTION_ATTRIBUTE)
    if cached is None:
        cached = _json_numbers(build_spec(current_app).to_dict())
        current_app.extensions[_DESCRIPTION_ATTRIBUTE] = cached
    return cached
