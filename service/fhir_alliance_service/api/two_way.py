"""The /v1 routes of the two-way sync: subscription notifications from the clinic's FHIR server,
and patient aliases. Thin: parse → call a use case → render.

* ``POST /v1/fhir/notifications`` (scope ``notify``, which ``write`` and ``admin`` include): a
  FHIR Subscriptions notification Bundle (R4 backport or R5); each focus is read from the server
  and merged (``sync/subscriptions.py``). Bounded per key (``NotificationGate``): 429 with
  ``Retry-After`` beyond ``max_notifications_per_minute``; 202 when coalesced into a re-read of
  the same key that is running; 413 beyond ``MAX_EVENTS`` events.
  422 for a Bundle that is no notification; 409 when no FHIR server is configured; 503 when it
  cannot be reached (or is unavailable for now); 502 when its answer is refused (not FHIR, an
  error, a link off the server, over the client's size or page bounds: never a 413, which would
  blame the notification). A pull the notification runs reports its own failure (``Puller.pull``).
* ``POST /v1/patients/aliases`` (scope ``admin``): ``{"patient": …, "alias": …}`` files a second
  key of the same patient (``usecases/consents.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, g, jsonify
from marshmallow import Schema, fields

from fhir_alliance.schemas.common import StrictSchema, load_or_raise
from fhir_alliance_service.api.body import json_body
from fhir_alliance_service.api.openapi import describe
from fhir_alliance_service.auth import require_scope
from fhir_alliance_service.errors import ApiError
from fhir_alliance_service.usecases.consents import register_patient_alias

__all__ = [
    "NotificationBundleSchema",
    "NotificationResultSchema",
    "PatientAliasSchema",
    "PatientKeysSchema",
    "blueprint",
]

blueprint = Blueprint("two_way", __name__, url_prefix="/v1")


class NotificationBundleSchema(Schema):
    """A FHIR Bundle (``history`` with a backport SubscriptionStatus ``Parameters`` first, or
    R5 ``subscription-notification``); read by ``sync/subscriptions.py``, not by this schema."""

    resourceType = fields.String(required=True)
    type = fields.String(required=True)
    entry = fields.List(fields.Dict(), required=True)


class NotificationResultSchema(Schema):
    type = fields.String()
    read = fields.Integer()
    merged = fields.Integer()
    released = fields.Integer()
    gap = fields.Boolean()
    #: Only in a 202: a re-read for the same key was running and reads this one's focus after.
    coalesced = fields.Boolean()


class PatientAliasSchema(StrictSchema):
    """``patient``: the key records are filed under; ``alias``: another key of the same patient
    (each ``Patient/<id>`` or ``system|value``)."""

    patient = fields.String(required=True)
    alias = fields.String(required=True)


class PatientKeysSchema(Schema):
    keys = fields.List(fields.String())


def _service() -> Any:
    from fhir_alliance_service.app import current_service

    return current_service()


@blueprint.post("/fhir/notifications")
@require_scope("notify")
@describe(body=NotificationBundleSchema, response=NotificationResultSchema)
def notifications() -> Any:
    """Take a Subscriptions notification: each focus Consent/Observation is read from the
    server and merged; a gap in event numbers triggers a pull.

    ---
    post:
      responses:
        202:
          description: a re-read for the same key was running; this notification's focus (and
            the pull its gap asks for) is read by it, right after its own (``coalesced``)
          content:
            application/json:
              schema: NotificationResultSchema
        409:
          description: no FHIR server is configured (notifications are not taken)
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
        502:
          description: the FHIR server's answer was refused (an error, not FHIR, a link off the
            server, too large)
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
        413:
          description: more events than one notification may carry (the issue names the first
            beyond)
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
        429:
          description: more notifications from this key than max_notifications_per_minute
            (``Retry-After``); its change is still read (the next notification's gap, the
            scheduled pull)
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
        503:
          description: the FHIR server could not be reached
          content:
            application/fhir+json:
              schema: OperationOutcomeSchema
    """
    from fhir_alliance.errors import TransientServerError, TransportError
    from fhir_alliance_service.sync.pull import PASS_ENDING, Puller
    from fhir_alliance_service.sync.subscriptions import (
        notification_work,
        parse_notification,
        run_work,
    )

    service = _service()
    key = g.api_key.key_id  # require_scope let a key in
    wait = service.notifications.admit(key)
    if wait is not None:  # before the body is read: nothing of it is stored or read
        raise ApiError(
            429,
            f"too many notifications from this key: at most "
            f"{service.settings.max_notifications_per_minute} a minute; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    notification = parse_notification(json_body())  # 422 (413) naming the path, first
    if not service.settings.fhir_base_url:
        raise ApiError(409, "no FHIR server is configured: notifications are not taken")
    client = service.fhir.client()  # one per process: its SMART token is reused until it expires
    work, gap = notification_work(service.store, notification, client.base.url)
    puller = Puller(service.settings, service.store, client)
    try:
        result = service.notifications.run(key, work, lambda due: run_work(puller, due))
    except (TransportError, TransientServerError):
        raise ApiError(503, "the FHIR server could not be reached") from None
    except PASS_ENDING as exc:  # the type only: the server's text may carry patient data
        raise ApiError(
            502, f"the FHIR server's answer was refused ({type(exc).__name__})"
        ) from None
    if result is None:  # a re-read of this key is running: it reads this one's work after its own
        return jsonify(
            type=notification.type, read=0, merged=0, released=0, gap=gap, coalesced=True
        ), 202
    return jsonify(
        type=notification.type,
        read=result.read,
        merged=result.merged,
        released=result.released,
        gap=result.gap,
    )


@blueprint.post("/patients/aliases")
@require_scope("admin")
@describe(body=PatientAliasSchema, response=PatientKeysSchema)
def patient_alias() -> Any:
    """File another key of a patient: consents filed under either key count for both, and the
    patient's held records are re-evaluated."""
    data = load_or_raise(PatientAliasSchema(), json_body())
    keys = register_patient_alias(
        _service().store, data["patient"], data["alias"], at=datetime.now(UTC)
    )
    return jsonify(keys=keys)
