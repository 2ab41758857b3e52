"""Registering the rest-hook Subscription for consent changes: on a server that offers Subscription
it is written once (registering again refreshes the same one); elsewhere the answer says why and
polling stays the way changes arrive."""

from __future__ import annotations

from typing import Any

import pytest
from fhir_alliance_service.sync.subscriptions import (
    CONSENT_TOPIC,
    register_subscription,
    subscription_id,
    subscription_support,
)

from fhir_alliance.client import FhirClient, ServerCapabilities
from fhir_alliance.errors import InputError
from tests.fhir_server.plugin import FhirTestServer

ENDPOINT = "https://sync.clinic.example/v1/fhir/notifications"


def _statement(subscription: dict[str, Any] | None) -> ServerCapabilities:
    resources = [{"type": "Consent", "interaction": [{"code": "read"}]}]
    if subscription is not None:
        resources.append({"type": "Subscription", **subscription})
    return ServerCapabilities.from_capability_statement(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server", "resource": resources}],
        }
    )


def test_registered_once_on_the_test_server(fhir_server: FhirTestServer) -> None:
    """The Subscription lands at its derived id with our endpoint, topic and id-only payload;
    registering again leaves that one Subscription."""
    with FhirClient(fhir_server.base_url) as client:
        reason = subscription_support(client.capabilities())
        if reason is not None:  # another server under FHIR_ALLIANCE_TEST_BASE_URL
            result = register_subscription(client, ENDPOINT, tags=[fhir_server.run_tag])
            assert not result.registered and result.reason == reason
            return
        first = register_subscription(
            client, ENDPOINT, header=["Authorization: Bearer x"], tags=[fhir_server.run_tag]
        )
        again = register_subscription(
            client, ENDPOINT, header=["Authorization: Bearer x"], tags=[fhir_server.run_tag]
        )
        stored = client.read("Subscription", subscription_id(ENDPOINT))
    assert first.registered and again.registered
    assert first.id == again.id == subscription_id(ENDPOINT)
    assert stored["channel"]["endpoint"] == ENDPOINT
    assert stored["channel"]["type"] == "rest-hook"
    assert stored["criteria"] == CONSENT_TOPIC
    found = fhir_server.http.get(
        fhir_server.url("Subscription"), params={"_tag": fhir_server.run_tag_param}
    ).json()
    assert len(found.get("entry", [])) == 1


def test_a_server_without_subscriptions_is_told_apart() -> None:
    """No Subscription in the CapabilityStatement, or no write at a chosen id: not registrable,
    with the reason in words."""
    assert "offers no Subscription" in (subscription_support(_statement(None)) or "")
    read_only = _statement({"interaction": [{"code": "read"}]})
    assert "updateCreate" in (subscription_support(read_only) or "")
    writable = _statement({"interaction": [{"code": "update"}], "updateCreate": True})
    assert subscription_support(writable) is None


def test_the_id_follows_endpoint_and_topic() -> None:
    """Same endpoint and topic, same id; another endpoint, another Subscription."""
    assert subscription_id(ENDPOINT) == subscription_id(ENDPOINT)
    assert subscription_id(ENDPOINT) != subscription_id(ENDPOINT + "/other")


def test_an_endpoint_that_is_no_url_is_refused(fhir_server: FhirTestServer) -> None:
    """The endpoint must be an absolute http(s) URL; the error names it."""
    with FhirClient(fhir_server.base_url) as client, pytest.raises(InputError) as caught:
        register_subscription(client, "ftp://nowhere")
    assert caught.value.issues[0].path == "endpoint"
