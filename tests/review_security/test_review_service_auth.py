"""The service's own credentials: its API keys handed to the EHR for notifications, and the
console's session after sign-out."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fhir_alliance_service.console.session import SESSION_COOKIE
from fhir_alliance_service.sync.subscriptions import register_subscription, subscription_id
from flask import Flask
from flask.testing import FlaskClient

from fhir_alliance.client import FhirClient
from fhir_alliance.errors import InputError, NotFoundError
from tests.fhir_server.plugin import FhirTestServer

PLAIN_HTTP_ENDPOINT = "http://sync.clinic.example/v1/fhir/notifications"


def test_a_key_is_never_registered_for_a_plain_http_notification_endpoint(
    fhir_server: FhirTestServer, api_keys: dict[str, str]
) -> None:
    """``fhir-alliance subscribe --endpoint http://… --key-env VAR`` asks the EHR to send a
    write-scope API key in clear text with every notification, to a host that is not loopback.
    The FHIR client refuses credentials over plain http for exactly this reason; registering such
    a Subscription must be refused the same way (InputError at ``endpoint``), and nothing is
    written to the server."""
    header = [f"Authorization: Bearer {api_keys['write']}"]
    with FhirClient(fhir_server.base_url) as client:
        try:
            with pytest.raises(InputError) as refused:
                register_subscription(
                    client, PLAIN_HTTP_ENDPOINT, header=header, tags=[fhir_server.run_tag]
                )
        finally:
            stored: dict[str, Any] | None
            try:
                stored = client.read("Subscription", subscription_id(PLAIN_HTTP_ENDPOINT))
            except NotFoundError:
                stored = None
    assert [issue.path for issue in refused.value.issues] == ["endpoint"]
    assert api_keys["write"] not in str(refused.value)
    assert stored is None, "the Subscription carrying the key was written to the EHR"


def _form_token(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found is not None, name
    return found.group(1)


def test_a_session_cookie_stops_working_once_its_browser_signed_out(
    app: Flask, client: FlaskClient, api_keys: dict[str, str]
) -> None:
    """Sign-out only deletes the cookie in the browser that signs out; the signed cookie itself
    stays valid for its 8 hours. A copy (a shared clinic PC's cookie store, a proxy log, a
    stolen cookie) keeps opening every console page after the user signed out. Sign-out must end
    the session on the server (OWASP ASVS 3.3.1)."""
    sign_in_page = client.get("/console/sign-in").text
    signed_in = client.post(
        "/console/sign-in",
        data={
            "api_key": api_keys["admin"],
            "sign_in_token": _form_token(sign_in_page, "sign_in_token"),
        },
    )
    assert signed_in.status_code == 303
    cookie = client.get_cookie(SESSION_COOKIE, path="/console")
    assert cookie is not None
    copied = cookie.value
    overview = client.get("/console/")
    assert overview.status_code == 200
    before = app.test_client()
    before.set_cookie(SESSION_COOKIE, copied, path="/console")
    assert before.get("/console/").status_code == 200  # the copy works while signed in
    signed_out = client.post(
        "/console/sign-out", data={"csrf_token": _form_token(overview.text, "csrf_token")}
    )
    assert signed_out.status_code == 303
    assert client.get("/console/").status_code == 302  # the browser that signed out

    other_browser = app.test_client()
    other_browser.set_cookie(SESSION_COOKIE, copied, path="/console")
    replayed = other_browser.get("/console/")
    assert replayed.status_code == 302, "a signed-out session's cookie still opens the console"
    assert replayed.headers["Location"].endswith("/console/sign-in")
