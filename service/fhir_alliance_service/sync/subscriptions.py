"""FHIR Subscriptions: notifications from the clinic's server reach the gate without waiting for
the next poll.

The test FHIR server has no Subscriptions, so this is built against the specifications and tested
by posting notification Bundles to the service's endpoint (``POST /v1/fhir/notifications``),
while polling (``sync/pull.py``) stays the fallback that always runs:

* **R4 Subscriptions Backport IG** (rest-hook): a ``history`` Bundle whose first entry is a
  ``Parameters`` (SubscriptionStatus profile) with ``type`` (``handshake``, ``heartbeat``,
  ``event-notification``, ``query-status``, ``query-event``),
  ``events-since-subscription-start`` and ``notification-event`` parts (``event-number``,
  ``focus``).
* **R5 topic-based**: a ``subscription-notification`` Bundle whose first entry is a
  ``SubscriptionStatus`` (``type``, ``eventsSinceSubscriptionStart``,
  ``notificationEvent[].focus``).

Whatever the payload carries (empty, id-only or full-resource), the focus is **read from the
server** (a notification is a hint, not data to trust), only when it names a Consent or an
Observation within the configured base; it is merged as a pull would merge it. A gap in event
numbers (a lost notification) triggers an incremental pull at once.

:func:`subscription_resource` builds the R4 backport rest-hook Subscription the service
registers, and :func:`register_subscription` (``fhir-alliance subscribe --endpoint URL``) registers
it where the server's CapabilityStatement offers Subscription (a PUT to an id derived from the
endpoint and topic, so registering twice leaves one Subscription), else says that polling stays the
only way changes arrive. It is an operator's step, not automatic: a CapabilityStatement listing
``Subscription`` does not prove the server delivers notifications (the test server stores
Subscriptions and never sends any), and the endpoint must be reachable from the server, which only
the operator knows. Polling runs either way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_alliance.client import FhirClient, ServerCapabilities
from fhir_alliance.errors import InputError, Issue, NotFoundError
from fhir_alliance.terminology import CANONICAL_BASE
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.sync.pull import Puller, PullReport

__all__ = [
    "BACKPORT_STATUS_PROFILE",
    "CONSENT_TOPIC",
    "Notification",
    "NotificationResult",
    "handle_notification",
    "parse_notification",
    "register_subscription",
    "subscription_resource",
    "subscription_support",
]

log = logging.getLogger("fhir_alliance_service.sync.subscriptions")

BACKPORT_STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)
BACKPORT_TOPIC_EXTENSION = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-topic-canonical"
)
BACKPORT_PAYLOAD_EXTENSION = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content"
)
#: The topic the service subscribes to (a server defines its own topics; this is the one asked for).
CONSENT_TOPIC = "http://hl7.org/SubscriptionTopic/consent-change"
NOTIFICATION_TYPES = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)
#: Types whose focus the service merges; anything else in a notification is ignored.
MERGED_TYPES = ("Consent", "Observation")
#: Most events taken from one notification (a bound; the rest is left to the poll).
MAX_EVENTS = 500
#: Store meta name: the newest event number taken, per subscription.
META_EVENTS = "subscription.events."


@dataclass(frozen=True, slots=True)
class Notification:
    """What a notification Bundle says: its type, subscription, event count and the focus
    references of its events (``Type/id``, relative to the server's base)."""

    type: str
    subscription: str | None
    events_since_start: int | None
    focus: tuple[str, ...]
    event_numbers: tuple[int, ...] = ()


@dataclass(slots=True)
class NotificationResult:
    type: str
    read: int = 0
    merged: int = 0
    released: int = 0
    gap: bool = False
    ignored: list[str] = field(default_factory=list)


def _fail(path: str, message: str) -> InputError:
    return InputError(f"invalid notification at {path}", issues=[Issue(path=path, message=message)])


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_notification(bundle: Any) -> Notification:
    """Read a notification Bundle (R4 backport or R5). Raises :class:`InputError` naming the
    field path of what does not fit."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise _fail("resourceType", "expected a Bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        raise _fail("entry", "expected at least one entry: the subscription status first")
    status = entries[0].get("resource")
    if not isinstance(status, Mapping):
        raise _fail("entry[0].resource", "expected the subscription status")
    if bundle.get("type") == "history" and status.get("resourceType") == "Parameters":
        return _backport(status)
    if bundle.get("type") == "subscription-notification" and (
        status.get("resourceType") == "SubscriptionStatus"
    ):
        return _r5(status)
    raise _fail(
        "type",
        "expected an R4 backport (history + Parameters) or R5 (subscription-notification + "
        "SubscriptionStatus) notification",
    )


def _reference(value: Any) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("reference"), str):
        return str(value["reference"])
    return None


def _backport(status: Mapping[str, Any]) -> Notification:
    parameters = status.get("parameter")
    if not isinstance(parameters, list):
        raise _fail("entry[0].resource.parameter", "expected a list")
    kind: str | None = None
    subscription = None
    since = None
    focus: list[str] = []
    numbers: list[int] = []
    for n, parameter in enumerate(parameters):
        if not isinstance(parameter, Mapping):
            raise _fail(f"entry[0].resource.parameter[{n}]", "expected an object")
        name = parameter.get("name")
        if name == "type":
            kind = parameter.get("valueCode")
        elif name == "subscription":
            subscription = _reference(parameter.get("valueReference"))
        elif name == "events-since-subscription-start":
            since = _int(parameter.get("valueString") or parameter.get("valueUnsignedInt"))
        elif name == "notification-event":
            for part in parameter.get("part") or []:
                if not isinstance(part, Mapping):
                    continue
                if part.get("name") == "focus" and (ref := _reference(part.get("valueReference"))):
                    focus.append(ref)
                elif part.get("name") == "event-number":
                    number = _int(part.get("valueString") or part.get("valueUnsignedInt"))
                    if number is not None:
                        numbers.append(number)
    if kind not in NOTIFICATION_TYPES:
        raise _fail("entry[0].resource.parameter.type", "expected a notification type code")
    return Notification(str(kind), subscription, since, tuple(focus), tuple(numbers))


def _r5(status: Mapping[str, Any]) -> Notification:
    kind = status.get("type")
    if kind not in NOTIFICATION_TYPES:
        raise _fail("entry[0].resource.type", "expected a notification type code")
    focus: list[str] = []
    numbers: list[int] = []
    for event in status.get("notificationEvent") or []:
        if not isinstance(event, Mapping):
            continue
        if ref := _reference(event.get("focus")):
            focus.append(ref)
        if (number := _int(event.get("eventNumber"))) is not None:
            numbers.append(number)
    return Notification(
        str(kind),
        _reference(status.get("subscription")),
        _int(status.get("eventsSinceSubscriptionStart")),
        tuple(focus),
        tuple(numbers),
    )


def _local(reference: str, base: str) -> tuple[str, str] | None:
    """``Type/id`` of a focus reference on ``base`` (relative, or absolute within it)."""
    if reference.startswith(("http://", "https://")):
        if not reference.startswith(f"{base}/"):
            return None  # never follow a reference off the configured server
        reference = reference[len(base) + 1 :]
    parts = reference.split("/")
    if len(parts) >= 2 and parts[0] in MERGED_TYPES and parts[1]:
        return parts[0], parts[1]
    return None


def handle_notification(puller: Puller, store: Store, bundle: Any) -> NotificationResult:
    """Take one notification: read each focus from the server and merge it; on a gap in event
    numbers run an incremental pull. Raises :class:`InputError` for a Bundle that does not fit."""
    notification = parse_notification(bundle)
    result = NotificationResult(type=notification.type)
    gap = _gap(store, notification)
    if notification.type == "event-notification":
        client: FhirClient = puller.client
        by_type: dict[str, list[dict[str, Any]]] = {}
        for reference in notification.focus[:MAX_EVENTS]:
            local = _local(reference, client.base.url)
            if local is None:
                result.ignored.append("focus outside the server or of another type")
                continue
            rtype, rid = local
            try:
                by_type.setdefault(rtype, []).append(client.read(rtype, rid))
            except NotFoundError:
                gap = True  # deleted since: the next full listing notices it; pull now
            result.read += 1
        for rtype, resources in by_type.items():
            merged: PullReport = puller.merge(rtype, resources)
            result.merged += merged.merged + merged.withdrawn + merged.unreadable
            result.released += merged.released
    if gap:
        result.gap = True
        report = puller.pull(full_listing=False)
        result.merged += report.merged
        result.released += report.released
    return result


def _gap(store: Store, notification: Notification) -> bool:
    """Whether events were missed since the last notification of this subscription."""
    if notification.subscription is None or notification.events_since_start is None:
        return False
    name = META_EVENTS + notification.subscription[-150:]
    before = store.get_meta(name)
    store.set_meta(name, str(notification.events_since_start))
    if before is None or not before.isdigit():
        return False
    expected = int(before) + len(notification.event_numbers)
    return notification.events_since_start > expected


def subscription_resource(
    endpoint: str, *, topic: str = CONSENT_TOPIC, header: Sequence[str] = ()
) -> dict[str, Any]:
    """The R4 backport rest-hook Subscription the service registers: ``id-only`` payloads (no
    content travels in notifications; the service reads each focus itself)."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "fhir-alliance: consent changes",
        "criteria": topic,
        "_criteria": {"extension": [{"url": BACKPORT_TOPIC_EXTENSION, "valueCanonical": topic}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [{"url": BACKPORT_PAYLOAD_EXTENSION, "valueCode": "id-only"}]
            },
            **({"header": list(header)} if header else {}),
        },
    }


