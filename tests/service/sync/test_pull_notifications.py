"""Subscription notifications: the test FHIR server has no Subscriptions, so notification
Bundles (R4 backport and R5 shapes) are posted to the service's endpoint as the server would post
them; each focus is read from the real test server and merged, and the gate re-run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.subscriptions import (
    BACKPORT_STATUS_PROFILE,
    parse_notification,
    subscription_resource,
)
from flask import Flask
from flask.testing import FlaskClient

from fhir_alliance.errors import InputError
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

ENDPOINT = "/v1/fhir/notifications"
SUBSCRIPTION = "Subscription/consent-changes"


@pytest.fixture
def app(harness: SyncHarness, make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        fhir_base_url=harness.server.base_url, recipients=list(harness.settings.recipients)
    )


@pytest.fixture
def headers(harness: SyncHarness) -> dict[str, str]:
    """The key a Subscription should carry: scope notify only."""
    key = create_api_key(harness.store, "notifications", ["notify"])
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin_headers(harness: SyncHarness) -> dict[str, str]:
    key = create_api_key(harness.store, "operations", ["admin"])
    return {"Authorization": f"Bearer {key}"}


def backport(kind: str, focus: list[str], *, since: int, first: int) -> dict[str, Any]:
    """An R4 backport notification Bundle (id-only payload)."""
    events = [
        {
            "name": "notification-event",
            "part": [
                {"name": "event-number", "valueString": str(first + n)},
                {"name": "focus", "valueReference": {"reference": ref}},
            ],
        }
        for n, ref in enumerate(focus)
    ]
    status = {
        "resourceType": "Parameters",
        "meta": {"profile": [BACKPORT_STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": SUBSCRIPTION}},
            {"name": "topic", "valueCanonical": "http://hl7.org/SubscriptionTopic/consent-change"},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start", "valueString": str(since)},
            *events,
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": "urn:uuid:5e1c…",
                "resource": status,
                "request": {"method": "GET", "url": "Subscription/x/$status"},
                "response": {"status": "200"},
            }
        ],
    }


def r5(focus: list[str], *, since: int) -> dict[str, Any]:
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "eventsSinceSubscriptionStart": since,
        "subscription": {"reference": SUBSCRIPTION},
        "topic": "http://hl7.org/SubscriptionTopic/consent-change",
        "notificationEvent": [
            {"eventNumber": since - len(focus) + 1 + n, "focus": {"reference": ref}}
            for n, ref in enumerate(focus)
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [{"resource": status}],
    }


def _held_then_consent(harness: SyncHarness) -> tuple[str, str, dict[str, Any]]:
    patient = f"Patient/notified-{harness.run}"
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    return patient, rating.record_id, consent


def test_a_backport_notification_releases_held_records(
    harness: SyncHarness, client: FlaskClient, headers: dict[str, str]
) -> None:
    """An R4 backport event-notification naming a new Consent: it is read, merged and the held
    record goes out on the next drain, without waiting for a poll."""
    _, record_id, consent = _held_then_consent(harness)
    body = backport("event-notification", [f"Consent/{consent['id']}"], since=1, first=1)
    response = client.post(ENDPOINT, json=body, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json == {
        "type": "event-notification",
        "read": 1,
        "merged": 1,
        "released": 1,
        "gap": False,
    }
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


def test_an_r5_notification_with_an_absolute_focus_works_too(
    harness: SyncHarness, client: FlaskClient, headers: dict[str, str]
) -> None:
    """R5 topic-based shape; the focus as an absolute URL within the configured base."""
    _, record_id, consent = _held_then_consent(harness)
    focus = f"{harness.server.base_url}/Consent/{consent['id']}"
    response = client.post(ENDPOINT, json=r5([focus], since=1), headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["merged"] == 1
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


@pytest.mark.parametrize("scope", ["write", "admin"])
def test_write_and_admin_keys_still_deliver_notifications(
    harness: SyncHarness, client: FlaskClient, scope: str
) -> None:
    """A Subscription registered with a write (or admin) key before the notify scope existed
    keeps working after an upgrade: both scopes include notify."""
    _, record_id, consent = _held_then_consent(harness)
    key = create_api_key(harness.store, f"notifications by {scope}", [scope])
    body = backport("event-notification", [f"Consent/{consent['id']}"], since=1, first=1)
    response = client.post(ENDPOINT, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.json
    assert response.json["released"] == 1
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


def test_a_focus_off_the_server_is_never_read(
    harness: SyncHarness, client: FlaskClient, headers: dict[str, str]
) -> None:
    """A focus on another host is ignored (no request leaves for it); nothing is released."""
    _, record_id, consent = _held_then_consent(harness)
    body = backport(
        "event-notification",
        [f"https://evil.example/fhir/Consent/{consent['id']}"],
        since=1,
        first=1,
    )
    response = client.post(ENDPOINT, json=body, headers=headers)
    assert response.status_code == 200
    assert (response.json["read"], response.json["merged"]) == (0, 0)
    harness.drain()
    assert harness.state(record_id) is SyncState.HELD


def test_a_gap_in_event_numbers_triggers_a_pull(
    harness: SyncHarness, client: FlaskClient, headers: dict[str, str]
) -> None:
    """Events 2..4 lost: the next notification (event 5) is seen as a gap and a pull runs,
    which finds the consent no notification named."""
    _, record_id, _ = _held_then_consent(harness)
    first = client.post(ENDPOINT, json=backport("heartbeat", [], since=1, first=1), headers=headers)
    assert first.status_code == 200 and first.json["gap"] is False
    later = client.post(ENDPOINT, json=backport("heartbeat", [], since=5, first=5), headers=headers)
    assert later.status_code == 200
    assert later.json["gap"] is True and later.json["merged"] == 1
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"resourceType": "Patient"}, "resourceType"),
        ({"resourceType": "Bundle", "type": "history", "entry": []}, "entry"),
        (
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"resource": {"resourceType": "Parameters", "parameter": []}}],
            },
            "type",
        ),
        (backport("sneeze", [], since=1, first=1), "entry[0].resource.parameter.type"),
    ],
)
def test_a_malformed_notification_is_a_422_naming_the_path(
    client: FlaskClient, headers: dict[str, str], body: dict[str, Any], path: str
) -> None:
    """What does not fit the notification shapes is refused with the field path."""
    response = client.post(ENDPOINT, json=body, headers=headers)
    assert response.status_code in (400, 422)
    assert [i["expression"][0] for i in response.json["issue"]] == [path]


def test_parse_reads_backport_event_numbers_and_focus() -> None:
    """The parser takes type, subscription, counts and every focus of a backport Bundle."""
    parsed = parse_notification(
        backport("event-notification", ["Consent/a", "Consent/b"], since=7, first=6)
    )
    assert (parsed.type, parsed.subscription, parsed.events_since_start) == (
        "event-notification",
        SUBSCRIPTION,
        7,
    )
    assert parsed.focus == ("Consent/a", "Consent/b") and parsed.event_numbers == (6, 7)
    with pytest.raises(InputError):
        parse_notification([])


def test_the_subscription_to_register_is_an_id_only_rest_hook() -> None:
    """The Subscription the service would register names our endpoint and asks for id-only
    payloads (no content travels in notifications)."""
    resource = subscription_resource("https://clinic.example.org/v1/fhir/notifications")
    assert resource["channel"]["type"] == "rest-hook"
    assert resource["channel"]["endpoint"] == "https://clinic.example.org/v1/fhir/notifications"
    assert resource["channel"]["_payload"]["extension"][0]["valueCode"] == "id-only"


def test_notifications_need_a_configured_server(sqlite_url: str, headers: dict[str, str]) -> None:
    """Without a FHIR server configured the endpoint answers 409 (an OperationOutcome)."""
    application = create_app({"database_url": sqlite_url})
    try:
        response = application.test_client().post(
            ENDPOINT, json=backport("heartbeat", [], since=1, first=1), headers=headers
        )
    finally:
        application.extensions["fhir_alliance"].store.close()
    assert response.status_code == 409
    assert response.json["resourceType"] == "OperationOutcome"


def test_aliases_are_registered_over_http(
    client: FlaskClient, admin_headers: dict[str, str]
) -> None:
    """POST /v1/patients/aliases files the alias and answers with the patient's keys; a bad
    alias is a 422 naming the field."""
    good = client.post(
        "/v1/patients/aliases",
        json={"patient": "Patient/p9", "alias": "urn:oid:1.2.3|mrn-9"},
        headers=admin_headers,
    )
    assert good.status_code == 200 and good.json == {"keys": ["Patient/p9", "urn:oid:1.2.3|mrn-9"]}
    bad = client.post(
        "/v1/patients/aliases",
        json={"patient": "Patient/p9", "alias": "nope"},
        headers=admin_headers,
    )
    assert bad.status_code == 422
    assert [i["expression"][0] for i in bad.json["issue"]] == ["alias"]
