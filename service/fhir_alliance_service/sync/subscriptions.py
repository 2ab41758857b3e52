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
Observation within the configured base; it is merged as a pull would merge it, a page of
``FOCUS_PAGE`` resources at a time (no more are held at once). A gap in event numbers (a lost
notification) triggers an incremental pull at once.

**Bounds** (what a leaked ``notify`` key can make the service do; :class:`NotificationGate`, one
per serve process): a notification of more than ``MAX_EVENTS`` events is refused (413 at the path
of the first event beyond); beyond ``max_notifications_per_minute`` per API key a notification is
refused (429 with ``Retry-After``) before anything is stored or read; one arriving while a re-read
of the same key runs is **coalesced** (202): its focus (and any pull its gap asks for) is added to
what is due, and the running re-read reads it right after its own. No consent change is lost by
either: a refused notification's event number is not taken, so the next one admitted sees the gap
and pulls; and the worker's scheduled pull reads every change since its cursor, which only a pull
moves (a notification never does).

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
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fhir_alliance.client import FhirClient, ServerCapabilities
from fhir_alliance.client.links import is_loopback_host
from fhir_alliance.errors import InputError, Issue, LimitExceededError, NotFoundError
from fhir_alliance.terminology import CANONICAL_BASE
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.sync.pull import Puller, PullReport

__all__ = [
    "BACKPORT_STATUS_PROFILE",
    "CONSENT_TOPIC",
    "Notification",
    "NotificationGate",
    "NotificationResult",
    "NotificationWork",
    "handle_notification",
    "notification_work",
    "parse_notification",
    "register_subscription",
    "subscription_resource",
    "run_work",
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
BACKPORT_MAX_COUNT_EXTENSION = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count"
)
#: The topic the service subscribes to (a server defines its own topics; this is the one asked for).
CONSENT_TOPIC = "http://hl7.org/SubscriptionTopic/consent-change"
NOTIFICATION_TYPES = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)
#: Types whose focus the service merges; anything else in a notification is ignored.
MERGED_TYPES = ("Consent", "Observation")
#: Most events one notification may carry (a bound: beyond it the notification is a 413 naming
#: the first event beyond, and nothing of it is read or stored).
MAX_EVENTS = 500
#: Focus resources read before they are merged: at most this many are held in memory at once.
FOCUS_PAGE = 20
#: The window of ``max_notifications_per_minute``, in seconds.
RATE_WINDOW_SECONDS = 60.0
#: Rounds of coalesced work one running re-read takes on after its own; what is still due then
#: waits for the key's next notification (or the scheduled pull, which reads it anyway).
MAX_COALESCED_ROUNDS = 8
#: Store meta name: the newest event number taken, per subscription.
META_EVENTS = "subscription.events."
#: A FHIR id (``[A-Za-z0-9\-\.]{1,64}``); ``.`` and ``..`` are refused besides.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: Most digits of an event count or number (below 2**63).
MAX_DIGITS = 18


@dataclass(frozen=True, slots=True)
class Notification:
    """What a notification Bundle says: its type, subscription, event count and the focus
    references of its events (``Type/id``, relative to the server's base)."""

    type: str
    subscription: str | None
    events_since_start: int | None
    focus: tuple[str, ...]
    event_numbers: tuple[int, ...] = ()
    #: Where each focus reference is in the Bundle (for errors), in the order of ``focus``.
    focus_paths: tuple[str, ...] = ()


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


