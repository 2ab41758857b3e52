"""CDS Hooks consent consult, LEAP-compatible, answered from the consents stored here.

* ``GET /cds-services`` — discovery (scope ``consult``): the one ``patient-consent-consult``
  service.
* ``POST /cds-services/patient-consent-consult`` — scope ``consult``: a LEAP hook request (or just
  its ``context``) → one LEAP card (``CONSENT_PERMIT`` / ``CONSENT_DENY`` / ``NO_CONSENT``), using
  the library's ``request_from_hook`` and ``card_response``. The consult is about "now" and the
  action ``access`` (LEAP's hook carries neither). Consents combine deny-overrides, the engine's
  default; see ``docs/consent-decisions.md`` for where we differ from LEAP.

Deny by default: while any stored consent of the patient cannot be read, the card says
``CONSENT_DENY``, never ``NO_CONSENT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from flask import Blueprint, Response, current_app, jsonify

from fhir_alliance.consent import ConsentDecision, DecisionOutcome
from fhir_alliance.consent.cds_hooks import HOOK, card_response, request_from_hook
from fhir_alliance.errors import InputError, Issue
from fhir_alliance_service.api.body import json_body
from fhir_alliance_service.app import current_service
from fhir_alliance_service.auth import require_scope
from fhir_alliance_service.metrics import decision_counter
from fhir_alliance_service.usecases.consents import engine_for_patients, patient_key

__all__ = ["SERVICE_ID", "bp"]

bp = Blueprint("cds", __name__)
SERVICE_ID: Final = HOOK
_DESCRIPTION: Final = (
    "Decides from the patient's consents stored in fhir-alliance whether the actors may access the "
    "patient's data for the purposes given; answers with one LEAP-compatible card."
)


@bp.get("/cds-services")
@require_scope("consult")
def discovery() -> Response:
    """---
    get:
      summary: CDS Hooks discovery
      responses:
        200:
          description: the services offered
          content:
            application/json:
              schema: CdsDiscoverySchema
    """
    service = {
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "Patient consent consult",
        "description": _DESCRIPTION,
        "prefetch": {},
    }
    return jsonify(services=[service])


def _decide(data: Mapping[str, Any]) -> ConsentDecision:
    request = request_from_hook(data, at=datetime.now(UTC))
    store = current_service().store
    keys = sorted({patient_key(ref) for ref in request.patient})
    consents = engine_for_patients(store, keys)
    decision = consents.engine.decide(request)
    unreadable = consents.unreadable
    if unreadable:
        return ConsentDecision(
            outcome=DecisionOutcome.DENY,
            combining=decision.combining,
            notes=("a stored consent of this patient could not be read: denied until fixed",),
        )
    return decision


@bp.post(f"/cds-services/{SERVICE_ID}")
@require_scope("consult")
def consult() -> Response:
    """---
    post:
      summary: Consent consult (CDS Hooks patient-consent-consult, LEAP-compatible)
      requestBody:
        required: true
        content:
          application/json:
            schema: CdsHookRequestSchema
      responses:
        200:
          description: one card with the decision
          content:
            application/json:
              schema: CdsCardsSchema
        400:
          description: malformed JSON
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
        422:
          description: a hook request that does not fit; issues name the field paths
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    data = json_body()
    if not isinstance(data, Mapping):
        raise InputError(
            "invalid hook request", issues=[Issue(path="", message="expected a JSON object")]
        )
    decision = _decide(data)
    decision_counter(decision.outcome.value).inc()
    settings = current_service().settings
    card = card_response(
        decision, source_label=settings.cds_source_label, source_url=settings.cds_source_url
    )
    return _json_response(card)


def _json_response(value: Mapping[str, Any]) -> Response:
    """``value`` as a JSON response, serialised by orjson: Flask's ``jsonify`` (the json module)
    was about a tenth of a consult's time. Same JSON (UTF-8, not ASCII escapes; compact, one
    newline at the end); a value orjson cannot write goes to ``jsonify`` as before."""
    try:
        body = orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return jsonify(value)
    response: Response = current_app.response_class(body, mimetype="application/json")
    return response
