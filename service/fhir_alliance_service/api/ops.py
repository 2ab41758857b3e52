"""Operational routes: liveness, readiness, Prometheus metrics and the OpenAPI document.

* ``GET /healthz`` — public; the process answers (no store access).
* ``GET /readyz`` — public; the store answers a ping and, when ``fhir_base_url`` is set, the FHIR
  server answers ``/metadata`` within a short timeout (asked as the library client asks, without
  credentials, at most once in ``READINESS_CACHE_SECONDS``: ``FhirServerLink.ready``); else 503
  with an OperationOutcome naming which part is not ready (never why in detail: errors are logged
  by type only).
* ``GET /metrics`` — scope ``read``; Prometheus text format.
* ``GET /openapi.json`` — scope ``read``: the document describes no data, but keeping it behind a
  key keeps the API surface of a clinic's deployment private by default, like everything else.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from fhir_alliance.errors import Issue
from fhir_alliance_service.app import current_service
from fhir_alliance_service.auth import public, require_scope
from fhir_alliance_service.errors import operation_outcome, outcome_response, store_free
from fhir_alliance_service.metrics import render_metrics
from fhir_alliance_service.sync.target import READINESS_TIMEOUT_SECONDS

__all__ = ["READINESS_TIMEOUT_SECONDS", "bp"]

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
@public
@store_free
def healthz() -> Response:
    """---
    get:
      summary: Liveness (public; the process answers)
      security: []
      responses:
        200:
          description: alive
          content:
            application/json:
              schema: StatusSchema
    """
    return jsonify(status="ok")


@bp.get("/readyz")
@public
def readyz() -> Response:
    """---
    get:
      summary: Readiness (public; store and FHIR server reachable)
      security: []
      responses:
        200:
          description: ready
          content:
            application/json:
              schema: ReadinessSchema
        503:
          description: not ready
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    service = current_service()
    checks = {"store": "ok"}
    try:
        service.store.ping()
    except Exception as exc:  # any failure of the database means "not ready", never a 500
        log.warning("store not reachable", extra={"error_type": type(exc).__name__})
        checks["store"] = "unavailable"
    if service.settings.fhir_base_url:
        ready = service.fhir.ready()
        checks["fhir_server"] = "ok" if ready else "unavailable"
    failing = sorted(name for name, state in checks.items() if state != "ok")
    if failing:
        issues = [
            Issue(path="", message=f"{name} is not reachable", code="transient") for name in failing
        ]
        return outcome_response(503, operation_outcome(issues), {"Retry-After": "5"})
    return jsonify(status="ready", checks=checks)


@bp.get("/metrics")
@require_scope("read")
def metrics() -> Response:
    """---
    get:
      summary: Prometheus metrics (text format)
      responses:
        200:
          description: metrics
          content:
            text/plain:
              schema:
                type: string
    """
    return Response(render_metrics(current_service().store), content_type=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
@require_scope("read")
def openapi_document() -> Response:
    """---
    get:
      summary: This API's OpenAPI 3 document
      responses:
        200:
          description: the document
          content:
            application/json:
              schema:
                type: object
    """
    from fhir_alliance_service.api.openapi import openapi_spec

    return jsonify(openapi_spec())
