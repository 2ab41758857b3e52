"""Credentials to the EHR: how the service uses the library's SMART Backend Services client.

A SMART access token is meant to be cached and reused until shortly before it expires; each token
request is a signed assertion the EHR's authorization server logs, audits and often rate-limits.
The fake EHR below is pytest-httpserver (fault injection): a token endpoint that really verifies
our client assertions (``tests/client/test_smart_auth.py``) and a FHIR base that answers reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhir_alliance_service.auth import create_api_key
from flask import Flask
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.client.test_smart_auth import CLIENT_ID, make_endpoint
from tests.service.conftest import answer_metadata, private_key_file

NOTIFICATIONS = "/v1/fhir/notifications"


def _heartbeat() -> dict[str, Any]:
    """An R4 backport heartbeat: no focus, nothing to read but a pull of consent changes."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [{"name": "type", "valueCode": "event-notification"}],
                }
            }
        ],
    }


def _event(consent_id: str) -> dict[str, Any]:
    """An R4 backport event naming one Consent on the server as its focus."""
    bundle = _heartbeat()
    bundle["entry"][0]["resource"]["parameter"].append(
        {
            "name": "notification-event",
            "part": [{"name": "focus", "valueReference": {"reference": f"Consent/{consent_id}"}}],
        }
    )
    return bundle


def test_notifications_reuse_one_smart_token_until_it_expires(
    make_app: Callable[..., Flask], httpserver: HTTPServer, tmp_path: Path
) -> None:
    """Three notifications a few milliseconds apart, each read with a bearer token the EHR issued
    for 300 s: the service asks the token endpoint once, not once per notification (today each
    request builds a new client, so a new SmartBackendAuth, and fetches a fresh token, plus the
    discovery document)."""
    endpoint, key = make_endpoint(httpserver, "RS384")
    answer_metadata(httpserver)
    reads: list[str] = []

    def read_consent(request: Request) -> Response:
        reads.append(request.headers.get("Authorization", ""))
        return Response('{"resourceType": "OperationOutcome"}', status=404)

    httpserver.expect_request("/fhir/Consent/c-1").respond_with_handler(read_consent)
    app = make_app(
        fhir_base_url=httpserver.url_for("/fhir"),
        fhir_version="4.0.1",
        fhir_auth="smart",
        smart_client_id=CLIENT_ID,
        smart_key_id=endpoint.kid,
        smart_algorithm="RS384",
        smart_private_key_file=str(private_key_file(key, tmp_path / "smart-key.pem")),
    )
    api_key = create_api_key(app.extensions["fhir_alliance"].store, "ehr notifications", ["write"])
    client = app.test_client()
    for _ in range(3):
        client.post(NOTIFICATIONS, json=_event("c-1"), headers={"X-API-Key": api_key})
    assert endpoint.refusals == []
    assert len(reads) == 3 and all(r.startswith("Bearer token-") for r in reads)
    assert len(endpoint.issued) == 1, (
        f"{len(endpoint.issued)} token requests for 3 notifications within one token's lifetime"
    )