def _int(value: Any, path: str) -> int | None:
    """A non-negative count or event number (an unsignedInt, or a string of ASCII digits, as the
    backport sends them); None when absent. Raises :class:`InputError` at ``path`` otherwise."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_DIGITS:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS:
        return int(value)
    raise _fail(path, f"expected a non-negative integer of at most {MAX_DIGITS} digits")


def _first(parameter: Mapping[str, Any], *names: str) -> tuple[Any, str]:
    """The first of ``names`` that ``parameter`` has, and its name (the last name if none)."""
    for name in names:
        if parameter.get(name) is not None:
            return parameter[name], name
    return None, names[-1]


def _too_many(path: str) -> LimitExceededError:
    return LimitExceededError(
        f"too many events in one notification at {path}",
        issues=[
            Issue(
                path=path,
                message=f"at most {MAX_EVENTS} events in one notification",
                code="too-costly",
            )
        ],
    )


def _code(value: Any, path: str) -> str:
    if not isinstance(value, str) or value not in NOTIFICATION_TYPES:
        raise _fail(path, "expected a notification type code")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, "expected a list")
    return value


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
    notification: Notification | None = None
    if bundle.get("type") == "history" and status.get("resourceType") == "Parameters":
        notification = _backport(status)
    elif bundle.get("type") == "subscription-notification" and (
        status.get("resourceType") == "SubscriptionStatus"
    ):
        notification = _r5(status)
    if notification is not None:
        for reference, path in zip(notification.focus, notification.focus_paths, strict=True):
            if not reference.startswith(("http://", "https://")):
                _local(reference, "", path)  # a relative Type/id: its shape is checked now
        return notification
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
    paths: list[str] = []
    numbers: list[int] = []
    events = 0
    for n, parameter in enumerate(parameters):
        at = f"entry[0].resource.parameter[{n}]"
        if not isinstance(parameter, Mapping):
            raise _fail(at, "expected an object")
        name = parameter.get("name")
        if name == "notification-event":
            events += 1
            if events > MAX_EVENTS:
                raise _too_many(at)
        if name == "type":
            kind = _code(parameter.get("valueCode"), "entry[0].resource.parameter.type")
        elif name == "subscription":
            subscription = _reference(parameter.get("valueReference"))
        elif name == "events-since-subscription-start":
            value, key = _first(parameter, "valueString", "valueUnsignedInt")
            since = _int(value, f"{at}.{key}")
        elif name == "notification-event":
            for m, part in enumerate(_list(parameter.get("part"), f"{at}.part")):
                if not isinstance(part, Mapping):
                    continue
                if part.get("name") == "focus" and (ref := _reference(part.get("valueReference"))):
                    focus.append(ref)
                    paths.append(f"{at}.part[{m}].valueReference.reference")
                elif part.get("name") == "event-number":
                    value, key = _first(part, "valueString", "valueUnsignedInt")
                    number = _int(value, f"{at}.part[{m}].{key}")
                    if number is not None:
                        numbers.append(number)
    if kind is None:
        raise _fail("entry[0].resource.parameter.type", "expected a notification type code")
    return Notification(kind, subscription, since, tuple(focus), tuple(numbers), tuple(paths))


def _r5(status: Mapping[str, Any]) -> Notification:
    at = "entry[0].resource"
    kind = _code(status.get("type"), f"{at}.type")
    focus: list[str] = []
    paths: list[str] = []
    numbers: list[int] = []
    events = _list(status.get("notificationEvent"), f"{at}.notificationEvent")
    if len(events) > MAX_EVENTS:
        raise _too_many(f"{at}.notificationEvent[{MAX_EVENTS}]")
    for n, event in enumerate(events):
        if not isinstance(event, Mapping):
            continue
        if ref := _reference(event.get("focus")):
            focus.append(ref)
            paths.append(f"{at}.notificationEvent[{n}].focus.reference")
        number = _int(event.get("eventNumber"), f"{at}.notificationEvent[{n}].eventNumber")
        if number is not None:
            numbers.append(number)
    return Notification(
        kind,
        _reference(status.get("subscription")),
        _int(status.get("eventsSinceSubscriptionStart"), f"{at}.eventsSinceSubscriptionStart"),
        tuple(focus),
        tuple(numbers),
        tuple(paths),
    )


def _fhir_id(value: str) -> bool:
    return value not in (".", "..") and FHIR_ID.fullmatch(value) is not None


def _local(reference: str, base: str, path: str = "focus") -> tuple[str, str] | None:
    """``Type/id`` of a focus reference on ``base`` (relative, or absolute within it); None for
    one off the server or of a type not merged. A merged type whose reference is not
    ``Type/<FHIR id>`` (optionally ``/_history/<FHIR id>``) raises :class:`InputError` at
    ``path``: nothing else is ever put into a read's URL."""
    if reference.startswith(("http://", "https://")):
        if not reference.startswith(f"{base}/"):
            return None  # never follow a reference off the configured server
        reference = reference[len(base) + 1 :]
    parts = reference.split("/")
    if parts[0] not in MERGED_TYPES:
        return None
    versioned = len(parts) == 4 and parts[2] == "_history" and _fhir_id(parts[3])
    if (len(parts) == 2 or versioned) and _fhir_id(parts[1]):
        return parts[0], parts[1]
    raise _fail(path, f"expected {parts[0]}/<id> with a FHIR id ([A-Za-z0-9-.], 1 to 64)")