@dataclass(frozen=True, slots=True)
class SubscriptionRegistration:
    """What ``register_subscription`` did: ``registered`` with the server's id and version, or not
    (``reason`` says why; polling stays the only way changes arrive)."""

    registered: bool
    reason: str
    id: str | None = None
    version_id: str | None = None


def subscription_support(capabilities: ServerCapabilities) -> str | None:
    """None when the server offers the Subscription resource with update-as-create (the service
    registers by PUT to a derived id); else why it cannot be registered there, in plain words."""
    subscriptions = capabilities.resources.get("Subscription")
    if subscriptions is None:
        return "the server's CapabilityStatement offers no Subscription resource"
    if not (subscriptions.supports("update") and subscriptions.update_create):
        return "the server does not allow Subscriptions to be written at a chosen id (updateCreate)"
    return None


def subscription_id(endpoint: str, topic: str = CONSENT_TOPIC) -> str:
    """The Subscription's id on the server: the same endpoint and topic always give the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{CANONICAL_BASE}|subscription|{topic}|{endpoint}"))


def register_subscription(
    client: FhirClient,
    endpoint: str,
    *,
    topic: str = CONSENT_TOPIC,
    header: Sequence[str] = (),
    tags: Sequence[Mapping[str, str]] = (),
) -> SubscriptionRegistration:
    """Register (or refresh) the rest-hook Subscription for consent changes on the server behind
    ``client``, notifying ``endpoint`` (the service's ``/v1/fhir/notifications``); ``header`` lines
    go with each notification (e.g. the service's API key). Idempotent."""
    if not endpoint.startswith(("https://", "http://")):
        raise InputError(
            "invalid endpoint", issues=[Issue("endpoint", "expected an absolute http(s) URL")]
        )
    reason = subscription_support(client.capabilities())
    if reason is not None:
        log.info("subscription not registered: %s; polling continues", reason)
        return SubscriptionRegistration(registered=False, reason=reason)
    resource = subscription_resource(endpoint, topic=topic, header=header)
    resource["id"] = subscription_id(endpoint, topic)
    if tags:
        resource["meta"] = {"tag": [dict(t) for t in tags]}
    result = client.update(resource)
    log.info("subscription registered for consent changes")
    return SubscriptionRegistration(
        registered=True,
        reason="registered; polling continues as the fallback",
        id=result.id,
        version_id=result.version_id,
    )
