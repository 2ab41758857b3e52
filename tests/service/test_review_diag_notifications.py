"""POST /v1/fhir/notifications with values of the wrong shape: a 422 naming the path, never a
500; and only ``Consent/<FHIR id>`` (or ``Observation/<FHIR id>``) is ever read from the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.sync.subscriptions import parse_notification
from flask import Flask
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer

from tests.service.conftest import answer_metadata

ENDPOINT = "/v1/fhir/notifications"
STATUS = "entry[0].resource"


def backport(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": {"resourceType": "Parameters", "parameter": list(parameters)}}],
    }


def r5(**status: Any) -> dict[str, Any]:
    resource = {"resourceType": "SubscriptionStatus", "type": "event-notification", **status}
    return {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [{"resource": resource}],
    }


EVENT = {"name": "type", "valueCode": "event-notification"}


def focus(reference: str) -> dict[str, Any]:
    return {
        "name": "notification-event",
        "part": [{"name": "focus", "valueReference": {"reference": reference}}],
    }


@pytest.fixture
def app(make_app: Callable[..., Flask], httpserver: HTTPServer) -> Flask:
    answer_metadata(httpserver)
    return make_app(
        fhir_base_url=httpserver.url_for("/fhir"),
        fhir_version="4.0.1",
        recipients="Organization/demo-ehr",
    )


@pytest.fixture
def headers(app: Flask) -> dict[str, str]:
    key = create_api_key(app.extensions["fhir_alliance"].store, "notifications", ["write"])
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (backport({"name": "type", "valueCode": ["x"]}), f"{STATUS}.parameter.type"),
        (backport({"name": "type", "valueCode": {"a": 1}}), f"{STATUS}.parameter.type"),
        (r5(type={"a": 1}), f"{STATUS}.type"),
        (r5(type=["heartbeat"]), f"{STATUS}.type"),
        (
            backport(EVENT, {"name": "events-since-subscription-start", "valueString": "9" * 5000}),
            f"{STATUS}.parameter[1].valueString",
        ),
        (
            backport(EVENT, {"name": "events-since-subscription-start", "valueString": "²"}),
            f"{STATUS}.parameter[1].valueString",
        ),
        (
            backport(EVENT, {"name": "events-since-subscription-start", "valueUnsignedInt": -1}),
            f"{STATUS}.parameter[1].valueUnsignedInt",
        ),
        (
            backport(
                EVENT,
                {
                    "name": "notification-event",
                    "part": [{"name": "event-number", "valueString": "٣"}],
                },
            ),
            f"{STATUS}.parameter[1].part[0].valueString",
        ),
        (r5(eventsSinceSubscriptionStart="9" * 5000), f"{STATUS}.eventsSinceSubscriptionStart"),
        (r5(eventsSinceSubscriptionStart=True), f"{STATUS}.eventsSinceSubscriptionStart"),
        (
            r5(notificationEvent=[{"eventNumber": "²"}]),
            f"{STATUS}.notificationEvent[0].eventNumber",
        ),
        (r5(notificationEvent={"a": 1}), f"{STATUS}.notificationEvent"),
        (
            backport(EVENT, {"name": "notification-event", "part": "x"}),
            f"{STATUS}.parameter[1].part",
        ),
        (
            backport(EVENT, focus("Consent/abc?_include=*")),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            backport(EVENT, focus("Consent/..")),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            backport(EVENT, focus("Consent/.")),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            backport(EVENT, focus("Consent/../../x")),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            backport(EVENT, focus("Consent/" + "a" * 65)),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            backport(EVENT, focus("Observation/a%2Fb")),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            backport(EVENT, focus("Consent/")),
            f"{STATUS}.parameter[1].part[0].valueReference.reference",
        ),
        (
            r5(notificationEvent=[{"focus": {"reference": "Consent/a b"}}]),
            f"{STATUS}.notificationEvent[0].focus.reference",
        ),
    ],
)
def test_a_value_of_the_wrong_shape_is_a_422_at_its_path(
    client: FlaskClient,
    headers: dict[str, str],
    httpserver: HTTPServer,
    body: dict[str, Any],
    path: str,
) -> None:
    response = client.post(ENDPOINT, json=body, headers=headers)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert [i["expression"][0] for i in response.json["issue"]] == [path]
    assert not [r for r, _ in httpserver.log if "/Consent" in r.path or "/Observation" in r.path]


def test_an_absolute_focus_on_the_server_is_checked_too(
    client: FlaskClient, headers: dict[str, str], httpserver: HTTPServer
) -> None:
    reference = httpserver.url_for("/fhir/Consent/..")
    response = client.post(ENDPOINT, json=backport(EVENT, focus(reference)), headers=headers)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.json["issue"][0]["expression"] == [
        f"{STATUS}.parameter[1].part[0].valueReference.reference"
    ]
    assert not [r for r, _ in httpserver.log if "/Consent" in r.path]


def test_good_ids_and_counts_still_parse() -> None:
    parsed = parse_notification(
        backport(
            EVENT,
            {"name": "events-since-subscription-start", "valueUnsignedInt": 0},
            focus("Consent/a-1.B"),
            focus("Consent/" + "z" * 64 + "/_history/2"),
            focus("Patient/whatever?x"),  # not merged: ignored later, as before
        )
    )
    assert parsed.events_since_start == 0
    assert parsed.focus == (
        "Consent/a-1.B",
        "Consent/" + "z" * 64 + "/_history/2",
        "Patient/whatever?x",
    )
    status = parse_notification(
        r5(eventsSinceSubscriptionStart="12", notificationEvent=[{"eventNumber": 12}])
    )
    assert (status.events_since_start, status.event_numbers) == (12, (12,))