@dataclass(slots=True)
class NotificationWork:
    """What notifications ask to be read: focus resources (``(Type, id)`` on the server, each
    once, in order) and whether an incremental pull is due (a gap, or more focus than one
    notification may name)."""

    focus: dict[tuple[str, str], None] = field(default_factory=dict)
    pull: bool = False
    ignored: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.focus) or self.pull

    def add(self, other: NotificationWork) -> None:
        """Take on ``other`` (coalescing): the same focus is read once; beyond ``MAX_EVENTS``
        focus resources a pull reads them all instead."""
        self.focus.update(other.focus)
        self.pull = self.pull or other.pull
        if len(self.focus) > MAX_EVENTS:
            self.focus.clear()
            self.pull = True


def notification_work(
    store: Store, notification: Notification, base: str
) -> tuple[NotificationWork, bool]:
    """The reads ``notification`` asks for on the server at ``base``, and whether its event
    numbers show a gap (noting its event count: call it only for a notification that is taken).
    Raises :class:`InputError` for a focus of a merged type that is no ``Type/<FHIR id>``."""
    paths = notification.focus_paths or tuple("focus" for _ in notification.focus)
    # every focus checked before anything is stored or read
    locals_ = [
        _local(reference, base, path)
        for reference, path in zip(notification.focus, paths, strict=False)
    ]
    work = NotificationWork()
    if notification.type == "event-notification":
        for local in locals_:
            if local is None:
                work.ignored.append("focus outside the server or of another type")
            else:
                work.focus[local] = None
    gap = _gap(store, notification)
    work.pull = gap
    return work, gap


def run_work(puller: Puller, work: NotificationWork) -> NotificationResult:
    """Read each focus from the server and merge it, ``FOCUS_PAGE`` at a time; a focus gone
    (deleted since) or ``work.pull`` runs an incremental pull after. The result's ``type`` is
    left empty for the caller."""
    result = NotificationResult(type="", ignored=list(work.ignored))
    pull = work.pull
    by_type: dict[str, list[str]] = {}
    for rtype, rid in work.focus:
        by_type.setdefault(rtype, []).append(rid)
    for rtype, ids in by_type.items():
        gone: list[bool] = []
        merged: PullReport = puller.merge_pages(
            rtype, _read_pages(puller.client, rtype, ids, result, gone)
        )
        result.merged += merged.merged + merged.withdrawn + merged.unreadable
        result.released += merged.released
        pull = pull or any(gone)
    if pull:
        result.gap = True
        report = puller.pull(full_listing=False)
        result.merged += report.merged
        result.released += report.released
    return result


def _read_pages(
    client: FhirClient,
    rtype: str,
    ids: Sequence[str],
    result: NotificationResult,
    gone: list[bool],
) -> Iterator[list[dict[str, Any]]]:
    """The focus resources ``rtype/ids``, read from the server ``FOCUS_PAGE`` at a time."""
    page: list[dict[str, Any]] = []
    for rid in ids:
        try:
            page.append(client.read(rtype, rid))
        except NotFoundError:
            gone.append(True)  # deleted since: the next full listing notices it; pull now
        result.read += 1
        if len(page) >= FOCUS_PAGE:
            yield page
            page = []
    if page:
        yield page


def handle_notification(puller: Puller, store: Store, bundle: Any) -> NotificationResult:
    """Take one notification: read each focus from the server and merge it; on a gap in event
    numbers run an incremental pull. Raises :class:`InputError` for a Bundle that does not fit
    (:class:`LimitExceededError` for one of more than ``MAX_EVENTS`` events). No bounds per key:
    the endpoint goes through :class:`NotificationGate`."""
    notification = parse_notification(bundle)
    work, _ = notification_work(store, notification, puller.client.base.url)
    result = run_work(puller, work)
    result.type = notification.type
    return result


@dataclass(slots=True)
class _KeyState:
    window_start: float = 0.0
    taken: int = 0
    running: bool = False
    due: NotificationWork = field(default_factory=NotificationWork)


class NotificationGate:
    """One serve process's bounds on notifications, per API key: at most ``per_minute``
    notifications in each window of ``RATE_WINDOW_SECONDS`` (:meth:`admit`), and one re-read
    running at a time, later notifications coalesced into it (:meth:`run`). In memory: with
    several serve processes each has its own (a key may cause ``web_workers`` times as much)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}

    def admit(self, key: str) -> int | None:
        """None when ``key`` may deliver one more notification now (counted), else the seconds
        until it may (its ``Retry-After``)."""
        now = self.clock()
        with self._lock:
            state = self._keys.setdefault(key, _KeyState())
            if now - state.window_start >= RATE_WINDOW_SECONDS:
                state.window_start, state.taken = now, 0
            if state.taken >= self.per_minute:
                return max(1, math.ceil(state.window_start + RATE_WINDOW_SECONDS - now))
            state.taken += 1
            return None

    def run(
        self,
        key: str,
        work: NotificationWork,
        execute: Callable[[NotificationWork], NotificationResult],
    ) -> NotificationResult | None:
        """``execute(work)`` now, then what notifications of ``key`` left due meanwhile (up to
        ``MAX_COALESCED_ROUNDS`` rounds), and the sum of what they read; None when a re-read of
        ``key`` is running: ``work`` is then added to what is due and read by that run. If
        ``execute`` raises, what was due stays due for the key's next run."""
        with self._lock:
            state = self._keys.setdefault(key, _KeyState())
            if state.running:
                state.due.add(work)
                return None
            state.running = True
        total = NotificationResult(type="")
        try:
            for _ in range(1 + MAX_COALESCED_ROUNDS):
                if work:
                    _sum(total, execute(work))
                with self._lock:
                    work, state.due = state.due, NotificationWork()
                if not work:
                    break
            else:
                with self._lock:
                    state.due.add(work)  # left for the next run (the scheduled pull reads it too)
        except BaseException:
            with self._lock:
                state.due.add(work)
            raise
        finally:
            with self._lock:
                state.running = False
        return total


def _sum(total: NotificationResult, more: NotificationResult) -> None:
    total.read += more.read
    total.merged += more.merged
    total.released += more.released
    total.gap = total.gap or more.gap
    total.ignored.extend(more.ignored)


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
    content travels in notifications; the service reads each focus itself), at most
    ``MAX_EVENTS`` events a notification (``max-count``: more is refused with a 413)."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "fhir-alliance: consent changes",
        "criteria": topic,
        "_criteria": {"extension": [{"url": BACKPORT_TOPIC_EXTENSION, "valueCanonical": topic}]},
        "channel": {
            "extension": [{"url": BACKPORT_MAX_COUNT_EXTENSION, "valuePositiveInt": MAX_EVENTS}],
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


def _loopback(url: str) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return is_loopback_host(host or "")


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
    go with each notification (e.g. the service's API key, of scope notify: the server keeps it
    in the Subscription). Idempotent."""
    if not endpoint.startswith(("https://", "http://")):
        raise InputError(
            "invalid endpoint", issues=[Issue("endpoint", "expected an absolute http(s) URL")]
        )
    if header and endpoint.startswith("http://") and not _loopback(endpoint):
        # The server would send the header (an API key: of scope notify, or an older write key)
        # in clear text with every notification: the rule the FHIR client keeps for its own
        # credentials.
        raise InputError(
            "a notification header (an API key) needs an https endpoint",
            issues=[Issue("endpoint", "https required when the notifications carry a header")],
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
